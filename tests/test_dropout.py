"""Dropout: keep rate and scaling, the same mask in backward, a fresh mask per step, seeds, eval identity."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
import graphc.nn.functional as F
from graphc import nn
from graphc.errors import GraphcError
from graphc.random import RNG_KEY


def key(value: int) -> np.ndarray:
    return np.asarray(value, dtype=np.int64)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_keep_rate_and_scaling(p):
    x = gc.input("x", ("batch", 4096))
    program = gc.compile([x], {"y": F.dropout(x, p)}, allow_random=True)
    xb = np.random.default_rng(0).uniform(1, 2, (8, 4096)).astype(np.float32)
    y = program.run({"x": xb, RNG_KEY: key(7)})["y"]
    kept = y != 0
    n = kept.size
    assert abs(kept.mean() - (1 - p)) < 4 * np.sqrt(p * (1 - p) / n)  # within 4 standard deviations
    np.testing.assert_allclose(y[kept], xb[kept] / (1 - p), rtol=1e-6)


def test_backward_reuses_the_forward_mask():
    x = gc.input("x", ("batch", 512))
    w = gc.constant(np.random.default_rng(1).standard_normal(512).astype(np.float32))
    y = F.dropout(x, 0.5)
    (dx,) = gc.grad((y * w).sum(), [x])
    program = gc.compile([x], {"y": y, "dx": dx}, allow_random=True)
    xb = np.ones((4, 512), np.float32)
    out = program.run({"x": xb, RNG_KEY: key(3)})
    mask = out["y"] != 0
    np.testing.assert_allclose(out["dx"], np.where(mask, 2.0 * np.broadcast_to(w_value(w), xb.shape), 0.0),
                               rtol=1e-6)


def w_value(w):
    return w.value.const_value.numpy()


def test_masks_differ_between_keys_and_calls_but_repeat_for_the_same_key():
    x = gc.input("x", (1000,))
    first, second = F.dropout(x, 0.5), F.dropout(x, 0.5)
    program = gc.compile([x], {"a": first, "b": second}, allow_random=True)
    ones = np.ones(1000, np.float32)
    run1 = program.run({"x": ones, RNG_KEY: key(1)})
    run1_again = program.run({"x": ones, RNG_KEY: key(1)})
    run2 = program.run({"x": ones, RNG_KEY: key(2)})
    np.testing.assert_array_equal(run1["a"], run1_again["a"])
    assert (run1["a"] != run2["a"]).mean() > 0.3
    assert (run1["a"] != run1["b"]).mean() > 0.3  # two dropout layers draw independent masks


def build_trainer(seed):
    gc.manual_seed(0)
    x = gc.input("x", ("batch", 16))
    y = gc.input("y", ("batch",), "int64")
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 3))
    loss = F.cross_entropy(model(x), y)
    return model, gc.Trainer(loss, gc.optim.SGD(model.parameters(), lr=0.1), [x, y], seed=seed)


def test_trainer_seed_fixes_masks_and_each_step_draws_a_fresh_one(tmp_path):
    rng = np.random.default_rng(0)
    batch = {"x": rng.standard_normal((8, 16)).astype(np.float32), "y": rng.integers(0, 3, 8)}
    _, a = build_trainer(seed=0)
    _, b = build_trainer(seed=0)
    _, c = build_trainer(seed=1)
    losses_a = [a.step(batch) for _ in range(5)]
    assert losses_a == [b.step(batch) for _ in range(5)]
    assert losses_a != [c.step(batch) for _ in range(5)]
    # Same batch, same parameters would give the same loss without fresh masks: with lr=0 only masks change.
    model, frozen = build_trainer(seed=0)
    frozen.optimizer.lr = 0.0
    assert len({frozen.step(batch) for _ in range(5)}) == 5


def test_resume_continues_the_dropout_stream_exactly(tmp_path):
    rng = np.random.default_rng(0)
    batches = [{"x": rng.standard_normal((8, 16)).astype(np.float32), "y": rng.integers(0, 3, 8)}
               for _ in range(6)]
    _, full = build_trainer(seed=5)
    expected = [full.step(b) for b in batches]
    _, first = build_trainer(seed=5)
    for b in batches[:3]:
        first.step(b)
    first.save_checkpoint(tmp_path / "ckpt")
    _, resumed = build_trainer(seed=5)
    resumed.load_checkpoint(tmp_path / "ckpt")
    assert [resumed.step(b) for b in batches[3:]] == expected[3:]


def test_eval_mode_is_identity_and_training_graphs_refuse_plain_compile():
    x = gc.input("x", ("batch", 4))
    layer = nn.Dropout(0.5)
    train_out = layer(x)
    with pytest.raises(GraphcError, match="model.eval"):
        gc.compile([x], {"y": train_out})
    layer.eval()
    assert layer(x) is x
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        nn.Dropout(1.5)
