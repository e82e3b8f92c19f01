"""Walking the value graph backwards: the one traversal every pass and the builder share."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import onnx_ir as ir


def topological_nodes(outputs: Sequence[ir.Value], stop: Iterable[ir.Value] = ()) -> list[ir.Node]:
    """The nodes ``outputs`` depend on, producers before consumers, not walking past ``stop`` values."""
    stop = set(stop)
    order: list[ir.Node] = []
    seen: set[ir.Node] = set()
    stack: list[tuple[ir.Node, bool]] = [(v.producer(), False) for v in reversed(outputs)
                                         if v not in stop and v.producer() is not None]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if node in seen:
            continue
        seen.add(node)
        stack.append((node, True))
        for value in reversed(node.inputs):
            if value is not None and value not in stop and value.producer() is not None \
                    and value.producer() not in seen:
                stack.append((value.producer(), False))
    return order


def leaf_values(outputs: Sequence[ir.Value], nodes: Sequence[ir.Node]) -> list[ir.Value]:
    """Values without a producer that ``nodes`` read or that are ``outputs`` themselves, in first-use order."""
    leaves: dict[ir.Value, None] = {}
    for value in [*outputs, *(v for node in nodes for v in node.inputs)]:
        if value is not None and value.producer() is None:
            leaves[value] = None
    return list(leaves)
