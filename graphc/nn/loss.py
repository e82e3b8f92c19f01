"""Loss modules, as ``torch.nn``'s: each holds its arguments and calls the ``graphc.nn.functional`` loss.

Constructor arguments and defaults are PyTorch's, including the deprecated
``size_average``/``reduce`` flags. Class weights and ``pos_weight`` are
buffers (``criterion.weight`` in ``state_dict``, as in PyTorch), given as a
numpy array, a list or a torch tensor; they are cast to the input's dtype.

    >>> import graphc as gc
    >>> from graphc import nn
    >>> logits, y = gc.input("z", ("batch", 10)), gc.input("y", ("batch",), "int64")
    >>> nn.CrossEntropyLoss(label_smoothing=0.1)(logits, y).shape
    ()
"""

from __future__ import annotations

import numpy as np

from graphc import ops
from graphc.nn import functional as F
from graphc.nn.module import Module, _to_numpy
from graphc.tensor import Tensor

__all__ = ["L1Loss", "MSELoss", "NLLLoss", "CrossEntropyLoss", "BCELoss", "BCEWithLogitsLoss"]


class _Loss(Module):
    def __init__(self, size_average=None, reduce=None, reduction: str = "mean"):
        super().__init__()
        reduction = F.legacy_reduction(size_average, reduce, reduction)
        if reduction not in F._REDUCTIONS:
            raise ValueError(f"{type(self).__name__}: reduction must be one of {F._REDUCTIONS}, got {reduction!r}")
        self.reduction = reduction

    def _buffer(self, name: str, value, one_dim: bool) -> None:
        """Register ``value`` (array-like or Tensor) as the buffer ``name``; None stays None (as PyTorch)."""
        if value is None or isinstance(value, Tensor):
            object.__setattr__(self, name, value)
            return
        array = _to_numpy(value)
        if array.dtype.kind not in "biuf" or not np.all(np.isfinite(array)):
            raise ValueError(f"{type(self).__name__}: {name} must hold finite numbers, got {array!r:.200}")
        if one_dim and array.ndim != 1:
            raise ValueError(f"{type(self).__name__}: {name} must be 1-D (one value per class), "
                             f"got shape {array.shape}")
        # float32, the dtype torch.tensor([...]) gives; forward casts it to the input's dtype
        self.register_buffer(name, array.astype(np.float32))

    def _like(self, name: str, input: Tensor) -> Tensor | None:
        """The buffer ``name`` in ``input``'s dtype (a float64 model with float32 class weights)."""
        value = getattr(self, name)
        if value is None or value.dtype == input.dtype:
            return value
        return ops.cast(value, input.dtype)


class L1Loss(_Loss):
    """torch.nn.L1Loss(size_average=None, reduce=None, reduction="mean"): reduce(|input - target|)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.l1_loss(input, target, reduction=self.reduction)


class MSELoss(_Loss):
    """torch.nn.MSELoss(size_average=None, reduce=None, reduction="mean"): reduce((input - target) ** 2)."""

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(input, target, reduction=self.reduction)


class NLLLoss(_Loss):
    """torch.nn.NLLLoss(weight=None, size_average=None, ignore_index=-100, reduce=None, reduction="mean"):
    log-probabilities (N, C, ...) against class indices (N, ...)."""

    def __init__(self, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean"):
        super().__init__(size_average, reduce, reduction)
        self._buffer("weight", weight, one_dim=True)
        self.ignore_index = int(ignore_index)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.nll_loss(input, target, self._like("weight", input), self.ignore_index, self.reduction)


class CrossEntropyLoss(_Loss):
    """torch.nn.CrossEntropyLoss(weight=None, size_average=None, ignore_index=-100, reduce=None,
    reduction="mean", label_smoothing=0.0): logits (N, C, ...) against class indices or probabilities."""

    def __init__(self, weight=None, size_average=None, ignore_index: int = -100, reduce=None,
                 reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__(size_average, reduce, reduction)
        self._buffer("weight", weight, one_dim=True)
        self.ignore_index = int(ignore_index)
        if not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.cross_entropy(input, target, self._like("weight", input), self.ignore_index, self.reduction,
                               self.label_smoothing)


class BCELoss(_Loss):
    """torch.nn.BCELoss(weight=None, size_average=None, reduce=None, reduction="mean"): probabilities in
    [0, 1] against targets in [0, 1]; ``weight`` broadcasts against the elements."""

    def __init__(self, weight=None, size_average=None, reduce=None, reduction: str = "mean"):
        super().__init__(size_average, reduce, reduction)
        self._buffer("weight", weight, one_dim=False)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy(input, target, self._like("weight", input), reduction=self.reduction)


class BCEWithLogitsLoss(_Loss):
    """torch.nn.BCEWithLogitsLoss(weight=None, size_average=None, reduce=None, reduction="mean",
    pos_weight=None): sigmoid + BCE in one stable expression; ``pos_weight`` (C,) weighs positives per class."""

    def __init__(self, weight=None, size_average=None, reduce=None, reduction: str = "mean", pos_weight=None):
        super().__init__(size_average, reduce, reduction)
        self._buffer("weight", weight, one_dim=False)
        self._buffer("pos_weight", pos_weight, one_dim=False)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return F.binary_cross_entropy_with_logits(input, target, self._like("weight", input),
                                                  reduction=self.reduction,
                                                  pos_weight=self._like("pos_weight", input))
