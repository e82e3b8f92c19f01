"""``gc.optim.lr_scheduler``: ``torch.optim.lr_scheduler``'s schedulers over a graphc optimizer.

Same constructor arguments, defaults and stepping semantics as PyTorch: a
scheduler sets the lr once at construction (``last_epoch`` -1 -> 0), each
``step()`` advances ``last_epoch`` and writes ``optimizer.lr`` (which the
running Trainer feeds to the next training step), ``get_last_lr()`` returns
``[lr]``. The recurrences are PyTorch's own (chainable: each step multiplies
the current lr), so the float64 sequences equal PyTorch's bit for bit.

graphc optimizers have one lr (no param groups): where PyTorch takes one
value per group (``max_lr``, ``min_lr``, ``lr_lambda``) a list of exactly one
is accepted. Every scheduler appends itself to ``optimizer._schedulers``, so
``Trainer.save_checkpoint`` stores its ``state_dict()`` (JSON-serialisable;
callables are left out, as PyTorch does) and ``load_checkpoint`` restores it
after ``check_state_dict`` has validated it.

    >>> import graphc as gc
    >>> opt = gc.optim.SGD(gc.nn.Linear(2, 1).parameters(), lr=0.1)
    >>> sched = gc.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    >>> for _ in range(4): sched.step()
    >>> sched.get_last_lr()
    [0.025]
"""

from __future__ import annotations

import math
import numbers
import types
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Mapping

from graphc.optim import Optimizer

__all__ = ["LRScheduler", "StepLR", "MultiStepLR", "ExponentialLR", "CosineAnnealingLR", "LambdaLR", "OneCycleLR",
           "ReduceLROnPlateau"]


# ---- argument and state checks -------------------------------------------------------
def _number(owner: str, name: str, value, low: float | None = None, high: float | None = None,
            strict_low: bool = False, strict_high: bool = False) -> float:
    """``value`` as a finite float within bounds, or a ValueError naming ``owner.name``, the bound and the value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"{owner}: {name} must be a finite number, got {value!r}")
    value = float(value)
    if low is not None and (value <= low if strict_low else value < low):
        raise ValueError(f"{owner}: {name} must be {'>' if strict_low else '>='} {low}, got {value!r}")
    if high is not None and (value >= high if strict_high else value > high):
        raise ValueError(f"{owner}: {name} must be {'<' if strict_high else '<='} {high}, got {value!r}")
    return value


def _integer(owner: str, name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"{owner}: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _one(owner: str, name: str, value):
    """PyTorch's per-param-group list collapsed to the single value graphc's optimizers have."""
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ValueError(f"{owner}: expected 1 {name} (graphc optimizers have one lr, no param groups), "
                             f"got {len(value)}: {list(value)!r}")
        return value[0]
    return value


def _encode(x: float):
    """Floats as JSON allows them: non-finite ones (ReduceLROnPlateau's initial best) as strings."""
    return x if math.isfinite(x) else str(x)


def _decode(x) -> float:
    return float(x)


def _is_float(x) -> bool:
    if isinstance(x, str):
        return x in ("inf", "-inf", "nan")
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


_KINDS: dict[str, tuple[str, Callable]] = {
    "int": ("an integer", lambda x: isinstance(x, numbers.Integral) and not isinstance(x, bool)),
    "float": ("a number", _is_float),
    "bool": ("a bool", lambda x: isinstance(x, bool)),
    "str": ("a string", lambda x: isinstance(x, str)),
    "float1": ("a list of one number", lambda x: isinstance(x, list) and len(x) == 1 and _is_float(x[0])),
    "ints": ("a list of integers", lambda x: isinstance(x, list) and all(_KINDS["int"][1](v) for v in x)),
    "any": ("anything", lambda x: True),
}


class LRScheduler:
    """Base class: ``get_lr()`` computes the next lr from ``last_epoch`` (PyTorch's ``LRScheduler``).

    Subclasses list their hyperparameters in ``_fields`` ({attribute: kind}); those, with the position
    (``last_epoch``, ``_step_count``, ``base_lrs``, ``_last_lr``), make up ``state_dict()``.
    """

    _fields: dict[str, str] = {}

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1):
        name = type(self).__name__
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{name}: optimizer must be a gc.optim optimizer, got {type(optimizer).__name__}")
        if isinstance(last_epoch, bool) or not isinstance(last_epoch, numbers.Integral) or last_epoch < -1:
            raise ValueError(f"{name}: last_epoch must be an integer >= -1, got {last_epoch!r}")
        if last_epoch == -1:
            if getattr(optimizer, "initial_lr", None) is None:  # PyTorch: group.setdefault("initial_lr", lr)
                optimizer.initial_lr = float(optimizer.lr)
        elif getattr(optimizer, "initial_lr", None) is None:
            raise ValueError(f"{name}: last_epoch={last_epoch} resumes a schedule, but the optimizer has no "
                             f"initial_lr (build the scheduler with last_epoch=-1, then load_state_dict)")
        self.optimizer = optimizer
        self.base_lrs = [float(optimizer.initial_lr)]
        self.last_epoch = int(last_epoch)
        self._step_count = 0
        self._is_initial = True  # PyTorch's _initial_mode: the constructor's step must not advance the lr
        try:
            self.step()
        finally:
            self._is_initial = False
        optimizer._schedulers.append(self)

    def get_lr(self) -> list[float]:
        raise NotImplementedError

    def get_last_lr(self) -> list[float]:
        """The lr set by the latest ``step()`` (a list of one: graphc optimizers have one lr)."""
        return list(self._last_lr)

    def step(self, epoch: int | None = None) -> None:
        """Advance one epoch (or jump to ``epoch``, deprecated in PyTorch, with the closed form) and set the lr."""
        self._step_count += 1
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:
            self.last_epoch = _integer(type(self).__name__, "epoch", epoch, 0)
            closed = getattr(self, "_get_closed_form_lr", None)
            values = closed() if closed is not None else self.get_lr()
        self.optimizer.lr = values[0]
        self._last_lr = [float(self.optimizer.lr)]

    # ---- state --------------------------------------------------------------------------
    def _schema(self) -> dict[str, str]:
        return {"last_epoch": "int", "_step_count": "int", "base_lrs": "float1", "_last_lr": "float1",
                **self._fields}

    def state_dict(self) -> dict:
        """JSON-serialisable state: the type, hyperparameters and position (the optimizer is not included)."""
        state = {"type": type(self).__name__}
        for key, kind in self._schema().items():
            state[key] = self._save_field(key, kind)
        return state

    def _save_field(self, key: str, kind: str):
        value = getattr(self, key)
        if kind == "float":
            return _encode(float(value))
        if kind == "float1":
            return [_encode(float(v)) for v in value]
        return value

    def check_state_dict(self, state) -> None:
        """Raise ValueError naming what is wrong if ``state`` is not a state of this scheduler; changes nothing."""
        name = type(self).__name__
        if not isinstance(state, Mapping):
            raise ValueError(f"{name}.load_state_dict: expected a dict, got {type(state).__name__}")
        if state.get("type", name) != name:
            raise ValueError(f"{name}.load_state_dict: the state is of a {state['type']!r}, not a {name!r}")
        schema = self._schema()
        missing = sorted(set(schema) - set(state))
        unexpected = sorted(set(state) - set(schema) - {"type"})
        if missing or unexpected:
            raise ValueError(f"{name}.load_state_dict: missing keys {missing}, unexpected keys {unexpected}")
        for key, kind in schema.items():
            label, ok = _KINDS[kind]
            if not ok(state[key]):
                raise ValueError(f"{name}.load_state_dict: {key!r} must be {label}, got {state[key]!r:.200}")
        self._check_values(state)

    def _check_values(self, state: Mapping) -> None:
        """Subclass hook: value constraints beyond types."""

    def load_state_dict(self, state: Mapping) -> None:
        """Restore ``state_dict()`` output (validated first). Does not touch ``optimizer.lr``, as in PyTorch."""
        self.check_state_dict(state)
        for key, kind in self._schema().items():
            self._load_field(key, kind, state[key])

    def _load_field(self, key: str, kind: str, value) -> None:
        if kind == "float":
            value = _decode(value)
        elif kind == "float1":
            value = [_decode(v) for v in value]
        elif kind == "ints":
            value = list(value)
        setattr(self, key, value)


class StepLR(LRScheduler):
    """lr = initial_lr * gamma ** (last_epoch // step_size) (torch.optim.lr_scheduler.StepLR)."""

    _fields = {"step_size": "int", "gamma": "float"}

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        self.step_size = _integer("StepLR", "step_size", step_size, 1)
        self.gamma = _number("StepLR", "gamma", gamma, 0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return [self.optimizer.lr]
        return [self.optimizer.lr * self.gamma]

    def _get_closed_form_lr(self) -> list[float]:
        return [self.base_lrs[0] * self.gamma ** (self.last_epoch // self.step_size)]

    def _check_values(self, state):
        _integer("StepLR.load_state_dict", "step_size", state["step_size"], 1)


class MultiStepLR(LRScheduler):
    """lr = initial_lr * gamma ** (number of milestones <= last_epoch) (torch.optim.lr_scheduler.MultiStepLR)."""

    _fields = {"milestones": "ints", "gamma": "float"}

    def __init__(self, optimizer: Optimizer, milestones, gamma: float = 0.1, last_epoch: int = -1):
        try:
            listed = list(milestones)
        except TypeError:
            raise ValueError(f"MultiStepLR: milestones must be a list of integers, got {milestones!r}") from None
        for m in listed:
            _integer("MultiStepLR", "each milestone", m, 0)
        self.milestones = Counter(int(m) for m in listed)
        self.gamma = _number("MultiStepLR", "gamma", gamma, 0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch not in self.milestones:
            return [self.optimizer.lr]
        return [self.optimizer.lr * self.gamma ** self.milestones[self.last_epoch]]

    def _get_closed_form_lr(self) -> list[float]:
        return [self.base_lrs[0] * self.gamma ** bisect_right(sorted(self.milestones.elements()), self.last_epoch)]

    def _save_field(self, key, kind):
        return sorted(self.milestones.elements()) if key == "milestones" else super()._save_field(key, kind)

    def _load_field(self, key, kind, value):
        if key == "milestones":
            self.milestones = Counter(int(m) for m in value)
        else:
            super()._load_field(key, kind, value)


class ExponentialLR(LRScheduler):
    """lr = initial_lr * gamma ** last_epoch (torch.optim.lr_scheduler.ExponentialLR)."""

    _fields = {"gamma": "float"}

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1):
        self.gamma = _number("ExponentialLR", "gamma", gamma, 0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self._is_initial:  # resuming with last_epoch >= 0 must not advance the lr one step ahead
            return [self.optimizer.lr]
        return [self.optimizer.lr * self.gamma]

    def _get_closed_form_lr(self) -> list[float]:
        return [self.base_lrs[0] * self.gamma ** self.last_epoch]


class CosineAnnealingLR(LRScheduler):
    """lr = eta_min + (initial_lr - eta_min) (1 + cos(pi last_epoch / T_max)) / 2, by PyTorch's recurrence
    (torch.optim.lr_scheduler.CosineAnnealingLR; past T_max it rises again, as PyTorch's does)."""

    _fields = {"T_max": "int", "eta_min": "float"}

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        self.T_max = _integer("CosineAnnealingLR", "T_max", T_max, 1)
        self.eta_min = _number("CosineAnnealingLR", "eta_min", eta_min, 0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        lr, base, t = self.optimizer.lr, self.base_lrs[0], self.last_epoch
        if self._is_initial:
            return [lr]
        if self._step_count == 1 and t > 0:
            return [self.eta_min + (base - self.eta_min) * (1 + math.cos(t * math.pi / self.T_max)) / 2]
        if (t - 1 - self.T_max) % (2 * self.T_max) == 0:
            return [lr + (base - self.eta_min) * (1 - math.cos(math.pi / self.T_max)) / 2]
        return [(1 + math.cos(math.pi * t / self.T_max)) / (1 + math.cos(math.pi * (t - 1) / self.T_max))
                * (lr - self.eta_min) + self.eta_min]

    def _get_closed_form_lr(self) -> list[float]:
        return [self.eta_min + (self.base_lrs[0] - self.eta_min)
                * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2]

    def _check_values(self, state):
        _integer("CosineAnnealingLR.load_state_dict", "T_max", state["T_max"], 1)


class LambdaLR(LRScheduler):
    """lr = initial_lr * lr_lambda(last_epoch) (torch.optim.lr_scheduler.LambdaLR).

    ``state_dict`` leaves the function out, as PyTorch does: ``lr_lambdas`` holds ``None`` for a plain
    function, or the ``__dict__`` of a callable object (when JSON-serialisable), restored into it on load.
    """

    _fields = {"lr_lambdas": "any"}

    def __init__(self, optimizer: Optimizer, lr_lambda, last_epoch: int = -1):
        lr_lambda = _one("LambdaLR", "lr_lambda", lr_lambda)
        if not callable(lr_lambda):
            raise ValueError(f"LambdaLR: lr_lambda must be callable (epoch -> factor), got {lr_lambda!r}")
        self.lr_lambdas = [lr_lambda]
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        factor = self.lr_lambdas[0](self.last_epoch)
        return [self.base_lrs[0] * factor]

    def _save_field(self, key, kind):
        if key != "lr_lambdas":
            return super()._save_field(key, kind)
        fn = self.lr_lambdas[0]
        if isinstance(fn, types.FunctionType) or not hasattr(fn, "__dict__"):
            return [None]
        import json
        try:
            json.dumps(fn.__dict__)
        except (TypeError, ValueError):
            return [None]
        return [dict(fn.__dict__)]

    def _check_values(self, state):
        saved = state["lr_lambdas"]
        if not (isinstance(saved, list) and len(saved) == 1 and (saved[0] is None or isinstance(saved[0], Mapping))):
            raise ValueError(f"LambdaLR.load_state_dict: 'lr_lambdas' must be [None] or [dict], got {saved!r:.200}")

    def _load_field(self, key, kind, value):
        if key != "lr_lambdas":
            return super()._load_field(key, kind, value)
        if value[0] is not None:
            self.lr_lambdas[0].__dict__.update(value[0])


class OneCycleLR(LRScheduler):
    """The 1cycle policy (torch.optim.lr_scheduler.OneCycleLR): from max_lr / div_factor up to max_lr over
    ``pct_start`` of ``total_steps``, then down to initial_lr / final_div_factor (cosine or linear); step it
    after every batch.

    Deviations from PyTorch: ``cycle_momentum`` defaults to False and True is refused, because graphc compiles
    momentum and betas into the training-step graph as constants (only the lr is fed per step); the lr
    schedule itself is PyTorch's whatever ``cycle_momentum`` is. A negative lr (only the linear anneal's
    extrapolation at ``last_epoch == total_steps``) is clamped to 0.
    """

    _fields = {"total_steps": "int", "anneal_strategy": "str", "phases": "any", "initial_lr": "float",
               "max_lr": "float", "min_lr": "float"}

    def __init__(self, optimizer: Optimizer, max_lr, total_steps: int | None = None, epochs: int | None = None,
                 steps_per_epoch: int | None = None, pct_start: float = 0.3, anneal_strategy: str = "cos",
                 cycle_momentum: bool = False, base_momentum=0.85, max_momentum=0.95, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False, last_epoch: int = -1):
        owner = "OneCycleLR"
        if total_steps is not None:
            self.total_steps = _integer(owner, "total_steps", total_steps, 1)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = (_integer(owner, "epochs", epochs, 1)
                                * _integer(owner, "steps_per_epoch", steps_per_epoch, 1))
        else:
            raise ValueError(f"{owner}: define either total_steps or (epochs and steps_per_epoch)")
        pct_start = _number(owner, "pct_start", pct_start, 0.0, 1.0)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"{owner}: anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        if cycle_momentum:
            raise ValueError(f"{owner}: cycle_momentum=True is not supported: graphc compiles momentum/betas into "
                             f"the training step as constants; only the lr changes per step (pass "
                             f"cycle_momentum=False; the lr schedule is the same)")
        self.anneal_strategy = anneal_strategy
        max_lr = _number(owner, "max_lr", _one(owner, "max_lr", max_lr), 0.0)
        div_factor = _number(owner, "div_factor", div_factor, 0.0, strict_low=True)
        final_div_factor = _number(owner, "final_div_factor", final_div_factor, 0.0, strict_low=True)
        total = self.total_steps
        if three_phase:
            self.phases = [
                {"end_step": float(pct_start * total) - 1, "start_lr": "initial_lr", "end_lr": "max_lr"},
                {"end_step": float(2 * pct_start * total) - 2, "start_lr": "max_lr", "end_lr": "initial_lr"},
                {"end_step": total - 1, "start_lr": "initial_lr", "end_lr": "min_lr"},
            ]
        else:
            self.phases = [
                {"end_step": float(pct_start * total) - 1, "start_lr": "initial_lr", "end_lr": "max_lr"},
                {"end_step": total - 1, "start_lr": "max_lr", "end_lr": "min_lr"},
            ]
        if last_epoch == -1:  # PyTorch writes these into the param group; graphc keeps them here
            self.initial_lr = max_lr / div_factor
            self.max_lr = max_lr
            self.min_lr = self.initial_lr / final_div_factor
            optimizer.initial_lr = self.initial_lr
        else:
            self.initial_lr = float(getattr(optimizer, "initial_lr", None) or max_lr / div_factor)
            self.max_lr = max_lr
            self.min_lr = self.initial_lr / final_div_factor
        super().__init__(optimizer, last_epoch)

    def _anneal(self, start: float, end: float, pct: float) -> float:
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self) -> list[float]:
        step = self.last_epoch
        if step > self.total_steps:
            raise ValueError(f"OneCycleLR: tried to step {step} times; total_steps is {self.total_steps}")
        start_step = 0.0
        for i, phase in enumerate(self.phases):
            end_step = phase["end_step"]
            if step <= end_step or i == len(self.phases) - 1:
                pct = (step - start_step) / (end_step - start_step)
                lr = self._anneal(getattr(self, phase["start_lr"]), getattr(self, phase["end_lr"]), pct)
                # the step to last_epoch == total_steps (allowed, as in PyTorch) extrapolates past min_lr, and the
                # linear anneal can go below 0 there: PyTorch stores that negative lr, graphc's optimizers refuse it
                return [max(lr, 0.0)]
            start_step = end_step
        raise AssertionError("unreachable: the last phase always matches")

    def _check_values(self, state):
        phases = state["phases"]
        ok = isinstance(phases, list) and phases and all(
            isinstance(p, Mapping) and set(p) == {"end_step", "start_lr", "end_lr"} and _is_float(p["end_step"])
            and p["start_lr"] in ("initial_lr", "max_lr", "min_lr") and p["end_lr"] in ("initial_lr", "max_lr",
                                                                                      "min_lr")
            for p in phases)
        if not ok:
            raise ValueError(f"OneCycleLR.load_state_dict: 'phases' is not a list of schedule phases: {phases!r:.200}")
        if state["anneal_strategy"] not in ("cos", "linear"):
            raise ValueError(f"OneCycleLR.load_state_dict: anneal_strategy must be 'cos' or 'linear', "
                             f"got {state['anneal_strategy']!r}")
        _integer("OneCycleLR.load_state_dict", "total_steps", state["total_steps"], 1)

    def _load_field(self, key, kind, value):
        if key == "phases":
            value = [dict(p) for p in value]
        super()._load_field(key, kind, value)


class ReduceLROnPlateau(LRScheduler):
    """lr *= factor when ``step(metric)`` has not improved for more than ``patience`` epochs
    (torch.optim.lr_scheduler.ReduceLROnPlateau: threshold modes, cooldown, min_lr, eps)."""

    _fields = {"mode": "str", "factor": "float", "patience": "int", "threshold": "float", "threshold_mode": "str",
               "cooldown": "int", "min_lrs": "float1", "eps": "float", "best": "float", "num_bad_epochs": "int",
               "cooldown_counter": "int"}

    def __init__(self, optimizer: Optimizer, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0, min_lr=0.0,
                 eps: float = 1e-8):
        owner = "ReduceLROnPlateau"
        if not isinstance(optimizer, Optimizer):
            raise TypeError(f"{owner}: optimizer must be a gc.optim optimizer, got {type(optimizer).__name__}")
        self.factor = _number(owner, "factor", factor, 0.0, 1.0, strict_high=True)
        if mode not in ("min", "max"):
            raise ValueError(f"{owner}: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"{owner}: threshold_mode must be 'rel' or 'abs', got {threshold_mode!r}")
        self.optimizer = optimizer
        self.mode, self.threshold_mode = mode, threshold_mode
        self.threshold = _number(owner, "threshold", threshold, 0.0)
        self.patience = _integer(owner, "patience", patience, 0)
        self.cooldown = _integer(owner, "cooldown", cooldown, 0)
        self.min_lrs = [_number(owner, "min_lr", _one(owner, "min_lr", min_lr), 0.0)]
        self.eps = _number(owner, "eps", eps, 0.0)
        self.last_epoch = 0
        self._step_count = 0
        self._last_lr = [float(optimizer.lr)]
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        optimizer._schedulers.append(self)

    def _schema(self) -> dict[str, str]:
        return {"last_epoch": "int", "_last_lr": "float1", **self._fields}

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min":
            return a < best * (1.0 - self.threshold) if self.threshold_mode == "rel" else a < best - self.threshold
        return a > best * (self.threshold + 1.0) if self.threshold_mode == "rel" else a > best + self.threshold

    def step(self, metrics, epoch: int | None = None) -> None:
        """Record this epoch's ``metrics`` (a number) and reduce the lr if it has plateaued."""
        try:
            current = float(metrics)
        except (TypeError, ValueError):
            raise ValueError(f"ReduceLROnPlateau.step: metrics must be a number, got {metrics!r}") from None
        self.last_epoch = self.last_epoch + 1 if epoch is None else _integer("ReduceLROnPlateau", "epoch", epoch, 0)
        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # bad epochs during the cooldown do not count
        if self.num_bad_epochs > self.patience:
            old_lr = float(self.optimizer.lr)
            new_lr = max(old_lr * self.factor, self.min_lrs[0])
            if old_lr - new_lr > self.eps:
                self.optimizer.lr = new_lr
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [float(self.optimizer.lr)]

    def _check_values(self, state):
        if state["mode"] not in ("min", "max") or state["threshold_mode"] not in ("rel", "abs"):
            raise ValueError(f"ReduceLROnPlateau.load_state_dict: mode {state['mode']!r} / threshold_mode "
                             f"{state['threshold_mode']!r} must be 'min'|'max' / 'rel'|'abs'")
