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


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)


class Conv2d(Module):
    """2-D convolution; weight (out, in/groups, kH, kW) and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros"):
        super().__init__()
        if padding_mode != "zeros":
            raise ValueError(f"Conv2d: padding_mode {padding_mode!r} is not supported (only 'zeros')")
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: channels ({in_channels}, {out_channels}) must be divisible by groups={groups}")
        kh, kw = _pair(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, (kh, kw)
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups
        fan_in = in_channels // groups * kh * kw
        bound = 1.0 / math.sqrt(fan_in)
        self.weight = Parameter(_random.uniform(bound, (out_channels, in_channels // groups, kh, kw)))
        self.bias = Parameter(_random.uniform(bound, (out_channels,))) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}")


class MaxPool2d(Module):
    """Max pooling over kernel_size windows (stride defaults to kernel_size)."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode

    def forward(self, x: Tensor) -> Tensor:
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)


class AvgPool2d(Module):
    """Average pooling over kernel_size windows (stride defaults to kernel_size)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False, count_include_pad: bool = True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, self.ceil_mode, self.count_include_pad)


class AdaptiveAvgPool2d(Module):
    """Adaptive average pooling; output size 1 (global average pooling)."""

    def __init__(self, output_size):
        super().__init__()
        self.output_size = output_size

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(x, self.output_size)


class _BatchNorm(Module):
    """Batch normalisation over channel dim 1; running statistics are buffers updated in training mode."""

    expected_ranks: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True):
        super().__init__()
        if momentum is None:
            raise ValueError(f"{type(self).__name__}: momentum=None (cumulative average) is not supported")
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        self.weight = Parameter(np.ones(num_features, np.float32)) if affine else None
        self.bias = Parameter(np.zeros(num_features, np.float32)) if affine else None
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


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of (N, C, H, W) inputs."""
    expected_ranks = (4,)


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) inputs."""
    expected_ranks = (2, 3)


class Embedding(Module):
    """A lookup table: weight (num_embeddings, embedding_dim) ~ N(0, 1); ``padding_idx`` rows get no gradient."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None):
        super().__init__()
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        if padding_idx is not None and padding_idx < 0:
            padding_idx += num_embeddings
        self.padding_idx = padding_idx
        weight = _random.generator().standard_normal((num_embeddings, embedding_dim)).astype(np.float32)
        if padding_idx is not None:
            weight[padding_idx] = 0.0
        self.weight = Parameter(weight)

    def forward(self, indices: Tensor) -> Tensor:
        return F.embedding(indices, self.weight, self.padding_idx)


class LayerNorm(Module):
    """Layer normalisation over the last dims (``normalized_shape``); weight ones, bias zeros."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True):
        super().__init__()
        shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
        self.normalized_shape, self.eps = shape, eps
        self.weight = Parameter(np.ones(shape, np.float32)) if elementwise_affine else None
        self.bias = Parameter(np.zeros(shape, np.float32)) if elementwise_affine and bias else None

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
