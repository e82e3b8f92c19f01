"""passes.training_step: the training step graph (inputs, outputs, state pairs, update math)."""

from __future__ import annotations

import json

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
from passes.training_step import build_training_step


def forward_model():
    gc.manual_seed(0)
    x = gc.input("x", ("batch", 4))
    y = gc.input("y", ("batch",), "int64")
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))
    loss = F.cross_entropy(model(x), y)
    grads = gc.grad(loss, model.parameters())
    grad_program = gc.compile([x, y], {f"g{i}": g for i, g in enumerate(grads)})
    return build_model([x, y], {"loss": loss}), model, grad_program


def batch():
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((6, 4)).astype(np.float32), "y": rng.integers(0, 3, 6)}


def run(step, feeds):
    proto = ir.serde.serialize_model(step.model)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {**feeds, **step.initial_values})))


@pytest.mark.parametrize("fuse", [False, True])
def test_sgd_step_applies_p_minus_lr_g(fuse):
    forward, model, grad_program = forward_model()
    params = [name for name, _ in model.named_parameters()]
    step = build_training_step(forward, params, OptimizerConfig("sgd", {"lr": 0.5}), fuse_update=fuse)
    feeds = batch()
    out = run(step, feeds)
    grads = grad_program.run(feeds)
    for i, (name, param) in enumerate(model.named_parameters()):
        np.testing.assert_allclose(out[f"{name}.updated"], param.data - 0.5 * grads[f"g{i}"], rtol=1e-6, atol=1e-7)
    assert out["step.updated"] == 1
    assert json.loads(step.model.metadata_props["graphc.state_pairs"]) == [list(p) for p in step.state_pairs]
    assert ("step", "step.updated") in step.state_pairs


@pytest.mark.parametrize("small_limit", [0, 10])
def test_flat_hybrid_and_per_parameter_adam_agree(monkeypatch, small_limit):
    """Per parameter (small_limit 0), small parameters grouped (10: the biases), or all flat: same update."""
    import passes.training_step as training_step
    monkeypatch.setattr(training_step, "SMALL_PARAMETER", small_limit)
    feeds = batch()
    results = []
    for fuse in (False, True):
        forward, model, _ = forward_model()
        params = [name for name, _ in model.named_parameters()]
        step = build_training_step(forward, params, OptimizerConfig("adam", {"lr": 0.1}), fuse_update=fuse)
        results.append(run(step, feeds))
        slots = {inp for inp, _ in step.state_pairs} - set(params) - {"step"}
        if fuse:
            expected = {"optimizer.exp_avg", "optimizer.exp_avg_sq"}
        elif small_limit:  # the weights (20 and 15 elements) alone, the biases (5 and 3) together
            expected = {f"{p}.{s}" for p in params if p.endswith("weight") for s in ("exp_avg", "exp_avg_sq")}
            expected |= {"optimizer.small.exp_avg", "optimizer.small.exp_avg_sq"}
        else:
            expected = {f"{p}.{s}" for p in params for s in ("exp_avg", "exp_avg_sq")}
        assert slots == expected
    per_param, flat = results
    for name in [k for k in per_param if k.endswith(".updated") and not k.count(".exp_avg")]:
        np.testing.assert_allclose(flat[name], per_param[name], rtol=1e-6, atol=1e-7, err_msg=name)


def test_unknown_trainable_and_non_scalar_loss_are_refused():
    forward, _, _ = forward_model()
    with pytest.raises(ValueError, match="nope"):
        build_training_step(forward, ["nope"], OptimizerConfig("sgd"))
    x = gc.input("x", (3,))
    with pytest.raises(ValueError, match="unknown optimizer"):
        OptimizerConfig("lbfgs")
    with pytest.raises(ValueError, match="scalar"):
        build_training_step(build_model([x], {"loss": x * 2}), [], OptimizerConfig("sgd"))
