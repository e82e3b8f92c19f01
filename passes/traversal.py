"""Walking the value graph backwards: the one traversal every pass and the builder share."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import onnx_ir as ir


def node_reads(node: ir.Node) -> list[ir.Value]:
    """The values ``node`` reads: its inputs, then the enclosing graph's values its subgraphs read.

    An ``If``/``Loop``/``Scan`` body may read any value in scope of the node, not only its inputs (ONNX's
    outer-scope references); those values are dependencies of the node as much as its inputs are.
    """
    reads = list(node.inputs)
    subgraphs = [a.value for a in node.attributes.values() if a.type == ir.AttributeType.GRAPH]
    subgraphs += [g for a in node.attributes.values() if a.type == ir.AttributeType.GRAPHS for g in a.value]
    if not subgraphs:
        return reads
    inner: set[ir.Value] = set()
    nodes = []
    for graph in subgraphs:
        for inner_node in ir.traversal.RecursiveGraphIterator(graph):
            nodes.append(inner_node)
            inner.update(inner_node.outputs)
            for attribute in inner_node.attributes.values():  # nested bodies' own inputs
                bodies = [attribute.value] if attribute.type == ir.AttributeType.GRAPH else \
                    list(attribute.value) if attribute.type == ir.AttributeType.GRAPHS else []
                for body in bodies:
                    inner.update(body.inputs)
                    inner.update(body.initializers.values())
        inner.update(graph.inputs)
        inner.update(graph.initializers.values())
    seen = set(reads)
    for inner_node in nodes:
        for value in inner_node.inputs:
            if value is not None and value not in inner and value not in seen:
                seen.add(value)
                reads.append(value)
    return reads


def topological_nodes(outputs: Sequence[ir.Value], stop: Iterable[ir.Value] = ()) -> list[ir.Node]:
    """The nodes ``outputs`` depend on, producers before consumers, not walking past ``stop`` values
    (dependencies include the outer values a node's subgraphs read: ``node_reads``)."""
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
        for value in reversed(node_reads(node)):
            if value is not None and value not in stop and value.producer() is not None \
                    and value.producer() not in seen:
                stack.append((value.producer(), False))
    return order


def leaf_values(outputs: Sequence[ir.Value], nodes: Sequence[ir.Node]) -> list[ir.Value]:
    """Values without a producer that ``nodes`` read (their subgraphs included) or that are ``outputs``
    themselves, in first-use order."""
    leaves: dict[ir.Value, None] = {}
    for value in [*outputs, *(v for node in nodes for v in node_reads(node))]:
        if value is not None and value.producer() is None:
            leaves[value] = None
    return list(leaves)
