"""passes/pipelines.py: which passes each job runs, that gc.compile and the Trainer go through them, that a
pass's own error reaches the user unwrapped, and values against independent references."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc as gc
import graphc.nn.functional as F
import passes.pipelines as pipelines
from graphc import nn
from graphc.program import build_model
from passes.autodiff.registry import MissingGradientError
from passes.export.pipeline import export_passes
from passes.optimizers import OptimizerConfig
from passes.training_step import TrainingStepPass, build_training_step

CLEANUP = ["remove-dead-nodes", "cse", "fuse-gradient-sums", "topological-sort", "fix-names"]


def run(model: ir.Model, feeds: dict) -> dict:
    proto = ir.serde.serialize_model(model)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def regression():
    """loss = mean((x @ W^T + b - y)^2): the gradient has a closed form."""
    gc.manual_seed(0)
    x, y = gc.input("x", ("batch", 3)), gc.input("y", ("batch", 2))
    layer = nn.Linear(3, 2)
    return build_model([x, y], {"loss": F.mse_loss(layer(x), y)}), layer


def test_training_step_pipeline_runs_lowering_step_and_cleanup_and_updates_like_numpy():
    forward, layer = regression()
    step_pass = TrainingStepPass(["weight", "bias"], OptimizerConfig("sgd", {"lr": 0.5}))
    pipeline = pipelines.training_step_pipeline(step_pass)
    model = pipeline(forward).model
    assert [r.name for r in pipeline.reports] == ["lower-recurrent", "pool-before-relu", "pool-on-channel-view",
                                                      "training-step", "conv-from-patches", *CLEANUP]
    assert not any(r.modified for r in pipeline.reports[:3]) and pipeline.reports[3].modified
    assert pipeline.reports[3].nodes_after > pipeline.reports[3].nodes_before
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 3)).astype(np.float32), rng.standard_normal((5, 2)).astype(np.float32)
    out = run(model, {"x": x, "y": y, **step_pass.result.initial_values})
    w, b = layer.weight.data.astype(np.float64), layer.bias.data.astype(np.float64)
    residual = x @ w.T + b - y
    np.testing.assert_allclose(out["loss"], np.mean(residual ** 2), rtol=1e-6)
    d = 2 * residual / residual.size
    np.testing.assert_allclose(out["weight.updated"], w - 0.5 * d.T @ x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["bias.updated"], b - 0.5 * d.sum(0), rtol=1e-5, atol=1e-6)


def test_recurrent_layers_are_lowered_by_the_pipeline_before_the_step():
    gc.manual_seed(0)
    x = gc.input("x", ("batch", 4, 3))
    lstm, head = nn.LSTM(3, 5, batch_first=True), nn.Linear(5, 1)
    out, _ = lstm(x)
    forward = build_model([x], {"loss": head(out[:, -1, :]).mean()})
    assert [n.op_type for n in forward.graph].count("LSTM") == 1
    fused = ir.serde.serialize_model(forward.clone())
    trainable = [v.name for v in forward.graph.initializers.values() if v.const_value.size > 1]  # the weights
    step_pass = TrainingStepPass(trainable, OptimizerConfig("sgd", {"lr": 0.1}))
    pipeline = pipelines.training_step_pipeline(step_pass)
    model = pipeline(forward).model
    assert pipeline.reports[0].name == "lower-recurrent" and pipeline.reports[0].modified
    assert "LSTM" not in {n.op_type for n in model.graph}
    batch = np.random.default_rng(2).standard_normal((2, 4, 3)).astype(np.float32)
    expected = ort.InferenceSession(fused.SerializeToString()).run(["loss"], {"x": batch})[0]  # ORT's own LSTM
    got = run(model, {"x": batch, **step_pass.result.initial_values})
    np.testing.assert_allclose(got["loss"], expected, rtol=1e-5, atol=1e-6)


def test_a_pass_error_reaches_the_caller_unwrapped():
    forward, _ = regression()
    with pytest.raises(ValueError, match="the forward model has no output 'nope'"):
        build_training_step(forward, ["weight"], OptimizerConfig("sgd"), loss="nope")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    nodes = [helper.make_node("Mul", ["x", "w"], ["m"]), helper.make_node("NoRule", ["m"], ["e"], domain="test.ops"),
             helper.make_node("ReduceSum", ["e"], ["loss"], keepdims=0)]
    graph = helper.make_graph(nodes, "g", [x],
                              [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])],
                              [numpy_helper.from_array(np.ones(2, np.float32), "w")],
                              value_info=[helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "me"])
    opsets = [helper.make_opsetid("", 21), helper.make_opsetid("test.ops", 1)]
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=opsets))
    with pytest.raises(MissingGradientError, match="no gradient rule for ONNX op 'NoRule'"):
        pipelines.gradient_pipeline("loss", ["w"])(model)


def test_gradient_pipeline_matches_the_closed_form():
    forward, layer = regression()
    pipeline = pipelines.gradient_pipeline("loss", ["weight", "bias"])
    model = pipeline(forward).model
    assert [r.name for r in pipeline.reports] == ["lower-recurrent", "autodiff", *CLEANUP]
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((4, 3)).astype(np.float32), rng.standard_normal((4, 2)).astype(np.float32)
    out = run(model, {"x": x, "y": y})
    residual = x @ layer.weight.data.T + layer.bias.data - y
    d = 2 * residual / residual.size
    np.testing.assert_allclose(out["weight.grad"], d.T @ x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["bias.grad"], d.sum(0), rtol=1e-5, atol=1e-6)


def test_import_pipeline_raises_the_opset_and_lifts_constants_keeping_values():
    axes = helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array([1], np.int64)))
    graph = helper.make_graph(
        [axes, helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=0),  # opset 17: axes attribute
         helper.make_node("Unsqueeze", ["m", "axes"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 1])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    pipeline = pipelines.import_pipeline()
    model = pipeline(ir.serde.deserialize_model(proto)).model
    assert [r.name for r in pipeline.reports] == ["convert-opset", "constants-to-initializers", "fold-constants",
                                                 "infer-shapes", "cast-like-to-cast"]
    assert model.opset_imports[""] == 21 and "Constant" not in {n.op_type for n in model.graph}
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.testing.assert_allclose(run(model, {"x": x})["y"], x.mean(1, keepdims=True))


def test_inference_pipeline_is_the_export_pipeline_and_compile_reports_it():
    assert [r for r, _ in export_passes()] == pipelines.inference_pipeline().names
    gc.manual_seed(0)
    x = gc.input("x", ("batch", 3))
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU()).eval()
    program = gc.compile([x], {"y": model(x) * 2.0})
    report = program.export_report
    assert [r.name for r in report] == pipelines.inference_pipeline().names
    lift = next(r for r in report if r.name == "lift-constants")  # the Constant of 2.0 becomes an initializer
    assert lift.modified and lift.nodes_after == lift.nodes_before - 1
    assert report[-1].nodes_after == len(program.model.graph.node)
    xb = np.ones((2, 3), np.float32)
    w, b = model[0].weight.data, model[0].bias.data
    np.testing.assert_allclose(program.run({"x": xb})["y"], 2 * np.maximum(xb @ w.T + b, 0), rtol=1e-6)


def test_the_trainer_builds_its_step_through_the_training_step_pipeline(monkeypatch):
    built = []
    original = pipelines.training_step_pipeline

    def spy(step_pass):
        pipeline = original(step_pass)
        built.append(pipeline)
        return pipeline

    monkeypatch.setattr(pipelines, "training_step_pipeline", spy)
    gc.manual_seed(0)
    x, y = gc.input("x", ("batch", 3)), gc.input("y", ("batch", 2))
    layer = nn.Linear(3, 2)
    trainer = gc.Trainer(F.mse_loss(layer(x), y), gc.optim.SGD(layer.parameters(), lr=0.1), [x, y])
    assert len(built) == 1 and [r.name for r in built[0].reports][:4] == [
        "lower-recurrent", "pool-before-relu", "pool-on-channel-view", "training-step"]
    xb, yb = np.ones((2, 3), np.float32), np.zeros((2, 2), np.float32)
    expected = np.mean((xb @ layer.weight.data.T + layer.bias.data) ** 2)
    assert trainer.step({"x": xb, "y": yb}) == pytest.approx(expected, rel=1e-6)
