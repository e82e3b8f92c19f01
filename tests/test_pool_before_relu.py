"""PoolBeforeReluPass: MaxPool(Relu(x)) -> Relu(MaxPool(x)); values and gradients equal PyTorch's relu-then-pool,
on inputs full of ties and zeros (windows whose maximum is > 0, == 0 and < 0), for each MaxPool lowering."""

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
from passes.pool_before_relu import PoolBeforeReluPass

torch = pytest.importorskip("torch")


def run(model: ir.Model, feeds: dict) -> dict:
    proto = ir.serde.serialize_model(model)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def op_order(model: ir.Model) -> list[str]:
    return [n.op_type for n in model.graph if n.op_type in ("Relu", "MaxPool")]


def tie_heavy_input(shape, seed=2) -> np.ndarray:
    """Integers around 0: equal maxima, zeros, all-zero and all-negative windows."""
    rng = np.random.default_rng(seed)
    x = np.round(rng.standard_normal(shape) * 0.8).astype(np.float32)
    x[0, 0] = 0.0   # every window ties at 0: PyTorch routes to the first element, relu' = 0 stops it
    x[0, 1] = -1.0  # every window's maximum < 0
    x[1, 0] = 1.0   # every window ties at 1 > 0: the first element gets the gradient
    return x


# (MaxPool2d kwargs, channels, H, W): the lowering each takes in passes/autodiff/rules/pool.py
CASES = {
    "k2_mask": ({"kernel_size": 2}, 3, 8, 8),
    "k2_unpool_large_map": ({"kernel_size": 2}, 3, 64, 64),
    "k3_s2_pad1_overlap_scatter": ({"kernel_size": 3, "stride": 2, "padding": 1}, 3, 9, 9),
    "k2_ceil_scatter": ({"kernel_size": 2, "ceil_mode": True}, 3, 7, 7),
}


def relu_pool_model(kwargs, channels, h, w, cot):
    x = gc.input("x", shape=("batch", channels, h, w))
    out = nn.MaxPool2d(**kwargs)(gc.nn.functional.relu(x))
    return build_model([x], {"loss": (out * gc.constant(cot)).sum(), "out": out})


@pytest.mark.parametrize("case", list(CASES))
def test_swapped_values_and_input_gradient_equal_torch_exactly_on_ties_and_zeros(case):
    kwargs, channels, h, w = CASES[case]
    xb = tie_heavy_input((2, channels, h, w))
    txb = torch.from_numpy(xb).requires_grad_()
    tout = torch.nn.MaxPool2d(**kwargs)(torch.relu(txb))
    cot = np.random.default_rng(5).standard_normal(tuple(tout.shape)).astype(np.float32)
    (tout * torch.from_numpy(cot)).sum().backward()

    model = relu_pool_model(kwargs, channels, h, w, cot)
    assert op_order(model) == ["Relu", "MaxPool"]
    assert PoolBeforeReluPass()(model).modified
    assert op_order(model) == ["MaxPool", "Relu"]
    result = run(gradient_pipeline("loss", ["x"])(model).model, {"x": xb})
    np.testing.assert_array_equal(result["out"], tout.detach().numpy())
    np.testing.assert_array_equal(result["x.grad"], txb.grad.numpy())


def test_trainer_swaps_and_follows_torch_sgd_on_a_conv_relu_pool_with_ties():
    """The training-step pipeline runs the pass: integer weights and inputs make exact ties and zeros
    after the Conv; SGD's updated weights equal PyTorch's relu-then-pool ones."""
    rng = np.random.default_rng(0)
    weight = rng.integers(-1, 2, (4, 3, 3, 3)).astype(np.float32)
    xb = rng.integers(-2, 3, (2, 3, 10, 10)).astype(np.float32)
    cot = rng.standard_normal((2, 4, 4, 4)).astype(np.float32)

    tconv = torch.nn.Conv2d(3, 4, 3, bias=False)
    with torch.no_grad():
        tconv.weight.copy_(torch.from_numpy(weight))
    tout = torch.nn.functional.max_pool2d(torch.relu(tconv(torch.from_numpy(xb))), 2)
    (tout * torch.from_numpy(cot)).sum().backward()

    conv = nn.Conv2d(3, 4, 3, bias=False)
    conv.load_state_dict({"weight": weight})
    x = gc.input("x", shape=("batch", 3, 10, 10))
    out = nn.MaxPool2d(2)(gc.nn.functional.relu(conv(x)))
    trainer = gc.Trainer((out * gc.constant(cot)).sum(), gc.optim.SGD(conv.parameters(), lr=1.0), inputs=[x])
    assert [n.op_type for n in trainer.step_model.graph.node if n.op_type in ("Relu", "MaxPool")][:2] == \
        ["MaxPool", "Relu"]
    loss = trainer.step({"x": xb})
    np.testing.assert_allclose(loss, float((tout * torch.from_numpy(cot)).sum().detach()), rtol=1e-6)
    np.testing.assert_allclose(conv.state_dict()["weight"], weight - tconv.weight.grad.numpy(), rtol=1e-6,
                               atol=1e-5)


def relu_pool_proto(extra_relu_output=False, indices=False) -> ir.Model:
    outs = ["y", "i"] if indices else ["y"]
    nodes = [helper.make_node("Relu", ["x"], ["r"]),
             helper.make_node("MaxPool", ["r"], outs, kernel_shape=[2, 2], strides=[2, 2])]
    info = lambda name, shape, t=TensorProto.FLOAT: helper.make_tensor_value_info(name, t, shape)  # noqa: E731
    outputs = [info("y", [1, 2, 2, 2])]
    if extra_relu_output:
        outputs.append(info("r", [1, 2, 4, 4]))
    if indices:
        outputs.append(info("i", [1, 2, 2, 2], TensorProto.INT64))
    graph = helper.make_graph(nodes, "g", [info("x", [1, 2, 4, 4])], outputs)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)],
                                                        ir_version=10))


def test_output_keeps_its_name_type_and_shape():
    model = relu_pool_proto()
    xb = np.random.default_rng(1).standard_normal((1, 2, 4, 4)).astype(np.float32)
    before = run(relu_pool_proto(), {"x": xb})["y"]
    assert PoolBeforeReluPass()(model).modified
    assert op_order(model) == ["MaxPool", "Relu"]
    y = model.graph.outputs[0]
    assert y.name == "y" and y.dtype == ir.DataType.FLOAT and list(y.shape) == [1, 2, 2, 2]
    np.testing.assert_array_equal(run(model, {"x": xb})["y"], before)
    np.testing.assert_array_equal(before, np.maximum(xb, 0).reshape(1, 2, 2, 2, 2, 2).max(axis=(3, 5)))


@pytest.mark.parametrize("kwargs", [{"extra_relu_output": True}, {"indices": True}])
def test_a_relu_read_elsewhere_or_used_indices_are_left_alone(kwargs):
    model = relu_pool_proto(**kwargs)
    assert not PoolBeforeReluPass()(model).modified
    assert op_order(model) == ["Relu", "MaxPool"]


def relu_pool_1d(length=3, **pool_attrs) -> ir.Model:
    info = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MaxPool", ["r"], ["y"],
                                                                                        **pool_attrs)],
                              "g", [info("x", [1, 1, length])], [info("y", None)])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)],
                                                        ir_version=10))


@pytest.mark.parametrize("attrs", [
    # a window wholly in the padding: ONNX Runtime pools it to the lowest float, Relu-after-pool would give 0
    {"kernel_shape": [2], "pads": [1, 1], "dilations": [2], "length": 1},
    # ceil_mode: a last window may start past the input
    {"kernel_shape": [1], "strides": [3], "ceil_mode": 1},
])
def test_pools_whose_windows_may_miss_x_are_left_alone(attrs):
    model = relu_pool_1d(**attrs)
    xb = np.asarray([[[0.5, -1.0, 2.0]]], np.float32)[..., :attrs.get("length", 3)]
    before = run(relu_pool_1d(**attrs), {"x": xb})["y"]
    assert not PoolBeforeReluPass()(model).modified
    np.testing.assert_array_equal(run(model, {"x": xb})["y"], before)


def test_a_dilated_pool_in_the_padding_pools_to_the_lowest_float_in_onnx_runtime():
    """Why dilated pools are left alone: the swap would change this value from -FLT_MAX to 0."""
    y = run(relu_pool_1d(1, kernel_shape=[2], pads=[1, 1], dilations=[2]), {"x": np.ones((1, 1, 1), np.float32)})["y"]
    assert np.finfo(np.float32).min in y.ravel()
