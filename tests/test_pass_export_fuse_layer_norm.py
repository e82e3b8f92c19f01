"""FuseLayerNormPass: F.layer_norm's primitives become LayerNormalization; non-trailing axes stay."""

from __future__ import annotations

import numpy as np
import torch

import graphc as gc
import graphc.nn.functional as F
from graphc import nn
from passes.export.fuse_layer_norm import FuseLayerNormPass

from export_pass_helpers import apply_and_compare, op_types, randn, run, unoptimized


def trained(layer, seed=3):
    rng = np.random.default_rng(seed)
    layer.load_state_dict({k: rng.standard_normal(v.shape).astype(np.float32) for k, v in layer.state_dict().items()})
    return layer


def test_layer_norm_module_becomes_one_node_and_matches_torch():
    x = gc.input("x", shape=("batch", 8))
    layer = trained(nn.LayerNorm(8, eps=1e-3))
    model = unoptimized([x], {"y": layer(x)})
    feeds = {"x": randn(4, 8)}
    assert apply_and_compare(FuseLayerNormPass(), model, feeds).modified
    (node,) = model.graph
    assert node.op_type == "LayerNormalization" and len(node.inputs) == 3
    assert node.attributes["axis"].as_int() == -1
    assert np.isclose(node.attributes["epsilon"].as_float(), 1e-3)
    state = {k: torch.from_numpy(v) for k, v in layer.state_dict().items()}
    expected = torch.nn.functional.layer_norm(torch.from_numpy(feeds["x"]), (8,), state["weight"], state["bias"], 1e-3)
    np.testing.assert_allclose(run(model, feeds)[0], expected.numpy(), rtol=1e-5, atol=1e-5)


def test_two_trailing_axes():
    x = gc.input("x", shape=("batch", 5, 8))
    model = unoptimized([x], {"y": trained(nn.LayerNorm((5, 8)))(x)})
    assert apply_and_compare(FuseLayerNormPass(), model, {"x": randn(2, 5, 8)}).modified
    (node,) = model.graph
    assert node.op_type == "LayerNormalization" and node.attributes["axis"].as_int() == -2


def test_functional_layer_norm_with_weight_only():
    x = gc.input("x", shape=("batch", 8))
    w = nn.Parameter(randn(8, seed=5))
    model = unoptimized([x], {"y": F.layer_norm(x, (8,), weight=w)})
    assert apply_and_compare(FuseLayerNormPass(), model, {"x": randn(3, 8)}).modified
    (node,) = model.graph
    assert node.op_type == "LayerNormalization" and len(node.inputs) == 2


def test_normalising_a_leading_axis_is_not_fused():
    x = gc.input("x", shape=("batch", 8))
    mean = x.mean(0, keepdim=True)
    d = x - mean
    y = d / ((d * d).mean(0, keepdim=True) + 1e-5) ** 0.5
    model = unoptimized([x], {"y": y})
    before = op_types(model)
    assert not apply_and_compare(FuseLayerNormPass(), model, {"x": randn(3, 8)}).modified
    assert op_types(model) == before


def test_intermediate_read_elsewhere_is_not_fused():
    x = gc.input("x", shape=("batch", 8))
    model = unoptimized([x], {"y": trained(nn.LayerNorm(8))(x)})
    centred = next(node for node in model.graph if node.op_type == "Sub").outputs[0]
    model.graph.outputs.append(centred)  # x - mean(x) is also a result: the primitives must stay
    before = op_types(model)
    assert not apply_and_compare(FuseLayerNormPass(), model, {"x": randn(3, 8)}).modified
    assert op_types(model) == before
