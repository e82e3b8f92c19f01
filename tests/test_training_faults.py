"""Regression tests: non-finite gradients, parameters without gradients, odd feeds, extreme seeds."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
import graphc.nn.functional as F
from graphc import nn
from graphc.random import key_for_step


def test_saturated_sigmoid_bce_has_finite_gradients_as_in_torch():
    torch = pytest.importorskip("torch")
    x = gc.input("x", ("batch", 2))
    t = gc.input("t", ("batch", 2))
    layer = nn.Linear(2, 2)
    tlayer = torch.nn.Linear(2, 2)
    layer.load_state_dict(tlayer.state_dict())
    loss = F.binary_cross_entropy(F.sigmoid(layer(x) * 100.0), t)
    grads = gc.grad(loss, layer.parameters())
    xb = np.array([[50.0, -50.0], [1.0, 2.0]], np.float32)  # the sigmoid saturates to exactly 0 and 1
    tb = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    out = gc.compile([x, t], {"loss": loss, "gw": grads[0], "gb": grads[1]}).run({"x": xb, "t": tb})
    tloss = torch.nn.functional.binary_cross_entropy(torch.sigmoid(tlayer(torch.from_numpy(xb)) * 100.0),
                                                     torch.from_numpy(tb))
    tloss.backward()
    assert np.isfinite(out["gw"]).all() and np.isfinite(out["gb"]).all()
    np.testing.assert_allclose(out["loss"], tloss.item(), rtol=1e-5)


def test_a_non_finite_gradient_with_a_finite_loss_is_refused_and_changes_nothing():
    x = gc.input("x", ("batch", 3))
    layer = nn.Linear(3, 1)
    loss = (layer(x).sqrt() * 0.0).sum()  # loss 0; d sqrt(u)/du at u = 0 is inf, times 0 -> NaN gradients
    trainer = gc.Trainer(loss, gc.optim.SGD(layer.parameters(), lr=0.1), [x])
    layer_state = layer.state_dict()
    zero_input = np.zeros((2, 3), np.float32)
    layer.load_state_dict({"weight": np.zeros((1, 3), np.float32), "bias": np.zeros(1, np.float32)})
    with pytest.raises(gc.NonFiniteLossError, match="gradient is not"):
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
