"""passes.split_step: the training step as a gradient graph and an update graph (data parallelism)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest

import graphc as gc
import graphc.nn.functional as F
from graphc import nn
from graphc.program import build_model
from passes.optimizers import OptimizerConfig
from passes.split_step import GRAD_SCALE, REDUCE_BUFFER, REDUCED, build_split_step
from passes.training_step import build_training_step


def linear_mse():
    """A linear layer with MSE and a mean-of-|w| metric: gradients known in closed form (numpy below)."""
    gc.manual_seed(0)
    x = gc.input("x", ("batch", 3))
    y = gc.input("y", ("batch", 2))
    model = nn.Linear(3, 2)
    loss = F.mse_loss(model(x), y)
    metric = (model.weight * model.weight).mean()
    return lambda: build_model([x, y], {"loss": loss, "wsq": metric}), model


def session(model: ir.Model) -> ort.InferenceSession:
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    assert {node.domain for node in proto.graph.node} <= {""}  # ai.onnx only
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def run(sess, feeds):
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    return dict(zip(names, sess.run(None, {k: v for k, v in feeds.items() if k in wanted})))


def data(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, 3)).astype(np.float32), "y": rng.standard_normal((n, 2)).astype(np.float32)}


def test_buffer_holds_scaled_gradients_loss_and_metric_against_numpy():
    forward, model = linear_mse()
    split = build_split_step(forward(), ["weight", "bias"], OptimizerConfig("sgd", {"lr": 0.1}))
    feeds = data()
    w, b = model.weight.data.astype(np.float64), model.bias.data.astype(np.float64)
    out = run(session(split.grad_model), {**feeds, **split.initial_values, GRAD_SCALE: np.asarray(0.5, np.float32)})
    x, y = feeds["x"].astype(np.float64), feeds["y"].astype(np.float64)
    residual = x @ w.T + b - y
    d = 2 * residual / residual.size  # d mean((xW^T + b - y)^2)
    expected = 0.5 * np.concatenate([(d.T @ x).ravel(), d.sum(0), [np.mean(residual ** 2)], [np.mean(w ** 2)]])
    assert split.gradient_size == 8 and split.reduced_names == ["loss", "wsq"]
    np.testing.assert_allclose(out[REDUCE_BUFFER], expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("optimizer, clip", [(OptimizerConfig("adam", {"lr": 0.01}), None),
                                             (OptimizerConfig("sgd", {"lr": 0.1, "momentum": 0.9}), 0.05)])
def test_two_halves_summed_then_updated_equal_the_one_graph_step_on_the_whole_batch(optimizer, clip):
    forward, _ = linear_mse()
    split = build_split_step(forward(), ["weight", "bias"], optimizer, max_grad_norm=clip)
    whole = build_training_step(forward(), ["weight", "bias"], optimizer, max_grad_norm=clip)
    assert set(split.initial_values) == set(whole.initial_values)  # same state names: checkpoints move
    feeds = data(6)
    grad_session, update_session = session(split.grad_model), session(split.update_model)
    halves = [{k: v[i * 3:(i + 1) * 3] for k, v in feeds.items()} for i in range(2)]
    buffers = [run(grad_session, {**h, **split.initial_values, GRAD_SCALE: np.asarray(0.5, np.float32)})[REDUCE_BUFFER]
               for h in halves]
    updated = run(update_session, {**split.initial_values, REDUCED: buffers[0] + buffers[1]})
    reference = run(session(whole.model), {**feeds, **whole.initial_values})
    for name in ("weight", "bias", "step"):
        np.testing.assert_allclose(updated[f"{name}.updated"], reference[f"{name}.updated"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose((buffers[0] + buffers[1])[split.gradient_size], reference["loss"], rtol=1e-6)
    assert updated["grad_check"] == 0
    if clip:
        np.testing.assert_allclose(updated["grad_norm"], reference["grad_norm"], rtol=1e-5)


def test_a_non_finite_element_anywhere_in_the_summed_buffer_fails_the_check():
    forward, _ = linear_mse()
    split = build_split_step(forward(), ["weight", "bias"], OptimizerConfig("sgd", {"lr": 0.1}))
    buffer = np.zeros(split.gradient_size + 2, np.float32)
    for index in (0, split.gradient_size):  # a gradient element, the loss
        bad = buffer.copy()
        bad[index] = np.inf
        out = run(session(split.update_model), {**split.initial_values, REDUCED: bad})
        assert np.isnan(out["grad_check"])
    assert run(session(split.update_model), {**split.initial_values, REDUCED: buffer})["grad_check"] == 0


def test_batchnorm_statistics_are_carried_by_the_gradient_graph():
    gc.manual_seed(0)
    x = gc.input("x", ("batch", 2, 3, 3))
    bn = nn.BatchNorm2d(2)
    conv = nn.Conv2d(2, 2, 1)
    loss = conv(bn(x)).mean()
    from graphc.state import updates_computed_with
    updates = updates_computed_with([loss])
    outputs = {"loss": loss, **{f"u{i}": u.value for i, u in enumerate(updates)}}
    forward = build_model([x], outputs)
    buffers = {v.meta["graphc.parameter"]: v.name for v in forward.graph.initializers.values()
               if "graphc.parameter" in v.meta}
    state = {buffers[u.buffer]: f"u{i}" for i, u in enumerate(updates)}
    trained = [buffers[p] for p in [bn.weight, bn.bias, conv.weight, conv.bias]]
    split = build_split_step(forward, trained, OptimizerConfig("sgd"), state_updates=state)
    assert sorted(inp for inp, _ in split.grad_pairs) == sorted(state)
    out = run(session(split.grad_model), {"x": np.ones((4, 2, 3, 3), np.float32), **split.initial_values,
                                          GRAD_SCALE: np.asarray(1, np.float32)})
    running_mean = next(n for n in state if n.endswith("running_mean"))
    np.testing.assert_allclose(out[f"{running_mean}.updated"], 0.1 * np.ones(2), rtol=1e-6)  # momentum 0.1


def test_mixed_parameter_dtypes_are_refused():
    forward, _ = linear_mse()
    model = forward()
    weight = model.graph.initializers["weight"]
    weight.const_value = ir.Tensor(weight.const_value.numpy().astype(np.float64))
    weight.type = ir.TensorType(ir.DataType.DOUBLE)
    with pytest.raises(ValueError, match="one dtype"):
        build_split_step(model, ["weight", "bias"], OptimizerConfig("sgd"))
