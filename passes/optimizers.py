"""Optimizer updates as graph pieces, with ``torch.optim``'s exact semantics and defaults.

Each optimizer is one block: its state slots (name, initial value) and its
update ``(p, g, state, scalars) -> (p', state')``, written with ``ai.onnx``
element-wise ops. Step-dependent scalars (bias corrections, decayed learning
rates) are computed once per step in :class:`StepScalars` and shared by
every parameter.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from passes.emitter import Emitter

DEFAULTS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": 1e-3, "momentum": 0.0, "dampening": 0.0, "nesterov": False, "weight_decay": 0.0},
    "adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False},
    "adamw": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2, "amsgrad": False},
    "rmsprop": {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0, "momentum": 0.0, "centered": False},
    "adagrad": {"lr": 1e-2, "lr_decay": 0.0, "weight_decay": 0.0, "initial_accumulator_value": 0.0, "eps": 1e-10},
}


@dataclass
class OptimizerConfig:
    """Which optimizer and its hyperparameters (``lr`` is fed per step, so it may change)."""

    kind: str
    hparams: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.kind not in DEFAULTS:
            raise ValueError(f"unknown optimizer {self.kind!r}; known: {sorted(DEFAULTS)}")
        unknown = set(self.hparams) - set(DEFAULTS[self.kind])
        if unknown:
            raise ValueError(f"{self.kind}: unknown hyperparameters {sorted(unknown)}")
        self.hparams = {**DEFAULTS[self.kind], **self.hparams}


class StepScalars:
    """Per-step scalars shared by all parameters, computed in float64 as torch.optim does in Python.

    ``lr`` comes in as a float64 input and ``t`` (steps including this one) is cast to float64; derived
    scalars (bias corrections, decayed learning rates) are computed in float64 and cast once to the
    parameters' dtype, so float32 (and float16) updates see the same scalars PyTorch's do.
    """

    def __init__(self, e: Emitter, steps_after: ir.Value, lr: ir.Value, dtype: ir.DataType):
        self.e = e
        self.dtype = dtype
        self.lr64 = lr
        self.t64 = e.op("Cast", [steps_after], {"to": ir.DataType.DOUBLE})
        self._cache: dict[str, ir.Value] = {}

    def c(self, value: float) -> ir.Value:
        """A constant of the parameters' dtype."""
        return self.e.const(np.asarray(value, dtype=self.dtype.numpy()))

    def d(self, value: float) -> ir.Value:
        """A float64 constant, for scalar arithmetic."""
        return self.e.const(np.asarray(value, dtype=np.float64))

    def scalar(self, key: str, build64: Callable[[], ir.Value]) -> ir.Value:
        """A per-step scalar computed in float64 by ``build64`` and cast to the parameters' dtype, once."""
        if key not in self._cache:
            self._cache[key] = self.e.op("Cast", [build64()], {"to": self.dtype})
        return self._cache[key]

    @property
    def lr(self) -> ir.Value:
        return self.scalar("lr", lambda: self.lr64)

    def one_minus_pow(self, base: float) -> ir.Value:
        """1 - base ** t in float64 (Adam's bias corrections)."""
        return self.e.op("Sub", [self.d(1.0), self.e.op("Pow", [self.d(base), self.t64])])


Update = tuple[ir.Value, dict[str, ir.Value]]


def _axpy(e: Emitter, s: StepScalars, a: float, x: ir.Value, b: float, y: ir.Value) -> ir.Value:
    """a * x + b * y with float constants."""
    return e.op("Add", [e.op("Mul", [x, s.c(a)]), e.op("Mul", [y, s.c(b)])])


def _with_weight_decay(e: Emitter, s: StepScalars, p: ir.Value, g: ir.Value, wd: float) -> ir.Value:
    return g if not wd else e.op("Add", [g, e.op("Mul", [p, s.c(wd)])])


def sgd_slots(hp) -> dict[str, float]:
    return {"momentum_buffer": 0.0} if hp["momentum"] else {}


def sgd_update(e: Emitter, s: StepScalars, p, g, state, hp) -> Update:
    """torch.optim.SGD: g += wd p; buf = mu buf + (1 - dampening) g (buf = g at step 1);
    g = g + mu buf (nesterov) or buf; p -= lr g."""
    g = _with_weight_decay(e, s, p, g, hp["weight_decay"])
    new_state = {}
    mu = hp["momentum"]
    if mu:
        buf = state["momentum_buffer"]
        if hp["dampening"]:
            blended = _axpy(e, s, mu, buf, 1.0 - hp["dampening"], g)
            first = e.op("Equal", [s.t64, s.d(1.0)])
            buf = e.op("Where", [first, g, blended])
        else:  # buf starts at zero, so mu * 0 + g is already torch's first-step value
            buf = e.op("Add", [e.op("Mul", [buf, s.c(mu)]), g])
        new_state["momentum_buffer"] = buf
        g = e.op("Add", [g, e.op("Mul", [buf, s.c(mu)])]) if hp["nesterov"] else buf
    return e.op("Sub", [p, e.op("Mul", [g, s.lr])]), new_state


def adam_slots(hp) -> dict[str, float]:
    slots = {"exp_avg": 0.0, "exp_avg_sq": 0.0}
    if hp["amsgrad"]:
        slots["max_exp_avg_sq"] = 0.0
    return slots


def adam_update(e: Emitter, s: StepScalars, p, g, state, hp, decoupled: bool = False) -> Update:
    """torch.optim.Adam / AdamW: m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    p -= lr / (1-b1^t) * m / (sqrt(v) / sqrt(1-b2^t) + eps); AdamW first does p *= 1 - lr wd,
    Adam instead adds wd p to g; amsgrad uses the running max of v."""
    b1, b2 = hp["betas"]
    wd = hp["weight_decay"]
    if decoupled and wd:
        p = e.op("Mul", [p, s.scalar("1-lr*wd", lambda: e.op("Sub", [s.d(1.0), e.op("Mul", [s.lr64, s.d(wd)])]))])
    elif not decoupled:
        g = _with_weight_decay(e, s, p, g, wd)
    m = _axpy(e, s, b1, state["exp_avg"], 1.0 - b1, g)
    v = _axpy(e, s, b2, state["exp_avg_sq"], 1.0 - b2, e.op("Mul", [g, g]))
    new_state = {"exp_avg": m, "exp_avg_sq": v}
    if hp["amsgrad"]:
        v = e.op("Max", [state["max_exp_avg_sq"], v])
        new_state["max_exp_avg_sq"] = v
    step_size = s.scalar(f"lr/(1-{b1}^t)", lambda: e.op("Div", [s.lr64, s.one_minus_pow(b1)]))
    bc2_sqrt = s.scalar(f"sqrt(1-{b2}^t)", lambda: e.op("Sqrt", [s.one_minus_pow(b2)]))
    denom = e.op("Add", [e.op("Div", [e.op("Sqrt", [v]), bc2_sqrt]), s.c(hp["eps"])])
    return e.op("Sub", [p, e.op("Mul", [e.op("Div", [m, denom]), step_size])]), new_state


def adamw_update(e: Emitter, s: StepScalars, p, g, state, hp) -> Update:
    return adam_update(e, s, p, g, state, hp, decoupled=True)


def rmsprop_slots(hp) -> dict[str, float]:
    slots = {"square_avg": 0.0}
    if hp["momentum"]:
        slots["momentum_buffer"] = 0.0
    if hp["centered"]:
        slots["grad_avg"] = 0.0
    return slots


def rmsprop_update(e: Emitter, s: StepScalars, p, g, state, hp) -> Update:
    """torch.optim.RMSprop: g += wd p; sq = a sq + (1-a) g^2; avg = sqrt(sq - ga^2 if centered else sq) + eps;
    with momentum buf = mu buf + g / avg, p -= lr buf; else p -= lr g / avg."""
    alpha = hp["alpha"]
    g = _with_weight_decay(e, s, p, g, hp["weight_decay"])
    sq = _axpy(e, s, alpha, state["square_avg"], 1.0 - alpha, e.op("Mul", [g, g]))
    new_state = {"square_avg": sq}
    if hp["centered"]:
        ga = _axpy(e, s, alpha, state["grad_avg"], 1.0 - alpha, g)
        new_state["grad_avg"] = ga
        sq = e.op("Sub", [sq, e.op("Mul", [ga, ga])])
    avg = e.op("Add", [e.op("Sqrt", [sq]), s.c(hp["eps"])])
    direction = e.op("Div", [g, avg])
    if hp["momentum"]:
        direction = e.op("Add", [e.op("Mul", [state["momentum_buffer"], s.c(hp["momentum"])]), direction])
        new_state["momentum_buffer"] = direction
    return e.op("Sub", [p, e.op("Mul", [direction, s.lr])]), new_state


def adagrad_slots(hp) -> dict[str, float]:
    return {"sum": float(hp["initial_accumulator_value"])}


def adagrad_update(e: Emitter, s: StepScalars, p, g, state, hp) -> Update:
    """torch.optim.Adagrad: g += wd p; clr = lr / (1 + (t-1) lr_decay); sum += g^2; p -= clr g / (sqrt(sum) + eps)."""
    g = _with_weight_decay(e, s, p, g, hp["weight_decay"])
    clr = s.lr
    if hp["lr_decay"]:
        clr = s.scalar("adagrad_clr", lambda: e.op("Div", [s.lr64, e.op("Add", [
            s.d(1.0), e.op("Mul", [e.op("Sub", [s.t64, s.d(1.0)]), s.d(hp["lr_decay"])])])]))
    total = e.op("Add", [state["sum"], e.op("Mul", [g, g])])
    std = e.op("Add", [e.op("Sqrt", [total]), s.c(hp["eps"])])
    return e.op("Sub", [p, e.op("Mul", [e.op("Div", [g, std]), clr])]), {"sum": total}


OPTIMIZERS: dict[str, tuple[Callable, Callable]] = {
    "sgd": (sgd_slots, sgd_update),
    "adam": (adam_slots, adam_update),
    "adamw": (adam_slots, adamw_update),
    "rmsprop": (rmsprop_slots, rmsprop_update),
    "adagrad": (adagrad_slots, adagrad_update),
}
