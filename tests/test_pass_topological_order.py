"""TopologicalOrderPass: sorts only a graph that is out of order, and then exactly as onnx_ir's stable sort."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator
from onnx_ir.passes.common import TopologicalSortPass

import graphc as gc
import graphc.nn.functional as F
from graphc import nn
from passes.pipelines import _count_nodes
from passes.topological_order import TopologicalOrderPass, in_topological_order


def chain(out_of_order: bool) -> ir.Model:
    """y = (x + 1) * 2 - x, with the Mul listed before the Add it reads when ``out_of_order``."""
    nodes = [helper.make_node("Add", ["x", "one"], ["a"]), helper.make_node("Mul", ["a", "two"], ["b"]),
             helper.make_node("Sub", ["b", "x"], ["y"])]
    if out_of_order:
        nodes = [nodes[1], nodes[0], nodes[2]]
    value = helper.make_tensor_value_info
    graph = helper.make_graph(nodes, "g", [value("x", TensorProto.FLOAT, [3])], [value("y", TensorProto.FLOAT, [3])],
                              initializer=[helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
                                           helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    return ir.serde.deserialize_model(proto)


def evaluate(model: ir.Model, x: np.ndarray) -> np.ndarray:
    return ReferenceEvaluator(ir.serde.serialize_model(model)).run(None, {"x": x})[0]


def test_an_ordered_graph_is_left_as_it_is():
    model = chain(out_of_order=False)
    nodes = list(model.graph)
    result = TopologicalOrderPass()(model)
    assert not result.modified and list(result.model.graph) == nodes


def test_an_unordered_graph_is_sorted_and_computes_the_same():
    model = chain(out_of_order=True)
    assert not in_topological_order(model.graph)
    result = TopologicalOrderPass()(model)
    assert result.modified and in_topological_order(result.model.graph)
    assert [n.op_type for n in result.model.graph] == ["Add", "Mul", "Sub"]
    x = np.array([0.5, -2.0, 3.0], np.float32)
    np.testing.assert_array_equal(evaluate(result.model, x), (x + 1) * 2 - x)


def lstm_step_model() -> ir.Model:
    """A real training step (2-layer LSTM unrolled over 5 steps, Adam), as the Trainer builds it."""
    gc.manual_seed(0)
    lstm, head = nn.LSTM(3, 4, num_layers=2, batch_first=True), nn.Linear(4, 2)
    x = gc.input("x", ("batch", 5, 3))
    y = gc.input("y", ("batch",), "int64")
    out, _ = lstm(x)
    loss = F.cross_entropy(head(out[:, -1, :]), y)
    trainer = gc.Trainer(loss, gc.optim.Adam([*lstm.parameters(), *head.parameters()], lr=1e-3), [x, y])
    return ir.serde.deserialize_model(trainer.step_model)


def test_skipping_the_sort_of_an_ordered_step_gives_what_the_stable_sort_gives():
    """The skip is exact: onnx_ir's stable sort leaves an ordered graph (a real training step) unchanged."""
    model = lstm_step_model()
    assert in_topological_order(model.graph)
    before = [n.name for n in model.graph]
    assert not TopologicalOrderPass()(model).modified
    assert not TopologicalSortPass()(model).modified and [n.name for n in model.graph] == before


def test_count_nodes_counts_what_all_nodes_yields_subgraphs_included():
    model = lstm_step_model()
    assert _count_nodes(model.graph) == sum(1 for _ in model.graph.all_nodes()) == len(model.graph)
    then = helper.make_graph([helper.make_node("Neg", ["x"], ["t"]), helper.make_node("Abs", ["t"], ["u"])], "then",
                             [], [helper.make_tensor_value_info("u", TensorProto.FLOAT, [3])])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, [3])])
    value = helper.make_tensor_value_info
    graph = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)], "g",
                              [value("c", TensorProto.BOOL, []), value("x", TensorProto.FLOAT, [3])],
                              [value("y", TensorProto.FLOAT, [3])])
    nested = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    assert _count_nodes(nested.graph) == sum(1 for _ in nested.graph.all_nodes()) == 4
