"""``gc.optim``: optimizer specifications with ``torch.optim``'s arguments and defaults.

Each optimizer is one registered block in ``passes/optimizers.py``: its defaults, its value checks,
its state slots and the update math built into the training-step graph. The classes here are thin
wrappers that keep ``torch.optim``'s signatures (defaults read from that registry, stated once) and
carry the parameters. ``lr`` may be changed between steps (``opt.lr = ...``), as a scheduler would.
"""

from __future__ import annotations

from graphc.nn.parameter import Parameter
from graphc.tensor import Tensor
from passes.optimizers import DEFAULTS, OptimizerConfig, finite_number


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
        self.config = OptimizerConfig(self.kind, hparams)  # the registry's block checks the values
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
        value = finite_number(type(self).__name__, "learning rate", value)  # as the constructor: NaN, inf, < 0
        self.config.hparams["lr"] = value
        for listener in self._lr_listeners:
            listener(value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v}' for k, v in self.hparams.items())})"


def _torch_signature(cls: type) -> type:
    """Document ``cls`` with torch's signature, as the registry states it."""
    defaults = ", ".join(f"{k}={v!r}" for k, v in DEFAULTS[cls.kind].items())
    cls.__doc__ = f"torch.optim.{cls.__name__}(params, {defaults}); update math in passes/optimizers.py."
    return cls


_SGD, _ADAM, _ADAMW, _RMSPROP, _ADAGRAD = (DEFAULTS[k] for k in ("sgd", "adam", "adamw", "rmsprop", "adagrad"))


@_torch_signature
class SGD(Optimizer):
    kind = "sgd"

    def __init__(self, params, lr: float = _SGD["lr"], momentum: float = _SGD["momentum"],
                 dampening: float = _SGD["dampening"], weight_decay: float = _SGD["weight_decay"],
                 nesterov: bool = _SGD["nesterov"]):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov)


@_torch_signature
class Adam(Optimizer):
    kind = "adam"

    def __init__(self, params, lr: float = _ADAM["lr"], betas=_ADAM["betas"], eps: float = _ADAM["eps"],
                 weight_decay: float = _ADAM["weight_decay"], amsgrad: bool = _ADAM["amsgrad"]):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


@_torch_signature
class AdamW(Optimizer):
    kind = "adamw"

    def __init__(self, params, lr: float = _ADAMW["lr"], betas=_ADAMW["betas"], eps: float = _ADAMW["eps"],
                 weight_decay: float = _ADAMW["weight_decay"], amsgrad: bool = _ADAMW["amsgrad"]):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad)


@_torch_signature
class RMSprop(Optimizer):
    kind = "rmsprop"

    def __init__(self, params, lr: float = _RMSPROP["lr"], alpha: float = _RMSPROP["alpha"],
                 eps: float = _RMSPROP["eps"], weight_decay: float = _RMSPROP["weight_decay"],
                 momentum: float = _RMSPROP["momentum"], centered: bool = _RMSPROP["centered"]):
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
                         centered=centered)


@_torch_signature
class Adagrad(Optimizer):
    kind = "adagrad"

    def __init__(self, params, lr: float = _ADAGRAD["lr"], lr_decay: float = _ADAGRAD["lr_decay"],
                 weight_decay: float = _ADAGRAD["weight_decay"],
                 initial_accumulator_value: float = _ADAGRAD["initial_accumulator_value"],
                 eps: float = _ADAGRAD["eps"]):
        super().__init__(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps)


# gc.optim.lr_scheduler, as torch.optim.lr_scheduler (imported last: it subclasses nothing here but checks Optimizer)
from graphc import lr_scheduler  # noqa: E402
