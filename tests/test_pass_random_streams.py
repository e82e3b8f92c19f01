"""NumberRandomStreamsPass: stream ids depend on the graph, not on how many draws were built before."""

from __future__ import annotations

import numpy as np

import graphc as gc
import graphc.nn.functional as F
from graphc.program import build_model
from passes.random_streams import STREAM_KEY, NumberRandomStreamsPass


def stream_values(model):
    return [int(n.attributes["value"].value.numpy()) for n in model.graph
            if n.op_type == "Constant" and n.metadata_props.get(STREAM_KEY) == "1"]


def test_streams_are_numbered_in_graph_order_and_equal_for_equal_graphs():
    def build():
        x = gc.input("x", (8,))
        return build_model([x], {"y": F.dropout(F.dropout(x, 0.5), 0.5)}, allow_random=True)

    first, second = build(), build()  # the second build's draws had other build-time ids
    golden = 0x9E3779B97F4A7C15
    assert stream_values(first) == stream_values(second) == [golden, (2 * golden) % 2 ** 64]
    result = NumberRandomStreamsPass()(first)
    assert result.modified and stream_values(result.model) == stream_values(second)


def test_graphs_without_random_draws_are_not_modified():
    x = gc.input("x", (8,))
    model = build_model([x], {"y": x * 2.0})
    assert not NumberRandomStreamsPass()(model).modified
    assert np.isfinite(1.0)
