"""``gc.optim``: optimizer specifications with ``torch.optim``'s arguments and defaults.

The update math is built into the training-step graph by ``passes/optimizers.py``;
these classes only carry the parameters and hyperparameters. ``lr`` may be
changed between steps (``opt.lr = ...``), as a scheduler would.
"""

from __future__ import annotations

from passes.optimizers import OptimizerConfig


class Optimizer:
    kind = ""

    def __init__(self, params, **hparams):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: the parameter list is empty")
        if hparams.get("lr", 0.0) is not None and hparams.get("lr", 0.0) < 0:
            raise ValueError(f"{type(self).__name__}: invalid learning rate {hparams['lr']}")
        # torch.optim refuses these too: a negative one (or a beta of 1) would train to NaN silently
        for key in ("momentum", "weight_decay", "eps", "alpha", "lr_decay", "initial_accumulator_value"):
            if key in hparams and hparams[key] < 0:
                raise ValueError(f"{type(self).__name__}: invalid {key} value {hparams[key]} (must be >= 0)")
        for index, beta in enumerate(hparams.get("betas", ())):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"{type(self).__name__}: invalid beta parameter at index {index}: {beta} "
                                 f"(must be in [0, 1))")
        self.config = OptimizerConfig(self.kind, hparams)
        self._lr_listeners = []

    @property
    def hparams(self) -> dict:
        return self.config.hparams

    @property
    def lr(self) -> float:
        return self.config.hparams["lr"]

    @lr.setter
    def lr(self, value: float) -> None:
        self.config.hparams["lr"] = float(value)
        for listener in self._lr_listeners:
            listener(float(value))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self.hparams.items())})"


class SGD(Optimizer):
    """torch.optim.SGD(params, lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False)."""
    kind = "sgd"

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("SGD: Nesterov momentum requires a momentum and zero dampening")
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov)


class Adam(Optimizer):
    """torch.optim.Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False)."""
    kind = "adam"

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0,
                 amsgrad: bool = False):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


class AdamW(Optimizer):
    """torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False)."""
    kind = "adamw"

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 amsgrad: bool = False):
        super().__init__(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


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
