"""PoolOnChannelViewPass: MaxPool on a (N*C, 1, *spatial) view; values equal numpy's, gradients equal PyTorch's
exactly on inputs full of ties, for each pool configuration the rule lowers differently."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import graphc as gc
from graphc import nn
from graphc.program import build_model
from passes.pipelines import gradient_pipeline
from passes.pool_channel_view import PoolOnChannelViewPass

torch = pytest.importorskip("torch")


def run(model: ir.Model, feeds: dict) -> dict:
    proto = ir.serde.serialize_model(model)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def pool_inputs(model: ir.Model) -> list[list]:
    return [list(n.inputs[0].shape) for n in model.graph if n.op_type == "MaxPool"]


# (MaxPool2d kwargs, channels, H, W)
CASES = {
    "k2_tiling_mask": ({"kernel_size": 2}, 8, 8, 8),
    "k2_large_map": ({"kernel_size": 2}, 16, 32, 32),
    "k3_s2_pad1_overlap": ({"kernel_size": 3, "stride": 2, "padding": 1}, 8, 9, 9),
    "k2_ceil": ({"kernel_size": 2, "ceil_mode": True}, 8, 7, 7),
}


@pytest.mark.parametrize("case", list(CASES))
def test_pool_on_the_view_matches_torch_values_and_gradient_exactly_on_ties(case):
    kwargs, channels, h, w = CASES[case]
    rng = np.random.default_rng(3)
    xb = np.round(rng.standard_normal((2, channels, h, w)) * 0.8).astype(np.float32)  # many equal maxima
    xb[0, 0] = 1.0  # every window of this channel is a tie of all its elements
    txb = torch.from_numpy(xb).requires_grad_()
    tout = torch.nn.MaxPool2d(**kwargs)(txb)
    cot = rng.standard_normal(tuple(tout.shape)).astype(np.float32)
    (tout * torch.from_numpy(cot)).sum().backward()

    x = gc.input("x", shape=("batch", channels, h, w))
    out = nn.MaxPool2d(**kwargs)(x)
    model = build_model([x], {"loss": (out * gc.constant(cot)).sum(), "out": out})
    assert PoolOnChannelViewPass()(model).modified
    assert [shape[1:] for shape in pool_inputs(model)] == [[1, h, w]]
    result = run(gradient_pipeline("loss", ["x"])(model).model, {"x": xb})
    np.testing.assert_array_equal(result["out"], tout.detach().numpy())
    np.testing.assert_array_equal(result["x.grad"], txb.grad.numpy())


def pool_proto(channels=8, indices_read=False, dtype=TensorProto.FLOAT, symbolic_channels=False) -> ir.Model:
    outs = ["y", "i"]
    node = helper.make_node("MaxPool", ["x"], outs, kernel_shape=[2, 2], strides=[2, 2])
    c = "c" if symbolic_channels else channels
    outputs = [helper.make_tensor_value_info("y", dtype, ["n", c, 2, 2])]
    if indices_read:
        outputs.append(helper.make_tensor_value_info("i", TensorProto.INT64, ["n", c, 2, 2]))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", dtype, ["n", c, 4, 4])], outputs)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)],
                                                        ir_version=10))


def test_output_keeps_its_name_type_and_shape_and_values():
    model = pool_proto()
    xb = np.random.default_rng(1).standard_normal((3, 8, 4, 4)).astype(np.float32)
    assert PoolOnChannelViewPass()(model).modified
    y = model.graph.outputs[0]
    assert y.name == "y" and y.dtype == ir.DataType.FLOAT and [str(d) for d in y.shape] == ["n", "8", "2", "2"]
    np.testing.assert_array_equal(run(model, {"x": xb})["y"], xb.reshape(3, 8, 2, 2, 2, 2).max(axis=(3, 5)))


@pytest.mark.parametrize("kwargs", [{"indices_read": True}, {"channels": 6}, {"dtype": TensorProto.DOUBLE},
                                    {"symbolic_channels": True}])
def test_read_indices_unblocked_channels_other_dtypes_and_unknown_channels_are_left_alone(kwargs):
    model = pool_proto(**kwargs)
    assert not PoolOnChannelViewPass()(model).modified
    assert [n.op_type for n in model.graph] == ["MaxPool"]
