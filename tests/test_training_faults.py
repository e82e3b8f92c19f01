"""Regression tests: non-finite gradients, parameters without gradients, odd feeds, extreme seeds."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
import graphc.nn.functional as F
from graphc import nn
from graphc.random import key_for_step


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_bce_at_saturated_probabilities_matches_torch_values_and_gradients(reduction):
    """p exactly 0 or 1 (a saturated sigmoid): torch clamps the logs at -100 and its backward is
    (p - t) / max(p (1 - p), 1e-12); graphc gives the same values and gradients, all finite."""
    torch = pytest.importorskip("torch")
    p = gc.input("p", (2, 3))
    t = gc.input("t", (2, 3))
    loss = F.binary_cross_entropy(p, t, reduction=reduction)
    weights = gc.constant(np.arange(1, 7, dtype=np.float32).reshape(2, 3))
    scalar = (loss * weights).sum() if reduction == "none" else loss
    dp, dt = gc.grad(scalar, [p, t])
    pb = np.array([[0.0, 1.0, 1e-30], [1.0, 0.5, 0.0]], np.float32)
    tb = np.array([[1.0, 0.0, 0.0], [1.0, 0.3, 0.0]], np.float32)
    out = gc.compile([p, t], {"loss": loss, "dp": dp, "dt": dt}).run({"p": pb, "t": tb})
    tp, tt = torch.tensor(pb, requires_grad=True), torch.tensor(tb, requires_grad=True)
    tloss = torch.nn.functional.binary_cross_entropy(tp, tt, reduction=reduction)
    tscalar = (tloss * torch.arange(1, 7, dtype=torch.float32).reshape(2, 3)).sum() if reduction == "none" \
        else tloss
    tscalar.backward()
    np.testing.assert_allclose(out["loss"], tloss.detach().numpy(), rtol=1e-6, atol=1e-7)  # torch uses log1p
    np.testing.assert_allclose(out["dp"], tp.grad.numpy(), rtol=1e-5)
    finite = np.isfinite(tt.grad.numpy())  # torch's target gradient uses unclamped logs: inf at p = 0 or 1
    np.testing.assert_allclose(out["dt"][finite], tt.grad.numpy()[finite], rtol=1e-5)
    assert np.isfinite(out["dp"]).all() and np.isfinite(out["dt"]).all()  # graphc clamps them at 100


def test_a_non_finite_gradient_with_a_finite_loss_is_refused_and_changes_nothing():
    x = gc.input("x", ("batch", 3))
    layer = nn.Linear(3, 1)
    loss = (layer(x).sqrt() * 0.0).sum()  # loss 0; d sqrt(u)/du at u = 0 is inf, times 0 -> NaN gradients
    trainer = gc.Trainer(loss, gc.optim.SGD(layer.parameters(), lr=0.1), [x])
    layer_state = layer.state_dict()
    zero_input = np.zeros((2, 3), np.float32)
    layer.load_state_dict({"weight": np.zeros((1, 3), np.float32), "bias": np.zeros(1, np.float32)})
    with pytest.raises(gc.NonFiniteLossError, match="gradient or a carried statistic is not"):
        trainer.step({"x": zero_input})
    assert all(not v.any() for v in layer.state_dict().values())
    assert trainer.steps_done == 0 and set(layer_state) == set(layer.state_dict())


def test_parameters_without_gradient_are_not_updated_even_by_adamw():
    x = gc.input("x", ("batch", 2))
    frozen, head = nn.Linear(2, 2), nn.Linear(2, 1)
    loss = head(frozen(x).detach()).sum()
    before = frozen.weight.data.copy()
    trainer = gc.Trainer(loss, gc.optim.AdamW([*frozen.parameters(), *head.parameters()], lr=0.1), [x])
    trainer.step({"x": np.ones((4, 2), np.float32)})
    np.testing.assert_array_equal(frozen.weight.data, before)  # weight decay would have moved it
    assert not np.allclose(head.weight.data, head.weight.data * 0)


@pytest.mark.parametrize("seed", [0, 2 ** 31, 2 ** 40 + 3, -1])
def test_rng_keys_exist_for_any_integer_seed(seed):
    keys = {int(key_for_step(seed, step)) for step in range(3)}
    assert len(keys) == 3


def test_probability_targets_with_label_smoothing_match_torch():
    torch = pytest.importorskip("torch")
    z = gc.input("z", ("batch", 4))
    p = gc.input("p", ("batch", 4))
    loss = F.cross_entropy(z, p, label_smoothing=0.2)
    rng = np.random.default_rng(0)
    zb = rng.standard_normal((3, 4)).astype(np.float32)
    pb = rng.dirichlet(np.ones(4), 3).astype(np.float32)
    expected = torch.nn.functional.cross_entropy(torch.from_numpy(zb), torch.from_numpy(pb), label_smoothing=0.2)
    np.testing.assert_allclose(gc.compile([z, p], {"l": loss}).run({"z": zb, "p": pb})["l"], expected.item(),
                               rtol=1e-6)


def test_array_likes_are_accepted_as_training_feeds(tmp_path):
    x = gc.input("x", ("batch", 2))
    y = gc.input("y", ("batch",), "int64")
    layer = nn.Linear(2, 3)
    trainer = gc.Trainer(F.cross_entropy(layer(x), y), gc.optim.SGD(layer.parameters(), lr=0.1), [x, y])
    mapped = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32, shape=(2, 2))
    mapped[:] = 1.0
    assert np.isfinite(trainer.step({"x": mapped, "y": np.array([0, 1])}))


def test_fit_leaves_skipped_steps_out_of_the_epoch_loss():
    x = gc.input("x", ("batch", 2))
    y = gc.input("y", ("batch",), "int64")
    layer = nn.Linear(2, 3)
    trainer = gc.Trainer(F.cross_entropy(layer(x), y), gc.optim.SGD(layer.parameters(), lr=0.1), [x, y],
                         nan_policy="skip")
    X = np.ones((4, 2), np.float32)
    X[0] = np.nan
    history = trainer.fit(gc.data.DataLoader(X, np.zeros(4, np.int64), batch_size=2), epochs=1, progress=False)
    assert trainer.skipped_steps == 1 and np.isfinite(history[0]["loss"])


def test_max_pool_gradient_ignores_infinities_outside_the_maxima():
    x = gc.input("x", (1, 1, 2, 2))
    (dx,) = gc.grad(F.max_pool2d(x, 2).sum(), [x])
    xb = np.array([[[[1.0, -np.inf], [0.0, 0.0]]]], np.float32)
    np.testing.assert_array_equal(gc.compile([x], {"dx": dx}).run({"x": xb})["dx"],
                                  [[[[1.0, 0.0], [0.0, 0.0]]]])


@pytest.mark.parametrize("io_binding", [False, True])
def test_large_finite_gradients_whose_sum_overflows_are_applied(io_binding):
    """Each gradient element is 1e36 (finite); their float32 sum, 1e39, is not. The old check summed
    the gradients and refused this step as non-finite; the update must be applied, as numpy computes it."""
    x = gc.input("x", ("batch", 1000))
    weight = nn.Parameter(np.zeros(1000, np.float32))
    loss = (x * weight).sum()  # 0 at w = 0; d loss / d w = the column sums of x
    trainer = gc.Trainer(loss, gc.optim.SGD([weight], lr=1e-36), [x], io_binding=io_binding)
    xb = np.full((1, 1000), 1e36, np.float32)
    with np.errstate(over="ignore"):
        assert np.isinf(xb.sum(dtype=np.float32))  # what the old finiteness check computed
    assert trainer.step({"x": xb}) == 0.0
    expected = np.zeros(1000, np.float32) - np.float32(1e-36) * xb[0]  # SGD: w - lr * g
    np.testing.assert_allclose(weight.data, expected, rtol=1e-6)
    assert trainer.steps_done == 1


@pytest.mark.parametrize("scale", [1.0, -1.0, 0.0])  # gradient of w_bad: +inf, -inf, NaN (0 * inf)
def test_one_non_finite_gradient_among_huge_finite_ones_is_refused(scale):
    x = gc.input("x", ("batch", 1000))
    w_big = nn.Parameter(np.zeros(1000, np.float32))
    w_bad = nn.Parameter(np.zeros(1, np.float32))
    loss = (x * w_big).sum() + (w_bad.sqrt() * scale).sum()  # 0; d/d w_bad = scale / (2 sqrt(0))
    trainer = gc.Trainer(loss, gc.optim.SGD([w_big, w_bad], lr=1e-36), [x])
    with pytest.raises(gc.NonFiniteLossError, match="the loss is finite .* but a gradient or a carried statistic is not"):
        trainer.step({"x": np.full((1, 1000), 1e36, np.float32)})
    assert not w_big.data.any() and not w_bad.data.any() and trainer.steps_done == 0


def test_batch_norm_on_one_value_per_channel_is_refused_not_stored_as_nan():
    """A (1, C) batch through BatchNorm1d: the unbiased running variance is 0 * 1/0 = NaN while the loss
    stays finite. PyTorch raises; graphc refuses the step (the running statistics are in the finiteness
    check) and keeps every value, instead of storing a NaN variance that poisons evaluation."""
    gc.manual_seed(0)
    model = gc.nn.Sequential(gc.nn.Linear(4, 3), gc.nn.BatchNorm1d(3), gc.nn.Linear(3, 2))
    x = gc.input("x", ("batch", 4))
    y = gc.input("y", ("batch",), "int64")
    trainer = gc.Trainer(gc.nn.functional.cross_entropy(model(x), y), gc.optim.SGD(model.parameters(), lr=0.1),
                         [x, y])
    rng = np.random.default_rng(0)
    trainer.step({"x": rng.standard_normal((4, 4)).astype(np.float32), "y": rng.integers(0, 2, 4)})
    before = model.state_dict()
    with pytest.raises(gc.NonFiniteLossError, match="carried statistic"):
        trainer.step({"x": rng.standard_normal((1, 4)).astype(np.float32), "y": np.array([1])})
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    assert np.isfinite(model.state_dict()["1.running_var"]).all()
