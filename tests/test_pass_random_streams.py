"""NumberRandomStreamsPass: stream ids depend on the graph, not on how many draws were built before."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

import graphc as gc
import graphc.nn.functional as F
from graphc.random import RNG_KEY
from passes.random_streams import STREAM_KEY, NumberRandomStreamsPass

GOLDEN = 0x9E3779B97F4A7C15


def marked_constant(value: int) -> ir.Node:
    node = ir.Node("", "Constant", [], [ir.AttrTensor("value", ir.Tensor(np.asarray(value, np.uint64)))],
                   metadata_props={STREAM_KEY: "1"})
    node.outputs[0].type = ir.TensorType(ir.DataType.UINT64)
    node.outputs[0].shape = ir.Shape([])
    return node


def test_marked_constants_are_renumbered_in_node_order():
    a, b = marked_constant(12345), marked_constant(777)
    total = ir.Node("", "Add", [a.outputs[0], b.outputs[0]])
    total.outputs[0].name = "s"
    graph = ir.Graph([], [total.outputs[0]], nodes=[a, b, total], opset_imports={"": 21})
    result = NumberRandomStreamsPass()(ir.Model(graph, ir_version=10))
    assert result.modified
    values = [int(n.attributes["value"].value.numpy()) for n in result.model.graph if n.op_type == "Constant"]
    assert values == [GOLDEN, (2 * GOLDEN) % 2 ** 64]


def test_graphs_without_random_draws_are_not_modified():
    graph = ir.Graph([], [], nodes=[], opset_imports={"": 21})
    assert not NumberRandomStreamsPass()(ir.Model(graph, ir_version=10)).modified


def test_equal_graphs_draw_equal_masks_whatever_was_built_before():
    def build():
        x = gc.input("x", (64,))
        return gc.compile([x], {"y": F.dropout(F.dropout(x, 0.5), 0.5)}, allow_random=True)

    feeds = {"x": np.ones(64, np.float32), RNG_KEY: np.asarray(9, np.int64)}
    first = build().run(feeds)["y"]
    F.dropout(gc.input("z", (3,)), 0.5)  # an unrelated draw advances the build-time counter
    np.testing.assert_array_equal(build().run(feeds)["y"], first)
