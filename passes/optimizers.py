"""Optimizer updates as graph pieces, with ``torch.optim``'s exact semantics and defaults.

The registry ``OPTIMIZERS`` holds one block per optimizer, registered with
``@register_optimizer(kind, torch_name, **defaults)``: ``torch.optim``'s defaults in
its signature order (stated here once: ``gc.optim``'s classes take theirs from
``DEFAULTS``), ``check`` (the argument checks about values, as ``torch.optim``
refuses them), ``slots`` (state slot name -> initial value) and ``update``
``(e, s, p, g, state, hp) -> (p', state')``, written with ``ai.onnx`` element-wise
ops. Step-dependent scalars (bias corrections, decayed learning rates) are
computed once per step in :class:`StepScalars` and shared by every parameter.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx_ir as ir

from passes.emitter import Emitter

Update = tuple[ir.Value, dict[str, ir.Value]]


@dataclass(frozen=True)
class OptimizerSpec:
    """One registered optimizer (see the module docstring)."""

    kind: str
    torch_name: str
    defaults: Mapping[str, Any]
    check: Callable[[str, dict[str, Any]], None]
    slots: Callable[[Mapping[str, Any]], dict[str, float]]
    update: Callable[..., Update]


OPTIMIZERS: dict[str, OptimizerSpec] = {}
DEFAULTS: dict[str, Mapping[str, Any]] = {}  # kind -> torch.optim's defaults (read-only views of the registry)


def register_optimizer(kind: str, torch_name: str, **defaults):
    """Register the decorated block (a class with static ``check``, ``slots`` and ``update``) as ``kind``."""
    def register(block: type) -> type:
        if kind in OPTIMIZERS:
            raise ValueError(f"optimizer {kind!r} is registered twice")
        spec = OptimizerSpec(kind, torch_name, MappingProxyType(dict(defaults)), block.check, block.slots,
                             block.update)
        OPTIMIZERS[kind] = spec
        DEFAULTS[kind] = spec.defaults
        return block
    return register


# ---- value checks shared by the blocks ------------------------------------------------------------------
def finite_number(owner: str, what: str, value, minimum: float | None = 0.0) -> float:
    """``value`` as a float, refusing strings, NaN, infinities and values below ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{owner}: {what} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        bound = f" and >= {minimum:g}" if minimum is not None else ""
        raise ValueError(f"{owner}: invalid {what} {value} (must be finite{bound})")
    return value


def _numbers(owner: str, hp: dict, *keys: str, minimum: float | None = 0.0) -> None:
    # torch.optim refuses these too: a negative one would train to NaN silently
    for key in keys:
        hp[key] = finite_number(owner, f"{key} value", hp[key], minimum=minimum)


def _flags(owner: str, hp: dict, *keys: str) -> None:
    for key in keys:
        if not isinstance(hp[key], (bool, np.bool_)):
            raise TypeError(f"{owner}: {key} must be True or False, got {hp[key]!r}")


def _betas(owner: str, hp: dict) -> None:
    betas = hp["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
    hp["betas"] = tuple(finite_number(owner, f"beta parameter at index {i}", b) for i, b in enumerate(betas))
    for index, beta in enumerate(hp["betas"]):
        if not 0.0 <= beta < 1.0:  # a beta of 1 never forgets the first step: NaN-free but wrong
            raise ValueError(f"{owner}: invalid beta parameter at index {index}: {beta} (must be in [0, 1))")


@dataclass
class OptimizerConfig:
    """Which optimizer and its hyperparameters (``lr`` is fed per step, so it may change).

    Missing hyperparameters take the registry's defaults; every value is checked (and numbers made
    floats) by the optimizer's block, so a bad value fails here, naming the optimizer.
    """

    kind: str
    hparams: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        spec = OPTIMIZERS.get(self.kind)
        if spec is None:
            raise ValueError(f"unknown optimizer {self.kind!r}; known: {sorted(OPTIMIZERS)}")
        unknown = set(self.hparams) - set(spec.defaults)
        if unknown:
            raise ValueError(f"{self.kind}: unknown hyperparameters {sorted(unknown)}")
        hp = {**spec.defaults, **self.hparams}
        hp["lr"] = finite_number(spec.torch_name, "learning rate", hp["lr"])
        spec.check(spec.torch_name, hp)
        self.hparams = hp

    @property
    def spec(self) -> OptimizerSpec:
        return OPTIMIZERS[self.kind]


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


def _axpy(e: Emitter, s: StepScalars, a: float, x: ir.Value, b: float, y: ir.Value) -> ir.Value:
    """a * x + b * y with float constants."""
    return e.op("Add", [e.op("Mul", [x, s.c(a)]), e.op("Mul", [y, s.c(b)])])


def _with_weight_decay(e: Emitter, s: StepScalars, p: ir.Value, g: ir.Value, wd: float) -> ir.Value:
    return g if not wd else e.op("Add", [g, e.op("Mul", [p, s.c(wd)])])


# ---- the optimizers, one block each -------------------------------------------------------------------
@register_optimizer("sgd", "SGD", lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False)
class SGDUpdate:
    """torch.optim.SGD: g += wd p; buf = mu buf + (1 - dampening) g (buf = g at step 1);
    g = g + mu buf (nesterov) or buf; p -= lr g."""

    @staticmethod
    def check(owner: str, hp: dict) -> None:
        _numbers(owner, hp, "momentum", "weight_decay")
        _numbers(owner, hp, "dampening", minimum=None)
        _flags(owner, hp, "nesterov")
        if hp["nesterov"] and (hp["momentum"] <= 0 or hp["dampening"] != 0):
            raise ValueError(f"{owner}: Nesterov momentum requires a momentum and zero dampening")

    @staticmethod
    def slots(hp) -> dict[str, float]:
        return {"momentum_buffer": 0.0} if hp["momentum"] else {}

    @staticmethod
    def update(e: Emitter, s: StepScalars, p, g, state, hp) -> Update:
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


@register_optimizer("adam", "Adam", lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False)
class AdamUpdate:
    """torch.optim.Adam: g += wd p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
    p -= lr / (1-b1^t) * m / (sqrt(v) / sqrt(1-b2^t) + eps); amsgrad uses the running max of v.
    Emitted as p -= (lr sqrt(1-b2^t) / (1-b1^t)) * m / (sqrt(v) + eps sqrt(1-b2^t)): equal, a pass fewer."""


    @staticmethod
    def check(owner: str, hp: dict) -> None:
        _numbers(owner, hp, "weight_decay", "eps")
        _flags(owner, hp, "amsgrad")
        _betas(owner, hp)

    @staticmethod
    def slots(hp) -> dict[str, float]:
        slots = {"exp_avg": 0.0, "exp_avg_sq": 0.0}
        if hp["amsgrad"]:
            slots["max_exp_avg_sq"] = 0.0
        return slots

    @staticmethod
    def update(e: Emitter, s: StepScalars, p, g, state, hp, decoupled: bool = False) -> Update:
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
        def sqrt_bc2():
            return e.op("Sqrt", [s.one_minus_pow(b2)])  # emitted twice; CSE merges the copies
        if s.dtype in (ir.DataType.FLOAT, ir.DataType.DOUBLE):
            # torch's denom sqrt(v) / sqrt(bc2) + eps, times sqrt(bc2): sqrt(v) + eps sqrt(bc2), with sqrt(bc2)
            # moved into the per-step scalar lr sqrt(bc2) / bc1. Algebraically equal, one full element-wise pass
            # fewer per parameter (docs/performance.md, "The MLP step: Adam's passes ..."); scalars in float64.
            step_size = s.scalar(f"lr*sqrt(1-{b2}^t)/(1-{b1}^t)", lambda: e.op("Div", [
                e.op("Mul", [s.lr64, sqrt_bc2()]), s.one_minus_pow(b1)]))
            eps = s.scalar(f"{hp['eps']}*sqrt(1-{b2}^t)", lambda: e.op("Mul", [s.d(hp["eps"]), sqrt_bc2()]))
            denom = e.op("Add", [e.op("Sqrt", [v]), eps])
        else:  # half precision: eps * sqrt(bc2) would underflow to 0 where torch's own eps does not
            step_size = s.scalar(f"lr/(1-{b1}^t)", lambda: e.op("Div", [s.lr64, s.one_minus_pow(b1)]))
            denom = e.op("Add", [e.op("Div", [e.op("Sqrt", [v]), s.scalar(f"sqrt(1-{b2}^t)", sqrt_bc2)]),
                                 s.c(hp["eps"])])
        return e.op("Sub", [p, e.op("Mul", [e.op("Div", [m, denom]), step_size])]), new_state


@register_optimizer("adamw", "AdamW", lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False)
class AdamWUpdate:
    """torch.optim.AdamW: Adam's update, but p *= 1 - lr wd first instead of adding wd p to g."""

    check = staticmethod(AdamUpdate.check)
    slots = staticmethod(AdamUpdate.slots)

    @staticmethod
    def update(e: Emitter, s: StepScalars, p, g, state, hp) -> Update:
        return AdamUpdate.update(e, s, p, g, state, hp, decoupled=True)


@register_optimizer("rmsprop", "RMSprop", lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                    centered=False)
class RMSpropUpdate:
    """torch.optim.RMSprop: g += wd p; sq = a sq + (1-a) g^2; avg = sqrt(sq - ga^2 if centered else sq) + eps;
    with momentum buf = mu buf + g / avg, p -= lr buf; else p -= lr g / avg."""

    @staticmethod
    def check(owner: str, hp: dict) -> None:
        _numbers(owner, hp, "momentum", "weight_decay", "eps", "alpha")
        _flags(owner, hp, "centered")

    @staticmethod
    def slots(hp) -> dict[str, float]:
        slots = {"square_avg": 0.0}
        if hp["momentum"]:
            slots["momentum_buffer"] = 0.0
        if hp["centered"]:
            slots["grad_avg"] = 0.0
        return slots

    @staticmethod
    def update(e: Emitter, s: StepScalars, p, g, state, hp) -> Update:
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


@register_optimizer("adagrad", "Adagrad", lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                    eps=1e-10)
class AdagradUpdate:
    """torch.optim.Adagrad: g += wd p; clr = lr / (1 + (t-1) lr_decay); sum += g^2; p -= clr g / (sqrt(sum) + eps)."""

    @staticmethod
    def check(owner: str, hp: dict) -> None:
        _numbers(owner, hp, "weight_decay", "eps", "lr_decay", "initial_accumulator_value")

    @staticmethod
    def slots(hp) -> dict[str, float]:
        return {"sum": float(hp["initial_accumulator_value"])}

    @staticmethod
    def update(e: Emitter, s: StepScalars, p, g, state, hp) -> Update:
        g = _with_weight_decay(e, s, p, g, hp["weight_decay"])
        clr = s.lr
        if hp["lr_decay"]:
            clr = s.scalar("adagrad_clr", lambda: e.op("Div", [s.lr64, e.op("Add", [
                s.d(1.0), e.op("Mul", [e.op("Sub", [s.t64, s.d(1.0)]), s.d(hp["lr_decay"])])])]))
        total = e.op("Add", [state["sum"], e.op("Mul", [g, g])])
        std = e.op("Add", [e.op("Sqrt", [total]), s.c(hp["eps"])])
        return e.op("Sub", [p, e.op("Mul", [e.op("Div", [g, std]), clr])]), {"sum": total}
