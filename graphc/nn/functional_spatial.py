"""Spatial builder ops: conv2d, pooling, batch norm (``torch.nn.functional`` semantics), one block each.

Spatial dims may be symbolic for inference; gradients need static spatial
dims (the batch dim may stay symbolic).
"""

from __future__ import annotations

import math

import numpy as np

from graphc import ops
from graphc.errors import shape_error
from graphc.tensor import Tensor, constant, emit


def _pair(op: str, name: str, value) -> tuple[int, int]:
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, np.integer)) for v in value):
        return int(value[0]), int(value[1])
    raise shape_error(op, f"{name} must be an int or a pair of ints, got {value!r}")


def _out_size(size, kernel: int, stride: int, pad_total: int, dilation: int = 1, ceil: bool = False):
    if not isinstance(size, int):
        return None
    span = size + pad_total - dilation * (kernel - 1) - 1
    out = (math.ceil(span / stride) if ceil else span // stride) + 1
    if ceil and (out - 1) * stride >= size + pad_total // 2:  # PyTorch: the last window must start inside
        out -= 1
    return out


def _check_4d(op: str, x: Tensor) -> None:
    if x.ndim != 4:
        raise shape_error(op, f"expects a 4-D input (N, C, H, W), got {ops.fmt(x.shape)}")


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1) -> Tensor:
    """2-D convolution (ONNX Conv): x (N, C, H, W), weight (O, C/groups, kH, kW), padding int/pair/"same"/"valid".

    >>> import graphc as gc, graphc.nn.functional as F
    >>> w = gc.constant(np.zeros((8, 3, 3, 3), np.float32))
    >>> F.conv2d(gc.input("x", ("batch", 3, 32, 32)), w, padding=1).shape
    ('batch', 8, 32, 32)
    """
    _check_4d("conv2d", x)
    if weight.ndim != 4:
        raise shape_error("conv2d", f"weight must be (O, C/groups, kH, kW), got {ops.fmt(weight.shape)}")
    out_c, in_per_group, kh, kw = weight.shape
    channels = x.shape[1]
    if isinstance(channels, int) and channels != in_per_group * groups:
        raise shape_error("conv2d", f"input has {channels} channels, weight {ops.fmt(weight.shape)} with "
                                    f"groups={groups} expects {in_per_group * groups}")
    if out_c % groups:
        raise shape_error("conv2d", f"out channels {out_c} are not divisible by groups={groups}")
    sh, sw = _pair("conv2d", "stride", stride)
    dh, dw = _pair("conv2d", "dilation", dilation)
    if padding == "valid":
        pads = (0, 0, 0, 0)
    elif padding == "same":
        if (sh, sw) != (1, 1):
            raise shape_error("conv2d", "padding='same' needs stride 1, as in PyTorch")
        th, tw = dh * (kh - 1), dw * (kw - 1)
        pads = (th // 2, tw // 2, th - th // 2, tw - tw // 2)
    else:
        ph, pw = _pair("conv2d", "padding", padding)
        pads = (ph, pw, ph, pw)
    if bias is not None and bias.shape != (out_c,):
        raise shape_error("conv2d", f"bias must be ({out_c},), got {ops.fmt(bias.shape)}")
    oh = _out_size(x.shape[2], kh, sh, pads[0] + pads[2], dh)
    ow = _out_size(x.shape[3], kw, sw, pads[1] + pads[3], dw)
    if (oh is not None and oh <= 0) or (ow is not None and ow <= 0):
        raise shape_error("conv2d", f"kernel {kh}x{kw} does not fit input {ops.fmt(x.shape)} with padding {pads}")
    inputs = [x, weight] + ([bias] if bias is not None else [])
    attrs = {"kernel_shape": [kh, kw], "strides": [sh, sw], "pads": list(pads), "dilations": [dh, dw],
             "group": groups}
    return emit("Conv", inputs, attrs, shape=(x.shape[0], out_c, oh, ow), dtype=x.dtype)


def _pool_args(op: str, kernel_size, stride, padding):
    kh, kw = _pair(op, "kernel_size", kernel_size)
    sh, sw = _pair(op, "stride", stride if stride is not None else (kh, kw))
    ph, pw = _pair(op, "padding", padding)
    if ph > kh // 2 or pw > kw // 2:
        raise shape_error(op, f"padding {(ph, pw)} must be at most half the kernel {(kh, kw)}, as in PyTorch")
    return (kh, kw), (sh, sw), (ph, pw)


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False) -> Tensor:
    """Max pooling (ONNX MaxPool, emitted with its Indices output, which the gradient scatters through)."""
    _check_4d("max_pool2d", x)
    (kh, kw), (sh, sw), (ph, pw) = _pool_args("max_pool2d", kernel_size, stride, padding)
    dh, dw = _pair("max_pool2d", "dilation", dilation)
    oh = _out_size(x.shape[2], kh, sh, 2 * ph, dh, ceil_mode)
    ow = _out_size(x.shape[3], kw, sw, 2 * pw, dw, ceil_mode)
    attrs = {"kernel_shape": [kh, kw], "strides": [sh, sw], "pads": [ph, pw, ph, pw], "dilations": [dh, dw],
             "ceil_mode": int(ceil_mode)}
    shape = (x.shape[0], x.shape[1], oh, ow)
    values, _indices = emit("MaxPool", [x], attrs, shape=shape, dtype=x.dtype, num_outputs=2,
                            extra_outputs=[(shape, np.int64)])
    return values


def avg_pool2d(x: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True) -> Tensor:
    """Average pooling (ONNX AveragePool) with PyTorch's divisor rules for padding and ceil_mode."""
    _check_4d("avg_pool2d", x)
    (kh, kw), (sh, sw), (ph, pw) = _pool_args("avg_pool2d", kernel_size, stride, padding)
    oh = _out_size(x.shape[2], kh, sh, 2 * ph, 1, ceil_mode)
    ow = _out_size(x.shape[3], kw, sw, 2 * pw, 1, ceil_mode)
    attrs = {"kernel_shape": [kh, kw], "strides": [sh, sw], "pads": [ph, pw, ph, pw], "ceil_mode": int(ceil_mode),
             "count_include_pad": int(count_include_pad)}
    return emit("AveragePool", [x], attrs, shape=(x.shape[0], x.shape[1], oh, ow), dtype=x.dtype)


def adaptive_avg_pool2d(x: Tensor, output_size) -> Tensor:
    """Adaptive average pooling; output size 1 (global average) is supported, as a ReduceMean."""
    _check_4d("adaptive_avg_pool2d", x)
    if _pair("adaptive_avg_pool2d", "output_size", output_size) != (1, 1):
        raise shape_error("adaptive_avg_pool2d", f"only output_size 1 is supported, got {output_size!r}")
    return ops.reduce("ReduceMean", x, (2, 3), keepdim=True)


def batch_norm(x: Tensor, running_mean: Tensor | None, running_var: Tensor | None, weight: Tensor | None = None,
               bias: Tensor | None = None, training: bool = False, momentum: float = 0.1,
               eps: float = 1e-5):
    """Batch normalisation over dim 1 of (N, C, ...), as ``torch.nn.functional.batch_norm``.

    Training: batch statistics, written as primitive ops so the gradient comes
    from their rules; returns ``(y, new_running_mean, new_running_var)`` with
    PyTorch's momentum update and unbiased variance (the caller stores them).
    Eval: one ONNX BatchNormalization with the running statistics; returns ``y``.
    """
    if x.ndim < 2:
        raise shape_error("batch_norm", f"expects (N, C, ...), got {ops.fmt(x.shape)}")
    channels = x.shape[1]
    bshape = (channels,) + (1,) * (x.ndim - 2)
    if not training:
        if running_mean is None or running_var is None:
            raise shape_error("batch_norm", "eval mode needs running statistics")
        ones = weight if weight is not None else constant(np.ones(channels), dtype=x.dtype)
        zeros = bias if bias is not None else constant(np.zeros(channels), dtype=x.dtype)
        return emit("BatchNormalization", [x, ones, zeros, running_mean, running_var], {"epsilon": eps},
                    shape=x.shape, dtype=x.dtype)
    axes = (0,) + tuple(range(2, x.ndim))
    dims = [x.shape[a] for a in axes]
    if all(isinstance(d, int) for d in dims) and int(np.prod(dims)) == 1:
        raise shape_error("batch_norm", f"expected more than 1 value per channel when training, got input "
                                        f"{ops.fmt(x.shape)} (as PyTorch)")
    mean = ops.reduce("ReduceMean", x, axes, keepdim=True)
    centered = ops.sub(x, mean)
    var = ops.reduce("ReduceMean", ops.mul(centered, centered), axes, keepdim=True)
    y = ops.mul(centered, ops.unary("Reciprocal", ops.unary("Sqrt", ops.add(var, float(eps)))))
    if weight is not None:
        y = ops.mul(y, ops.reshape(weight, *bshape))
    if bias is not None:
        y = ops.add(y, ops.reshape(bias, *bshape))
    if running_mean is None:
        return y, None, None
    count = _count(x, axes)
    batch_mean = ops.stop_gradient(ops.reshape(mean, channels))
    batch_var = ops.stop_gradient(ops.reshape(var, channels))
    unbiased = ops.mul(batch_var, ops.div(count, ops.sub(count, 1.0)))
    new_mean = ops.add(ops.mul(running_mean, 1.0 - momentum), ops.mul(batch_mean, float(momentum)))
    new_var = ops.add(ops.mul(running_var, 1.0 - momentum), ops.mul(unbiased, float(momentum)))
    return y, new_mean, new_var


def _count(x: Tensor, axes) -> Tensor:
    """How many values each channel's statistics average (static when the dims are)."""
    dims = [x.shape[a] for a in axes]
    if all(isinstance(d, int) for d in dims):
        return constant(float(np.prod(dims)), dtype=x.dtype)
    shape = emit("Shape", [x], shape=(x.ndim,), dtype=np.int64)
    picked = emit("Gather", [shape, constant(np.asarray(list(axes), np.int64))], shape=(len(axes),),
                  dtype=np.int64)
    product = emit("ReduceProd", [picked], {"keepdims": 0}, shape=(), dtype=np.int64)
    return ops.cast(product, x.dtype)
