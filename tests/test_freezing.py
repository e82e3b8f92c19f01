"""Freezing (issue 7.1): requires_grad=False means no gradient and no update, as in PyTorch,
whether set before the Trainer is built or between steps (the step is then rebuilt, state carried)."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
import graphc.nn.functional as F
from graphc import nn

torch = pytest.importorskip("torch")


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


def _pair():
    gc.manual_seed(0)
    model = MLP()
    reference = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    reference.load_state_dict({k.replace("fc1", "0").replace("fc2", "2"): torch.from_numpy(v.copy())
                               for k, v in model.state_dict().items()})
    return model, reference


def _batches(n):
    rng = np.random.default_rng(1)
    return [(rng.standard_normal((5, 4)).astype(np.float32), rng.integers(0, 3, 5)) for _ in range(n)]


def _build(model, optimizer_cls, **hparams):
    x = gc.input("x", ("batch", 4))
    y = gc.input("y", ("batch",), "int64")
    return gc.Trainer(F.cross_entropy(model(x), y), optimizer_cls(model.parameters(), **hparams), [x, y])


def _torch_step(reference, optimizer, xb, yb):
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(reference(torch.from_numpy(xb)), torch.from_numpy(yb))
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def _assert_same(model, reference):
    for (name, value), (_, expected) in zip(model.state_dict().items(), reference.state_dict().items()):
        np.testing.assert_allclose(value, expected.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_frozen_before_build_matches_torch_and_never_changes():
    model, reference = _pair()
    model.fc1.requires_grad_(False)
    reference[0].requires_grad_(False)
    frozen = {k: v.copy() for k, v in model.state_dict().items() if k.startswith("fc1")}
    trainer = _build(model, gc.optim.AdamW, lr=0.05, weight_decay=0.1)
    torch_opt = torch.optim.AdamW(reference.parameters(), lr=0.05, weight_decay=0.1)
    for xb, yb in _batches(4):
        np.testing.assert_allclose(trainer.step({"x": xb, "y": yb}), _torch_step(reference, torch_opt, xb, yb),
                                   rtol=1e-5)
    _assert_same(model, reference)
    for name, value in frozen.items():
        np.testing.assert_array_equal(model.state_dict()[name], value)  # bitwise: weight decay did not touch it
    inputs = {i.name for i in trainer.step_model.graph.input}
    assert not any(n.startswith("fc1.") and n.count(".") > 1 for n in inputs)  # no optimizer slots for fc1


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_freeze_and_unfreeze_between_steps_matches_torch(optimizer):
    model, reference = _pair()
    if optimizer == "sgd":
        trainer = _build(model, gc.optim.SGD, lr=0.1, momentum=0.9)
        torch_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    else:
        trainer = _build(model, gc.optim.Adam, lr=0.05)
        torch_opt = torch.optim.Adam(reference.parameters(), lr=0.05)
    batches = _batches(9)
    for index, (xb, yb) in enumerate(batches):
        if index == 3:
            model.fc1.weight.requires_grad = False
            reference[0].weight.requires_grad = False
            before = model.fc1.weight.data.copy()
        if index == 6:
            np.testing.assert_array_equal(model.fc1.weight.data, before)
            if optimizer == "adam":
                break  # torch's Adam counts steps per parameter, graphc's per trainer: compare up to here
            model.fc1.weight.requires_grad = True
            reference[0].weight.requires_grad = True
        np.testing.assert_allclose(trainer.step({"x": xb, "y": yb}), _torch_step(reference, torch_opt, xb, yb),
                                   rtol=1e-5, err_msg=f"step {index}")
    _assert_same(model, reference)
    assert trainer.steps_done == (9 if optimizer == "sgd" else 6)


def test_module_requires_grad_and_nothing_to_train():
    model, _ = _pair()
    assert model.requires_grad_(False) is model
    assert not any(p.requires_grad for p in model.parameters())
    with pytest.raises(gc.GraphcError, match="frozen"):
        _build(model, gc.optim.SGD, lr=0.1)
    with pytest.raises(TypeError, match="requires_grad must be a bool"):
        model.fc1.weight.requires_grad = "no"


def test_gc_grad_refuses_a_frozen_parameter_as_torch_does():
    model, _ = _pair()
    x = gc.input("x", ("batch", 4))
    model.fc1.weight.requires_grad = False
    with pytest.raises(ValueError, match="fc1.weight.*frozen"):
        gc.grad(model(x).sum(), model.parameters())


def test_optimizer_over_another_models_parameters_is_refused():
    """Issue 7.11: it would silently update nothing."""
    model, other = MLP(), MLP()
    x = gc.input("x", ("batch", 4))
    y = gc.input("y", ("batch",), "int64")
    with pytest.raises(gc.GraphcError, match="none of the 4 parameters of the optimizer reach the loss"):
        gc.Trainer(F.cross_entropy(model(x), y), gc.optim.SGD(other.parameters(), lr=0.1), [x, y])


def test_checkpoint_keeps_a_frozen_parameters_optimizer_slots(tmp_path):
    """A frozen parameter's momentum is saved with the checkpoint and restored: unfrozen after resuming,
    it continues as in the run that never stopped, and as torch's (which keeps per-parameter state)."""
    model, reference = _pair()
    trainer = _build(model, gc.optim.SGD, lr=0.1, momentum=0.9)
    torch_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    batches = _batches(8)
    for index, (xb, yb) in enumerate(batches[:5]):
        if index == 3:
            model.fc1.weight.requires_grad = False
            reference[0].weight.requires_grad = False
        trainer.step({"x": xb, "y": yb})
        _torch_step(reference, torch_opt, xb, yb)
    path = tmp_path / "frozen.ckpt"
    trainer.save_checkpoint(path)

    gc.manual_seed(123)  # other initial values: everything must come from the checkpoint
    resumed_model = MLP()
    resumed_model.fc1.weight.requires_grad = False
    resumed = _build(resumed_model, gc.optim.SGD, lr=0.1, momentum=0.9)
    resumed.load_checkpoint(path)
    for m in (model, resumed_model):
        m.fc1.weight.requires_grad = True
    reference[0].weight.requires_grad = True
    for xb, yb in batches[5:]:
        loss = trainer.step({"x": xb, "y": yb})
        np.testing.assert_allclose(resumed.step({"x": xb, "y": yb}), loss, rtol=1e-6)
        _torch_step(reference, torch_opt, xb, yb)
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(resumed_model.state_dict()[name], value, rtol=1e-6, atol=1e-7, err_msg=name)
    _assert_same(resumed_model, reference)


def test_checkpoint_parked_slots_are_checked(tmp_path):
    model, _ = _pair()
    trainer = _build(model, gc.optim.SGD, lr=0.1, momentum=0.9)
    xb, yb = _batches(1)[0]
    trainer.step({"x": xb, "y": yb})
    model.fc1.weight.requires_grad = False
    trainer.step({"x": xb, "y": yb})
    path = tmp_path / "frozen.ckpt"
    trainer.save_checkpoint(path)
    # A trainer that trains fc1.weight has no place for the slot kept aside: refused, nothing changed.
    other_model, _ = _pair()
    other = _build(other_model, gc.optim.SGD, lr=0.1, momentum=0.9)
    before = other_model.fc1.weight.data.copy()
    with pytest.raises(gc.CheckpointError, match=r"unexpected \['parked:fc1.weight.momentum_buffer'\].*"
                                                 r"freeze the same parameters"):
        other.load_checkpoint(path)
    np.testing.assert_array_equal(other_model.fc1.weight.data, before)
    # The same freezing loads it, and a checkpoint without parked slots clears those held aside.
    other_model.fc1.weight.requires_grad = False
    other.load_checkpoint(path)
    assert set(other._parked) == {"fc1.weight.momentum_buffer"}
    np.testing.assert_array_equal(other._parked["fc1.weight.momentum_buffer"],
                                  trainer._parked["fc1.weight.momentum_buffer"])
    fresh_model, _ = _pair()
    fresh_model.fc1.weight.requires_grad = False
    fresh = _build(fresh_model, gc.optim.SGD, lr=0.1, momentum=0.9)
    fresh.step({"x": xb, "y": yb})
    plain = tmp_path / "plain.ckpt"
    fresh.save_checkpoint(plain)
    other.load_checkpoint(plain)
    assert other._parked == {}
