"""``gc.optim``: optimizer specifications with ``torch.optim``'s arguments and defaults.

The update math is built into the training-step graph by ``passes/optimizers.py``;
these classes only carry the parameters and hyperparameters. ``lr`` may be
changed between steps (``opt.lr = ...``), as a scheduler would.
"""

from __future__ import annotations

import math

import numpy as np

from graphc.nn.parameter import Parameter
from graphc.tensor import Tensor
from passes.optimizers import OptimizerConfig


def _finite_number(owner: str, what: str, value, minimum: float | None = 0.0) -> float:
    """``value`` as a float, refusing strings, NaN, infinities and values below ``minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{owner}: {what} must be a number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value) or (minimum is not None and value < minimum):
        bound = f" and >= {minimum:g}" if minimum is not None else ""
        raise ValueError(f"{owner}: invalid {what} {value} (must be finite{bound})")
    return value


class Optimizer:
    kind = ""

    def __init__(self, params, **hparams):
        if isinstance(params, Tensor):
            params = [params]
        try:
            self.params = list(params)
        except TypeError:
            raise TypeError(f"{type(self).__name__}: params must be an iterable of parameters "
                            f"(model.parameters()), got {type(params).__name__}") from None
        if not self.params:
            raise ValueError(f"{type(self).__name__}: the parameter list is empty")
        for index, param in enumerate(self.params):
            if not isinstance(param, Parameter):
                raise TypeError(f"{type(self).__name__}: params[{index}] is a {type(param).__name__}, expected a "
                                f"graphc Parameter (pass model.parameters())")
        owner = type(self).__name__
        hparams["lr"] = _finite_number(owner, "learning rate", hparams["lr"])
        # torch.optim refuses these too: a negative one (or a beta of 1) would train to NaN silently
        for key in ("momentum", "weight_decay", "eps", "alpha", "lr_decay", "initial_accumulator_value", "dampening"):
            if key in hparams:
                hparams[key] = _finite_number(owner, f"{key} value", hparams[key],
                                              minimum=None if key == "dampening" else 0.0)
        for key in ("nesterov", "amsgrad", "centered"):
            if key in hparams and not isinstance(hparams[key], (bool, np.bool_)):
                raise TypeError(f"{owner}: {key} must be True or False, got {hparams[key]!r}")
        if "betas" in hparams:
            betas = hparams["betas"]
            if not isinstance(betas, (tuple, list)) or len(betas) != 2:
                raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
            hparams["betas"] = tuple(_finite_number(owner, f"beta parameter at index {i}", b)
                                     for i, b in enumerate(betas))
            for index, beta in enumerate(hparams["betas"]):
                if not 0.0 <= beta < 1.0:
                    raise ValueError(f"{owner}: invalid beta parameter at index {index}: {beta} (must be in [0, 1))")
        self.config = OptimizerConfig(self.kind, hparams)
        self._lr_listeners = []
        self._schedulers = []  # lr schedulers attached to this optimizer (saved in Trainer checkpoints)

    @property
    def hparams(self) -> dict:
        return self.config.hparams

    @property
    def lr(self) -> float:
        return self.config.hparams["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        value = _finite_number(type(self).__name__, "learning rate", value)  # as the constructor: NaN, inf, < 0
        self.config.hparams["lr"] = value
        for listener in self._lr_listeners:
            listener(value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self.hparams.items())})"


class SGD(Optimizer):
    """torch.optim.SGD(params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False)."""
    kind = "sgd"

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov)
        if nesterov and (self.hparams["momentum"] <= 0 or self.hparams["dampening"] != 0):
            raise ValueError("SGD: Nesterov momentum requires a momentum and zero dampening")


class Adam(Optimizer):
    """torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False)."""
    kind = "adam"

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 amsgrad: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


class AdamW(Optimizer):
    """torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False)."""
    kind = "adamw"

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 amsgrad: bool = False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


class RMSprop(Optimizer):
    """torch.optim.RMSprop(params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0, centered=False)."""
    kind = "rmsprop"

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False):
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                         centered=centered)


class Adagrad(Optimizer):
    """torch.optim.Adagrad(params, lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0, eps=1e-10)."""
    kind = "adagrad"

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0.0, weight_decay: float = 0.0,
                 initial_accumulator_value: float = 0.0, eps: float = 1e-10):
        super().__init__(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps)


# gc.optim.lr_scheduler, as torch.optim.lr_scheduler (imported last: it subclasses nothing here but checks Optimizer)
from graphc import lr_scheduler  # noqa: E402
