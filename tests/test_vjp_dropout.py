"""ONNX's Dropout in training mode: the gradient reuses the mask the forward drew (mask * g / (1 - p))."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.autodiff.autodiff_pass import AutodiffPass


def _dropout_model(with_mask: bool = True):
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.normal(size=(4, 50)), "w")
    ratio = numpy_helper.from_array(np.array(0.3), "ratio")
    training = numpy_helper.from_array(np.array(True), "training")
    outputs = ["y", "mask"] if with_mask else ["y"]
    nodes = [helper.make_node("Dropout", ["x", "ratio", "training"], outputs, seed=7),
             helper.make_node("Mul", ["y", "w"], ["yw"]),
             helper.make_node("ReduceSum", ["yw"], ["loss"], keepdims=0)]
    outs = [helper.make_tensor_value_info("loss", TensorProto.DOUBLE, [])]
    if with_mask:
        outs.append(helper.make_tensor_value_info("mask", TensorProto.BOOL, [4, 50]))
    graph = helper.make_graph(nodes, "dropout", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, [4, 50])],
                              outs, initializer=[weight, ratio, training])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), weight


def test_training_dropout_gradient_is_mask_times_g_over_keep():
    proto, weight = _dropout_model()
    model = AutodiffPass("loss", ["x"])(ir.serde.deserialize_model(proto)).model
    session = ort.InferenceSession(ir.serde.serialize_model(model).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).normal(size=(4, 50))
    loss, mask, grad = session.run(["loss", "mask", "x.grad"], {"x": x})
    w = numpy_helper.to_array(weight)
    assert 0 < mask.sum() < mask.size  # a real draw: some kept, some dropped
    # one draw for both outputs (ONNX Runtime scales by a float32 1 / (1 - p): 1e-6)
    np.testing.assert_allclose(loss, (mask * x * w).sum() / 0.7, rtol=1e-6)
    np.testing.assert_allclose(grad, mask * w / 0.7, rtol=1e-12)


def test_training_dropout_without_mask_output_names_the_node():
    proto, _ = _dropout_model(with_mask=False)
    proto.graph.node[0].name = "drop1"
    with pytest.raises(NotImplementedError, match="Dropout node 'drop1' in training mode needs its mask output"):
        AutodiffPass("loss", ["x"])(ir.serde.deserialize_model(proto))
