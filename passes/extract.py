"""Turn free-standing values (what the builder records) into a standalone ``ir.Model``.

The builder never keeps a global graph: nodes are reachable from the values a
user asks for. ``extract_model`` collects the nodes between the given inputs
and outputs, clones them (so the same symbolic model can be compiled many
times) and names everything. Leaves with a ``const_value`` become
initializers; any other leaf must be one of ``inputs``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import onnx_ir as ir
from onnx_ir.passes.common import (
    CommonSubexpressionEliminationPass,
    NameFixPass,
    TopologicalSortPass,
)

from passes import IR_VERSION, OPSET
from passes.random_streams import NumberRandomStreamsPass
from passes.traversal import leaf_values, topological_nodes


class MissingInputError(ValueError):
    """An output depends on a graph input that was not listed."""


def _collect(outputs: Sequence[ir.Value], inputs: set[ir.Value]) -> tuple[list[ir.Node], list[ir.Value]]:
    """Nodes reachable backwards from ``outputs`` (topological order) and the initializer leaves."""
    nodes = topological_nodes(outputs)
    initializers = []
    for leaf in leaf_values(outputs, nodes):
        if leaf in inputs:
            continue
        if leaf.const_value is None:
            raise MissingInputError(f"the outputs depend on input {leaf.name!r}, which is not in inputs="
                                    f"{sorted(v.name for v in inputs)}")
        initializers.append(leaf)
    return nodes, initializers


def reachable_nodes(outputs: Sequence[ir.Value]) -> set[ir.Node]:
    """Every node that ``outputs`` depend on."""
    return set(topological_nodes(outputs))


def free_inputs(outputs: Sequence[ir.Value]) -> list[ir.Value]:
    """The leaves of ``outputs``' subgraph that are neither produced nor constant: the inputs it needs."""
    return [v for v in leaf_values(outputs, topological_nodes(outputs)) if v.const_value is None]


def _unique_initializer_names(input_names: list[str], initializers: list[ir.Value]) -> None:
    """Give initializers that share a name (two unnamed-path modules both have ``weight``) unique names.

    Cloning needs unique names; the originals are renamed (``weight``, ``weight_1``, ...), which only
    affects graph names: modules name their ``state_dict`` by path, and trainers find parameters by identity.
    """
    taken = set(input_names)
    for value in initializers:
        base = value.name or "param"
        name, k = base, 0
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        value.name = name
        taken.add(name)


def extract_model(inputs: Sequence[ir.Value], outputs: Mapping[str, ir.Value], *,
                  doc_string: str = "", graph_name: str = "graphc",
                  refresh: Callable[[ir.Value], None] | None = None) -> ir.Model:
    """A cloned, named, cleaned-up model computing ``outputs`` from ``inputs``.

    ``refresh`` is called on every initializer leaf before cloning, so the
    caller can put current parameter values into ``const_value``.
    """
    names = [v.name for v in inputs]
    if len(set(names)) != len(names):
        raise ValueError(f"input names must be unique, got {names}")
    clash = set(outputs) & set(names)
    if clash:
        raise ValueError(f"output names {sorted(clash)} are also input names")
    # Outputs that are leaves or repeated get an Identity, so every output is a distinct node output.
    out_values: list[ir.Value] = []
    for value in outputs.values():
        if value.producer() is None or value in out_values:
            copy = ir.Node("", "Identity", [value], name="output/Identity").outputs[0]
            copy.type, copy.shape = value.type, value.shape
            value = copy
        out_values.append(value)
    nodes, initializers = _collect(out_values, set(inputs))
    _unique_initializer_names(names, initializers)
    if refresh is not None:
        for value in initializers:
            refresh(value)
    view = ir.GraphView(list(inputs), out_values, nodes=nodes, initializers=initializers,
                        opset_imports={"": OPSET}, name=graph_name)
    graph = view.clone()
    graph.doc_string = doc_string
    for value, name in zip(graph.outputs, outputs):
        value.name = name
    model = ir.Model(graph, ir_version=IR_VERSION, producer_name="graphc", producer_version="0.1.0",
                     doc_string=doc_string)
    # No RemoveUnusedNodesPass: the collected nodes are all used, and it would also drop unused optional
    # outputs (MaxPool's Indices) that a gradient pass may still want. Random streams are numbered before
    # CSE, which may merge a stream constant with an equal one.
    for cleanup in (TopologicalSortPass(), NumberRandomStreamsPass(),
                    CommonSubexpressionEliminationPass(), TopologicalSortPass(), NameFixPass()):
        cleanup(model)
    return model
