"""``LowerDifferentiatedRecurrentPass``: only the recurrent nodes a gradient crosses are lowered; values kept
(against ONNX's reference evaluator on the fused op); gradients after it against float64 finite differences.
Everything runs in float64 on ``onnx.reference`` (ONNX Runtime has no float64 LSTM kernel)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from passes import IR_VERSION, OPSET
from passes.lower_differentiated_recurrent import LowerDifferentiatedRecurrentPass
from passes.pipelines import gradient_pipeline

T, B, I, H = 3, 2, 4, 3
RNG = np.random.default_rng(0)


def two_lstms() -> onnx.ModelProto:
    """``loss = sum(LSTM(X; W, R, Bias).Y ** 2)``; a second LSTM over ``X2`` (weights W2, R2) feeds ``other``."""
    weights = {"W": (1, 4 * H, I), "R": (1, 4 * H, H), "Bias": (1, 8 * H), "W2": (1, 4 * H, I), "R2": (1, 4 * H, H)}
    inits = [numpy_helper.from_array(RNG.uniform(-0.5, 0.5, s), n) for n, s in weights.items()]
    nodes = [helper.make_node("LSTM", ["X", "W", "R", "Bias"], ["Y"], hidden_size=H, name="first"),
             helper.make_node("Mul", ["Y", "Y"], ["Y2"]),
             helper.make_node("ReduceSum", ["Y2"], ["loss"], keepdims=0),
             helper.make_node("LSTM", ["X2", "W2", "R2"], ["", "other"], hidden_size=H, name="second")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.DOUBLE, [T, B, I]) for n in ("X", "X2")],
        [helper.make_tensor_value_info("loss", TensorProto.DOUBLE, []),
         helper.make_tensor_value_info("other", TensorProto.DOUBLE, [1, B, H])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


FEEDS = {"X": RNG.uniform(-1, 1, (T, B, I)), "X2": RNG.uniform(-1, 1, (T, B, I))}


def lstm_names(model: ir.Model) -> list[str]:
    return [n.name for n in model.graph if n.op_type == "LSTM"]


def test_only_the_crossed_node_is_lowered_and_values_are_kept():
    proto = two_lstms()
    model = ir.serde.deserialize_model(proto)
    assert LowerDifferentiatedRecurrentPass("loss", ["W"])(model).modified
    assert lstm_names(model) == ["second"]
    expected = ReferenceEvaluator(proto).run(None, FEEDS)
    got = ReferenceEvaluator(ir.serde.serialize_model(model)).run(None, FEEDS)  # ORT has no float64 LSTM
    for want, have in zip(expected, got):
        np.testing.assert_allclose(have, want, rtol=1e-10, atol=1e-12)


def test_nothing_is_lowered_when_the_gradient_crosses_no_recurrent_node():
    for wrt in (["W2"], ["nope"], []):  # W2 does not reach loss; unknown names are left to autodiff
        model = ir.serde.deserialize_model(two_lstms())
        assert not LowerDifferentiatedRecurrentPass("loss", wrt)(model).modified
        assert lstm_names(model) == ["first", "second"]
    model = ir.serde.deserialize_model(two_lstms())
    assert not LowerDifferentiatedRecurrentPass("missing", ["W"])(model).modified


def test_gradient_through_the_lowering_matches_finite_differences():
    proto = two_lstms()
    model = ir.serde.deserialize_model(proto)
    pipeline = gradient_pipeline("loss", ["W", "R"])
    pipeline(model)
    assert [r.name for r in pipeline.reports][:2] == ["lower-recurrent", "autodiff"]
    assert pipeline.reports[0].modified and lstm_names(model) == ["second"]
    lowered = ir.serde.serialize_model(model)
    grads = dict(zip([o.name for o in lowered.graph.output], ReferenceEvaluator(lowered).run(None, FEEDS)))

    values = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    as_inputs = onnx.ModelProto()  # the forward with W and R fed: the reference evaluates it at W +- h
    as_inputs.CopyFrom(proto)
    kept = [t for t in as_inputs.graph.initializer if t.name not in ("W", "R")]
    del as_inputs.graph.initializer[:]
    as_inputs.graph.initializer.extend(kept)
    as_inputs.graph.input.extend(helper.make_tensor_value_info(n, TensorProto.DOUBLE, values[n].shape)
                                 for n in ("W", "R"))
    reference = ReferenceEvaluator(as_inputs)

    def loss(name, array):
        fed = {"W": values["W"], "R": values["R"], name: array}
        return float(reference.run(["loss"], {**FEEDS, **fed})[0])

    for name in ("W", "R"):
        base, fd = values[name], np.zeros_like(values[name])
        for index in np.ndindex(base.shape):
            step = np.zeros_like(base)
            step[index] = 1e-6
            fd[index] = (loss(name, base + step) - loss(name, base - step)) / 2e-6
        assert np.abs(fd).max() > 1e-2  # a gradient worth comparing
        np.testing.assert_allclose(grads[f"{name}.grad"], fd, rtol=1e-5, atol=1e-7)
