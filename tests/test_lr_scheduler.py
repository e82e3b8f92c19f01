"""gc.optim.lr_scheduler against torch.optim.lr_scheduler, step by step, and its state_dict contract."""

import json

import numpy as np
import pytest

import graphc as gc
from graphc import nn
from graphc.optim import lr_scheduler as S

torch = pytest.importorskip("torch")
TS = torch.optim.lr_scheduler


def _pair(lr=0.1, kind="SGD"):
    ours = getattr(gc.optim, kind)(nn.Linear(2, 1).parameters(), lr=lr)
    theirs = getattr(torch.optim, kind)([torch.nn.Parameter(torch.zeros(2))], lr=lr)
    return ours, theirs


def _lr(opt):
    return opt.param_groups[0]["lr"]


CASES = {
    "step": (S.StepLR, TS.StepLR, dict(step_size=3, gamma=0.5)),
    "step-default-gamma": (S.StepLR, TS.StepLR, dict(step_size=4)),
    "multistep": (S.MultiStepLR, TS.MultiStepLR, dict(milestones=[2, 5, 5, 9], gamma=0.3)),
    "exponential": (S.ExponentialLR, TS.ExponentialLR, dict(gamma=0.93)),
    "cosine": (S.CosineAnnealingLR, TS.CosineAnnealingLR, dict(T_max=7, eta_min=0.01)),
    "cosine-default": (S.CosineAnnealingLR, TS.CosineAnnealingLR, dict(T_max=10)),
    "lambda": (S.LambdaLR, TS.LambdaLR, dict(lr_lambda=lambda e: 1.0 / (1 + e) + 0.01 * (e % 3))),
    "onecycle-cos": (S.OneCycleLR, TS.OneCycleLR, dict(max_lr=0.5, total_steps=60, cycle_momentum=False)),
    "onecycle-linear-3phase": (S.OneCycleLR, TS.OneCycleLR,
                               dict(max_lr=[0.8], epochs=5, steps_per_epoch=11, pct_start=0.25,
                                    anneal_strategy="linear", three_phase=True, div_factor=10.0,
                                    final_div_factor=100.0, cycle_momentum=False)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_schedule_equals_torch_step_by_step(case):
    ours_cls, torch_cls, kwargs = CASES[case]
    opt, topt = _pair()
    sched, tsched = ours_cls(opt, **kwargs), torch_cls(topt, **kwargs)
    assert opt.lr == _lr(topt)  # the lr set at construction
    assert sched.get_last_lr() == tsched.get_last_lr()
    steps = getattr(tsched, "total_steps", 45)
    for i in range(steps):
        topt.step()
        sched.step()
        tsched.step()
        if _lr(topt) < 0:  # OneCycle's linear extrapolation at last_epoch == total_steps: graphc clamps to 0
            assert i + 1 == steps and opt.lr == 0.0 and sched.get_last_lr() == [0.0]
            continue
        assert opt.lr == _lr(topt), f"step {i + 1}"
        assert sched.get_last_lr() == tsched.get_last_lr()
        assert sched.last_epoch == tsched.last_epoch


def test_onecycle_past_total_steps_is_an_error_like_torch():
    opt = _pair()[0]
    sched = S.OneCycleLR(opt, max_lr=0.1, total_steps=3)
    for _ in range(3):
        sched.step()
    with pytest.raises(ValueError, match="tried to step 4 times; total_steps is 3"):
        sched.step()


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(mode="max", factor=0.5, patience=2, cooldown=2, min_lr=0.02),
    dict(patience=1, threshold=0.1, threshold_mode="abs", eps=1e-3, factor=0.3),
    dict(mode="max", patience=0, threshold_mode="abs", min_lr=[0.001]),
])
def test_reduce_on_plateau_equals_torch(kwargs):
    rng = np.random.default_rng(0)
    metrics = np.concatenate([np.linspace(1, 0.5, 5), 0.5 + 0.05 * rng.random(40), [0.1, 0.1, 0.2]])
    opt, topt = _pair(lr=0.3)
    sched, tsched = S.ReduceLROnPlateau(opt, **kwargs), TS.ReduceLROnPlateau(topt, **kwargs)
    changed = 0
    for i, m in enumerate(metrics):
        before = opt.lr
        sched.step(float(m))
        tsched.step(float(m))
        assert opt.lr == _lr(topt), f"epoch {i + 1}"
        assert sched.get_last_lr() == tsched.get_last_lr()
        assert (sched.best, sched.num_bad_epochs, sched.cooldown_counter) == \
               (tsched.best, tsched.num_bad_epochs, tsched.cooldown_counter)
        changed += opt.lr != before
    assert changed >= 1  # the sequence does exercise a reduction


@pytest.mark.parametrize("case", ["step", "multistep", "exponential", "cosine"])
def test_step_with_epoch_uses_the_closed_form_like_torch(case):
    ours_cls, torch_cls, kwargs = CASES[case]
    opt, topt = _pair()
    sched, tsched = ours_cls(opt, **kwargs), torch_cls(topt, **kwargs)
    for epoch in (4, 9, 2, 15):
        sched.step(epoch)
        with pytest.warns(UserWarning):
            tsched.step(epoch)
        assert opt.lr == pytest.approx(_lr(topt), rel=1e-15)


@pytest.mark.parametrize("case", ["step", "exponential", "cosine", "multistep"])
def test_last_epoch_resumes_like_torch(case):
    ours_cls, torch_cls, kwargs = CASES[case]
    opt, topt = _pair()
    # torch resumes from param_group["initial_lr"]; graphc keeps it on the optimizer
    opt.initial_lr = 0.2
    topt.param_groups[0]["initial_lr"] = 0.2
    sched, tsched = ours_cls(opt, last_epoch=6, **kwargs), torch_cls(topt, last_epoch=6, **kwargs)
    assert opt.lr == _lr(topt)
    for _ in range(10):
        topt.step()
        sched.step()
        tsched.step()
        assert opt.lr == _lr(topt)


def test_last_epoch_without_initial_lr_is_a_clear_error():
    with pytest.raises(ValueError, match="last_epoch=3 resumes a schedule, but the optimizer has no initial_lr"):
        S.StepLR(_pair()[0], step_size=2, last_epoch=3)


@pytest.mark.parametrize("case", sorted(CASES))
def test_state_dict_is_json_and_resumes_the_same_sequence(case):
    ours_cls, _, kwargs = CASES[case]
    opt = _pair()[0]
    sched = ours_cls(opt, **kwargs)
    assert opt._schedulers == [sched]
    for _ in range(7):
        sched.step()
    state = json.loads(json.dumps(sched.state_dict(), allow_nan=False))
    saved_lr = opt.lr
    uninterrupted = []
    for _ in range(20):
        sched.step()
        uninterrupted.append(opt.lr)

    opt2 = _pair()[0]
    sched2 = ours_cls(opt2, **kwargs)
    sched2.load_state_dict(state)
    opt2.lr = saved_lr  # the checkpoint restores the optimizer's lr; the scheduler does not (as in torch)
    resumed = []
    for _ in range(20):
        sched2.step()
        resumed.append(opt2.lr)
    assert resumed == uninterrupted


def test_state_dict_matches_torchs_position_fields():
    opt, topt = _pair()
    sched, tsched = S.CosineAnnealingLR(opt, T_max=5), TS.CosineAnnealingLR(topt, T_max=5)
    for _ in range(3):
        topt.step()
        sched.step()
        tsched.step()
    ours, theirs = sched.state_dict(), tsched.state_dict()
    for key in ("last_epoch", "_step_count", "base_lrs", "_last_lr", "T_max", "eta_min"):
        assert ours[key] == theirs[key], key


def test_reduce_on_plateau_state_round_trips_infinite_best_as_strict_json():
    opt = _pair()[0]
    sched = S.ReduceLROnPlateau(opt, patience=1)
    text = json.dumps(sched.state_dict(), allow_nan=False)
    sched.step(0.5)
    sched.load_state_dict(json.loads(text))
    assert sched.best == float("inf") and sched.last_epoch == 0


def test_lambda_state_keeps_callable_objects_state_and_leaves_functions_out():
    class Warmup:
        def __init__(self):
            self.scale = 1.0

        def __call__(self, epoch):
            return self.scale * min(1.0, (epoch + 1) / 5)

    fn = Warmup()
    sched = S.LambdaLR(_pair()[0], fn)
    fn.scale = 0.5
    state = sched.state_dict()
    assert state["lr_lambdas"] == [{"scale": 0.5}]
    other = Warmup()
    S.LambdaLR(_pair()[0], other).load_state_dict(state)
    assert other.scale == 0.5
    assert S.LambdaLR(_pair()[0], lambda e: 1.0).state_dict()["lr_lambdas"] == [None]


@pytest.mark.parametrize("mutate, message", [
    (lambda s: s.update(type="ExponentialLR"), "the state is of a 'ExponentialLR', not a 'StepLR'"),
    (lambda s: s.pop("last_epoch"), r"missing keys \['last_epoch'\]"),
    (lambda s: s.update(extra=1), r"unexpected keys \['extra'\]"),
    (lambda s: s.update(gamma="half"), "'gamma' must be a number, got 'half'"),
    (lambda s: s.update(base_lrs=[0.1, 0.2]), "'base_lrs' must be a list of one number"),
    (lambda s: s.update(step_size=0), "step_size must be an integer >= 1, got 0"),
])
def test_check_state_dict_rejects_bad_states_and_changes_nothing(mutate, message):
    opt = _pair()[0]
    sched = S.StepLR(opt, step_size=2)
    sched.step()
    state = sched.state_dict()
    before = (dict(state), opt.lr)
    mutate(state)
    with pytest.raises(ValueError, match=message):
        sched.check_state_dict(state)
    with pytest.raises(ValueError, match=message):
        sched.load_state_dict(state)
    assert (sched.state_dict(), opt.lr) == before
    with pytest.raises(ValueError, match="expected a dict, got list"):
        sched.check_state_dict([1])


@pytest.mark.parametrize("build, message", [
    (lambda o: S.StepLR(o, step_size=0), "StepLR: step_size must be an integer >= 1, got 0"),
    (lambda o: S.StepLR(o, step_size=2, gamma=float("nan")), "StepLR: gamma must be a finite number, got nan"),
    (lambda o: S.MultiStepLR(o, milestones=3), "milestones must be a list of integers, got 3"),
    (lambda o: S.CosineAnnealingLR(o, T_max=0), "T_max must be an integer >= 1, got 0"),
    (lambda o: S.LambdaLR(o, [lambda e: 1, lambda e: 2]), "expected 1 lr_lambda .*one lr, no param groups.*got 2"),
    (lambda o: S.LambdaLR(o, 0.5), "lr_lambda must be callable"),
    (lambda o: S.OneCycleLR(o, max_lr=0.1), r"define either total_steps or \(epochs and steps_per_epoch\)"),
    (lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=5, cycle_momentum=True),
     "cycle_momentum=True is not supported"),
    (lambda o: S.OneCycleLR(o, max_lr=0.1, total_steps=5, anneal_strategy="exp"), "anneal_strategy must be"),
    (lambda o: S.ReduceLROnPlateau(o, factor=1.0), "factor must be < 1.0, got 1.0"),
    (lambda o: S.ReduceLROnPlateau(o, mode="best"), "mode must be 'min' or 'max', got 'best'"),
    (lambda o: S.StepLR(object(), step_size=1), "optimizer must be a gc.optim optimizer, got object"),
])
def test_bad_arguments_are_clear_errors_and_attach_nothing(build, message):
    opt = _pair()[0]
    with pytest.raises((ValueError, TypeError), match=message):
        build(opt)
    assert opt._schedulers == [] and opt.lr == 0.1


def test_reduce_on_plateau_rejects_a_non_number_metric():
    with pytest.raises(ValueError, match="metrics must be a number, got 'low'"):
        S.ReduceLROnPlateau(_pair()[0]).step("low")


def test_the_schedule_drives_a_running_trainer_like_torch():
    """The lr a scheduler sets is the lr of the next training step: parameters follow torch's SGD + StepLR."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 3)).astype(np.float32)
    Y = rng.normal(size=(8, 2)).astype(np.float32)
    model = nn.Linear(3, 2)
    tmodel = torch.nn.Linear(3, 2)
    with torch.no_grad():
        tmodel.weight.copy_(torch.from_numpy(model.weight.data))
        tmodel.bias.copy_(torch.from_numpy(model.bias.data))
    x, y = gc.input("x", ("batch", 3)), gc.input("y", ("batch", 2))
    opt = gc.optim.SGD(model.parameters(), lr=0.5)
    trainer = gc.Trainer(nn.functional.mse_loss(model(x), y), opt, inputs=[x, y])
    sched = S.StepLR(opt, step_size=2, gamma=0.1)
    topt = torch.optim.SGD(tmodel.parameters(), lr=0.5)
    tsched = TS.StepLR(topt, step_size=2, gamma=0.1)
    for _ in range(6):
        trainer.step({"x": X, "y": Y})
        topt.zero_grad()
        torch.nn.functional.mse_loss(tmodel(torch.from_numpy(X)), torch.from_numpy(Y)).backward()
        topt.step()
        sched.step()
        tsched.step()
    np.testing.assert_allclose(model.weight.data, tmodel.weight.detach().numpy(), rtol=1e-5, atol=1e-6)
