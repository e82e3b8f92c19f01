"""FuseGeluPass: F.gelu's primitives (exact and tanh) become Gelu; other constants or old opsets stay."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest
import torch

import graphc as gc
import graphc.nn.functional as F
from passes.export.fuse_gelu import FuseGeluPass

from export_pass_helpers import apply_and_compare, op_types, randn, run, unoptimized


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_becomes_one_node_and_matches_torch(approximate):
    x = gc.input("x", shape=("batch", 8))
    model = unoptimized([x], {"y": F.gelu(x, approximate=approximate)})
    feeds = {"x": randn(4, 8) * 3}
    assert apply_and_compare(FuseGeluPass(), model, feeds).modified
    (node,) = model.graph
    assert node.op_type == "Gelu"
    assert node.attributes.get("approximate", None) is None or node.attributes["approximate"].as_string() == approximate
    expected = torch.nn.functional.gelu(torch.from_numpy(feeds["x"]), approximate=approximate).numpy()
    np.testing.assert_allclose(run(model, feeds)[0], expected, rtol=1e-5, atol=1e-6)


def test_other_constants_are_not_fused():
    x = gc.input("x", shape=("batch", 8))
    model = unoptimized([x], {"y": F.gelu(x)})
    for node in model.graph:  # a look-alike: 0.6 where GELU has 1/sqrt(2)
        if node.op_type == "Constant" and np.isclose(node.attributes["value"].as_tensor().numpy(), 2 ** -0.5):
            node.attributes["value"] = ir.AttrTensor("value", ir.tensor(np.float32(0.6)))
            node.outputs[0].const_value = None
    before = op_types(model)
    assert not apply_and_compare(FuseGeluPass(), model, {"x": randn(4, 8)}).modified
    assert op_types(model) == before


def test_opset_below_20_is_not_fused():
    x = gc.input("x", shape=("batch", 8))
    model = unoptimized([x], {"y": F.gelu(x)})
    model.opset_imports[""] = 19
    assert not FuseGeluPass()(model).modified
    assert "Gelu" not in op_types(model)
