"""FuseBatchNormPass: eval BatchNorm folds into the Conv or Gemm before it; train mode and shared outputs stay."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
import onnx_ir as ir
from graphc import nn
from passes.export.fuse_batchnorm import FuseBatchNormPass

from export_pass_helpers import apply_and_compare, op_types, randn, unoptimized


def trained_statistics(bn, seed=1):
    """Non-trivial gamma, beta, running mean and variance (the defaults would hide a wrong formula)."""
    rng = np.random.default_rng(seed)
    bn.load_state_dict({name: (rng.random(v.shape).astype(np.float32) + 0.5) if v.dtype == np.float32 else v
                        for name, v in bn.state_dict().items()})
    bn.eval()
    return bn


def test_conv_batchnorm_becomes_one_conv():
    x = gc.input("x", shape=("batch", 3, 8, 8))
    conv, bn = nn.Conv2d(3, 4, 3, padding=1), trained_statistics(nn.BatchNorm2d(4))
    model = unoptimized([x], {"y": bn(conv(x))})
    assert op_types(model) == ["Conv", "BatchNormalization"]
    assert apply_and_compare(FuseBatchNormPass(), model, {"x": randn(2, 3, 8, 8)}).modified
    assert op_types(model) == ["Conv"]


def test_conv_without_bias_gets_one():
    x = gc.input("x", shape=("batch", 3, 8, 8))
    conv, bn = nn.Conv2d(3, 4, 3, bias=False), trained_statistics(nn.BatchNorm2d(4))
    model = unoptimized([x], {"y": bn(conv(x))})
    assert apply_and_compare(FuseBatchNormPass(), model, {"x": randn(2, 3, 8, 8)}).modified
    (node,) = model.graph
    assert node.op_type == "Conv" and len(node.inputs) == 3


def test_gemm_batchnorm1d_becomes_one_gemm():
    x = gc.input("x", shape=("batch", 6))
    fc, bn = nn.Linear(6, 5), trained_statistics(nn.BatchNorm1d(5))
    model = unoptimized([x], {"y": bn(fc(x))})
    assert op_types(model) == ["Gemm", "BatchNormalization"]
    assert apply_and_compare(FuseBatchNormPass(), model, {"x": randn(4, 6)}).modified
    assert op_types(model) == ["Gemm"]


def test_conv_output_read_elsewhere_is_not_folded():
    x = gc.input("x", shape=("batch", 3, 8, 8))
    conv, bn = nn.Conv2d(3, 4, 3), trained_statistics(nn.BatchNorm2d(4))
    h = conv(x)
    model = unoptimized([x], {"y": bn(h), "h": h})
    assert not apply_and_compare(FuseBatchNormPass(), model, {"x": randn(2, 3, 8, 8)}).modified
    assert op_types(model) == ["Conv", "BatchNormalization"]


def test_train_mode_batchnorm_is_not_folded():
    x = gc.input("x", shape=("batch", 3, 8, 8))
    conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
    ir_model = ir.serde.deserialize_model(
        gc.compile([x], {"y": bn(conv(x))}, allow_batch_statistics=True, optimize=False).model)
    before = op_types(ir_model)
    assert not FuseBatchNormPass()(ir_model).modified
    assert op_types(ir_model) == before


@pytest.mark.parametrize("as_input", ["running_var"])
def test_statistics_fed_as_graph_inputs_are_not_folded(as_input):
    x = gc.input("x", shape=("batch", 3, 8, 8))
    conv, bn = nn.Conv2d(3, 4, 3), trained_statistics(nn.BatchNorm2d(4))
    model = unoptimized([x], {"y": bn(conv(x))})
    value = next(v for v in model.graph.initializers.values() if v.name.endswith(as_input))
    model.graph.inputs.append(value)  # an initializer that is also an input: a caller may override it
    assert not FuseBatchNormPass()(model).modified
