"""AutodiffPass on a model built with onnx.helper (as if imported): gradients vs float64 finite differences."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from passes.autodiff.autodiff_pass import AutodiffPass
from passes.autodiff.registry import MissingGradientError


def imported_mlp(dtype=np.float64) -> onnx.ModelProto:
    """A 4-5-3 MLP with a mean-squared loss, written the way other exporters write ONNX."""
    rng = np.random.default_rng(0)
    elem = TensorProto.DOUBLE if dtype == np.float64 else TensorProto.FLOAT
    w1 = numpy_helper.from_array(rng.standard_normal((4, 5)).astype(dtype), "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(5).astype(dtype), "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((5, 3)).astype(dtype), "w2")
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Tanh", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["out"]),
        helper.make_node("Sub", ["out", "target"], ["diff"]),
        helper.make_node("Mul", ["diff", "diff"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["loss"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "imported",
        [helper.make_tensor_value_info("x", elem, ["n", 4]), helper.make_tensor_value_info("target", elem, ["n", 3])],
        [helper.make_tensor_value_info("loss", elem, [])],
        initializer=[w1, b1, w2])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def test_gradients_of_an_imported_model_match_finite_differences():
    proto = imported_mlp()
    model = ir.serde.deserialize_model(proto)
    result = AutodiffPass("loss", ["w1", "b1", "w2", "x"])(model)
    assert result.modified
    out_names = [v.name for v in result.model.graph.outputs]
    assert out_names == ["loss", "w1.grad", "b1.grad", "w2.grad", "x.grad"]
    grad_model = ir.serde.serialize_model(result.model)
    onnx.checker.check_model(grad_model, full_check=True)
    assert {n.domain for n in grad_model.graph.node} <= {""}

    rng = np.random.default_rng(1)
    feeds = {"x": rng.standard_normal((6, 4)), "target": rng.standard_normal((6, 3))}
    got = dict(zip(out_names, ReferenceEvaluator(grad_model).run(None, feeds)))
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}

    def loss_with(name, value):
        model_copy = onnx.ModelProto()
        model_copy.CopyFrom(proto)
        local = dict(feeds)
        if name in inits:
            for t in model_copy.graph.initializer:
                if t.name == name:
                    t.CopyFrom(numpy_helper.from_array(value, name))
        else:
            local[name] = value
        return float(ReferenceEvaluator(model_copy).run(None, local)[0])

    eps = 1e-6
    for name in ["w1", "b1", "w2", "x"]:
        base = inits[name] if name in inits else feeds[name]
        numeric = np.zeros_like(base)
        for index in np.ndindex(base.shape):
            plus, minus = base.copy(), base.copy()
            plus[index] += eps
            minus[index] -= eps
            numeric[index] = (loss_with(name, plus) - loss_with(name, minus)) / (2 * eps)
        np.testing.assert_allclose(got[f"{name}.grad"], numeric, rtol=1e-6, atol=1e-8, err_msg=name)

    # The same gradient model on stock ONNX Runtime agrees with the reference.
    session = ort.InferenceSession(grad_model.SerializeToString(), providers=["CPUExecutionProvider"])
    for name, value in zip(out_names, session.run(None, feeds)):
        np.testing.assert_allclose(value, got[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_missing_rule_names_the_op():
    nodes = [helper.make_node("Hardmax", ["x"], ["e"]), helper.make_node("ReduceSum", ["e"], ["loss"], keepdims=0)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)],
                                                         ir_version=10))
    with pytest.raises(MissingGradientError, match="Hardmax"):
        AutodiffPass("loss", ["x"])(model)


def test_unknown_names_are_reported():
    model = ir.serde.deserialize_model(imported_mlp())
    with pytest.raises(ValueError, match="nope"):
        AutodiffPass("loss", ["nope"])(model)
    with pytest.raises(ValueError, match="no output 'missing'"):
        AutodiffPass("missing", ["w1"])(model)
