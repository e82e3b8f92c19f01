"""Convolution, pooling and normalisation layers, with PyTorch's arguments, names and initialisation."""

from __future__ import annotations

import math

import numpy as np

from graphc import ops
from graphc import random as _random
from graphc.nn import functional as F
from graphc.nn.module import Module
from graphc.nn.parameter import Parameter
from graphc.state import record_state_update
from graphc.tensor import Tensor


def _ntuple(value, n: int) -> tuple[int, ...]:
    return (value,) * n if isinstance(value, int) else tuple(value)


def _pair(value) -> tuple[int, int]:
    return _ntuple(value, 2)


class _ConvNd(Module):
    """Shared by Conv1d/Conv2d/ConvTranspose2d: PyTorch's checks, names and kaiming-uniform(a=sqrt(5)) init.

    torch draws U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias, fan_in being
    weight.shape[1] * prod(kernel): (in/groups) * k for a conv, (out/groups) * k for a transposed one.
    """

    nd = 2
    transposed = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride, padding, dilation, groups: int,
                 bias: bool, padding_mode: str):
        super().__init__()
        name = type(self).__name__
        if padding_mode != "zeros":
            raise ValueError(f"{name}: padding_mode {padding_mode!r} is not supported (only 'zeros')")
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"{name}: groups must be a positive integer, got {groups!r}")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{name}: channels ({in_channels}, {out_channels}) must be divisible by "
                             f"groups={groups}")
        kernel = _ntuple(kernel_size, self.nd)
        if len(kernel) != self.nd:
            raise ValueError(f"{name}: kernel_size must be an int or {self.nd} ints, got {kernel_size!r}")
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        self.padding_mode = padding_mode
        shape = ((in_channels, out_channels // groups) if self.transposed
                 else (out_channels, in_channels // groups)) + kernel
        bound = 1.0 / math.sqrt(shape[1] * math.prod(kernel))
        self.weight = Parameter(_random.uniform(bound, shape))
        self.bias = Parameter(_random.uniform(bound, (out_channels,))) if bias else None

    def extra_repr(self) -> str:
        """torch's ``_ConvNd.extra_repr``: tuples, and only the arguments that differ from their defaults."""
        def tup(value):
            return value if isinstance(value, str) else _ntuple(value, self.nd)
        zeros, ones = (0,) * self.nd, (1,) * self.nd
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={tup(self.stride)}")
        if tup(self.padding) != zeros:
            text += f", padding={tup(self.padding)}"
        if tup(self.dilation) != ones:
            text += f", dilation={tup(self.dilation)}"
        if self.transposed and tup(getattr(self, "output_padding", 0)) != zeros:
            text += f", output_padding={tup(self.output_padding)}"
        if self.groups != 1:
            text += f", groups={self.groups}"
        if self.bias is None:
            text += ", bias=False"
        return text


class Conv1d(_ConvNd):
    """1-D convolution of (N, C, L); weight (out, in/groups, k), bias (out,).

    >>> from graphc import nn
    >>> [(n, p.shape) for n, p in nn.Conv1d(4, 8, 3).named_parameters()]
    [('weight', (8, 4, 3)), ('bias', (8,))]
    """

    nd = 1

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv1d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Conv2d(_ConvNd):
    """2-D convolution; weight (out, in/groups, kH, kW) and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


class ConvTranspose2d(_ConvNd):
    """Transposed 2-D convolution; weight (in, out/groups, kH, kW), bias (out,), as in PyTorch.

    ``forward(x, output_size)`` picks the output_padding that gives that size (PyTorch's rule).

    >>> from graphc import nn
    >>> [(n, p.shape) for n, p in nn.ConvTranspose2d(8, 4, 2, stride=2).named_parameters()]
    [('weight', (8, 4, 2, 2)), ('bias', (4,))]
    """

    transposed = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, output_padding=0,
                 groups: int = 1, bias: bool = True, dilation=1, padding_mode: str = "zeros"):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode)
        self.output_padding = output_padding

    def forward(self, x: Tensor, output_size=None) -> Tensor:
        extra = self.output_padding if output_size is None else self._output_padding(x, output_size)
        return F.conv_transpose2d(x, self.weight, self.bias, self.stride, self.padding, extra, self.groups,
                                  self.dilation)

    def _output_padding(self, x: Tensor, output_size) -> tuple[int, int]:
        sizes = list(output_size)[-2:]
        if len(sizes) != 2 or not all(isinstance(s, int) for s in sizes):
            raise ValueError(f"ConvTranspose2d: output_size must end in 2 ints, got {output_size!r}")
        extra = []
        for i, size in enumerate(sizes):
            in_size = x.shape[2 + i] if x.ndim == 4 else None
            if not isinstance(in_size, int):
                raise ValueError(f"ConvTranspose2d: output_size needs static spatial dims, got input {x.shape}")
            s, p, d = _pair(self.stride)[i], _pair(self.padding)[i], _pair(self.dilation)[i]
            smallest = (in_size - 1) * s - 2 * p + d * (self.kernel_size[i] - 1) + 1
            if not smallest <= size <= smallest + s - 1:
                raise ValueError(f"ConvTranspose2d: requested an output size of {tuple(sizes)}, but valid sizes "
                                 f"of dim {i + 2} range from {smallest} to {smallest + s - 1} (for an input of "
                                 f"{tuple(x.shape[2:])})")
            extra.append(size - smallest)
        return tuple(extra)


class Upsample(Module):
    """Resizes (N, C, ...) inputs by ``size`` or ``scale_factor`` (see ``F.interpolate`` for the modes).

    >>> import graphc as gc
    >>> from graphc import nn
    >>> nn.Upsample(scale_factor=2, mode="nearest")(gc.input("x", ("batch", 3, 4, 4))).shape
    ('batch', 3, 8, 8)
    """

    def __init__(self, size=None, scale_factor=None, mode: str = "nearest", align_corners: bool | None = None,
                 recompute_scale_factor: bool | None = None):
        super().__init__()
        self.size = size
        if isinstance(scale_factor, (tuple, list)):
            scale_factor = tuple(float(f) for f in scale_factor)
        self.scale_factor = float(scale_factor) if isinstance(scale_factor, (int, float)) else scale_factor
        self.mode, self.align_corners, self.recompute_scale_factor = mode, align_corners, recompute_scale_factor

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, self.size, self.scale_factor, self.mode, self.align_corners,
                             self.recompute_scale_factor)

    def extra_repr(self) -> str:
        what = f"scale_factor={self.scale_factor}" if self.scale_factor is not None else f"size={self.size}"
        return f"{what}, mode={self.mode!r}"


class UpsamplingNearest2d(Upsample):
    """``Upsample(mode="nearest")`` of (N, C, H, W) inputs."""

    def __init__(self, size=None, scale_factor=None):
        super().__init__(size, scale_factor, mode="nearest")


class UpsamplingBilinear2d(Upsample):
    """``Upsample(mode="bilinear", align_corners=True)`` of (N, C, H, W) inputs, as in PyTorch."""

    def __init__(self, size=None, scale_factor=None):
        super().__init__(size, scale_factor, mode="bilinear", align_corners=True)


class MaxPool2d(Module):
    """Max pooling over kernel_size windows (stride defaults to kernel_size)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False):
        super().__init__()
        stride = kernel_size if stride is None else stride  # stored resolved, as torch does (and prints)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, ceil_mode={self.ceil_mode}")


class AvgPool2d(Module):
    """Average pooling over kernel_size windows (stride defaults to kernel_size)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True):
        super().__init__()
        stride = kernel_size if stride is None else stride  # stored resolved, as torch does (and prints)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Module):
    """Adaptive average pooling; output size 1 (global average pooling)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


class _BatchNorm(Module):
    """Batch normalisation over channel dim 1; running statistics are buffers updated in training mode."""

    expected_ranks: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True, *, bias: bool = True):
        super().__init__()
        if momentum is None:
            raise ValueError(f"{type(self).__name__}: momentum=None (cumulative average) is not supported")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = Parameter(np.ones(num_features, np.float32)) if affine else None
        self.bias = Parameter(np.zeros(num_features, np.float32)) if affine and bias else None
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, np.float32))
            self.register_buffer("running_var", np.ones(num_features, np.float32))
            self.register_buffer("num_batches_tracked", np.zeros((), np.int64))

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim not in self.expected_ranks:
            raise ValueError(f"{type(self).__name__} expects a rank in {self.expected_ranks}, got shape {x.shape}")
        if isinstance(x.shape[1], int) and x.shape[1] != self.num_features:
            raise ValueError(f"{type(self).__name__}({self.num_features}) got {x.shape[1]} channels")
        use_batch_stats = self.training or not self.track_running_stats
        stats = (self.running_mean, self.running_var) if self.track_running_stats else (None, None)
        if not use_batch_stats:
            return F.batch_norm(x, *stats, self.weight, self.bias, False, self.momentum, self.eps)
        y, new_mean, new_var = F.batch_norm(x, *stats, self.weight, self.bias, True, self.momentum, self.eps)
        if self.training and self.track_running_stats:
            record_state_update(self.running_mean, new_mean, anchor=y)
            record_state_update(self.running_var, new_var, anchor=y)
            record_state_update(self.num_batches_tracked, ops.add(self.num_batches_tracked, 1), anchor=y)
        return y

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.affine}, "
                f"bias={self.bias is not None}, track_running_stats={self.track_running_stats}")


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) inputs."""
    expected_ranks = (4,)


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) inputs."""
    expected_ranks = (2, 3)


class Embedding(Module):
    """A lookup table: weight (num_embeddings, embedding_dim) ~ N(0, 1).

    ``padding_idx``: that row starts at zero and gets no gradient (it is never updated), as in PyTorch;
    a loaded non-zero row is still returned as is. ``sparse`` only changes PyTorch's gradient storage,
    so it is accepted; ``max_norm`` and ``scale_grad_by_freq`` are refused.

    >>> from graphc import nn
    >>> nn.Embedding(10, 3, padding_idx=0).state_dict()["weight"][0].tolist()
    [0.0, 0.0, 0.0]
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None,
                 max_norm: float | None = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                 sparse: bool = False, _weight=None, _freeze: bool = False):
        super().__init__()
        if max_norm is not None:
            raise ValueError(f"Embedding: max_norm={max_norm!r} (renormalising rows in place) is not supported")
        if scale_grad_by_freq:
            raise ValueError("Embedding: scale_grad_by_freq=True is not supported")
        if padding_idx is not None:
            if not isinstance(padding_idx, int) or not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"Embedding: padding_idx must be within num_embeddings "
                                 f"[{-num_embeddings}, {num_embeddings}), got {padding_idx!r}")
            if padding_idx < 0:
                padding_idx += num_embeddings
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx, self.sparse = padding_idx, sparse
        if _weight is not None:
            weight = np.asarray(_weight, dtype=np.float32)
            if weight.shape != (num_embeddings, embedding_dim):
                raise ValueError(f"Embedding: _weight must be ({num_embeddings}, {embedding_dim}), "
                                 f"got {weight.shape}")
        else:
            weight = _random.generator().standard_normal((num_embeddings, embedding_dim)).astype(np.float32)
            if padding_idx is not None:
                weight[padding_idx] = 0.0
        self.weight = Parameter(weight, requires_grad=not _freeze)

    @classmethod
    def from_pretrained(cls, embeddings, freeze: bool = True, padding_idx: int | None = None,
                        max_norm: float | None = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
                        sparse: bool = False) -> "Embedding":
        """An Embedding holding ``embeddings`` (a 2-D array) as is; frozen by default, as in PyTorch."""
        weight = np.asarray(embeddings)
        if weight.ndim != 2:
            raise ValueError(f"Embedding.from_pretrained: embeddings must be 2-D, got shape {weight.shape}")
        return cls(weight.shape[0], weight.shape[1], padding_idx, max_norm, norm_type, scale_grad_by_freq, sparse,
                   _weight=weight, _freeze=freeze)

    def forward(self, indices: Tensor) -> Tensor:
        return F.embedding(indices, self.weight, self.padding_idx)

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


class LayerNorm(Module):
    """Layer normalisation over the last dims (``normalized_shape``); weight ones, bias zeros."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps, self.elementwise_affine = shape, eps, elementwise_affine
        self.weight = Parameter(np.ones(shape, np.float32)) if elementwise_affine else None
        self.bias = Parameter(np.zeros(shape, np.float32)) if elementwise_affine and bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}, "
                f"bias={self.bias is not None}")
