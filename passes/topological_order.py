"""``TopologicalOrderPass``: onnx_ir's topological sort, run only when the order is not topological.

Why: the training step's cleanup ends with a sort, and at 300 unrolled LSTM steps (19k nodes)
``onnx_ir``'s ``Graph.sort`` takes 0.3-0.6 s of a 2.3 s build, while the graph usually arrives already
in order (a pass before it that inserts nodes sorts itself). Checking the order is one walk over the
node inputs (~20 ms at 19k nodes).

Rewrites: when some node of the main graph reads a value that a later node of the same graph
produces, or when the graph has subgraphs or the model has functions (their outer-scope reads are not
checked here), the model is sorted by ``onnx_ir.passes.common.TopologicalSortPass`` (stable). Otherwise
nothing: a stable sort of a graph already in topological order leaves it as it is, so skipping it gives
the same graph.

Invariant: afterwards every node's inputs are graph inputs, initializers, or outputs of earlier nodes.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import TopologicalSortPass


def _has_subgraphs(graph: ir.Graph) -> bool:
    return any(isinstance(attr, ir.Attr) and attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
               for node in graph for attr in node.attributes.values())


def in_topological_order(graph: ir.Graph) -> bool:
    """Whether each node of ``graph`` reads only values produced outside ``graph`` or by earlier nodes."""
    produced: set[ir.Value] = set()
    for node in graph:
        for value in node.inputs:
            if value is None or value in produced:
                continue
            producer = value.producer()
            if producer is not None and producer.graph is graph:  # made by this graph, but not yet
                return False
        produced.update(node.outputs)
    return True


class TopologicalOrderPass(ir.passes.InPlacePass):
    """Sort the model topologically (stable) unless its main graph is in topological order already."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        if not model.functions and not _has_subgraphs(graph) and in_topological_order(graph):
            return ir.passes.PassResult(model, modified=False)
        return TopologicalSortPass()(model)
