"""Spatial builder ops: conv2d, pooling, batch norm (``torch.nn.functional`` semantics), one block each.

Spatial dims may be symbolic for inference; gradients need static spatial
dims (the batch dim may stay symbolic).
"""

from __future__ import annotations

import math

import numpy as np
import onnx_ir as ir

from graphc import ops
from graphc.dtypes import to_numpy_dtype
from graphc.errors import shape_error
from graphc.tensor import Tensor, constant, emit


def _ntuple(op: str, name: str, value, n: int) -> tuple[int, ...]:
    """An int, or a sequence of ``n`` ints, as a tuple of ``n`` ints (PyTorch's ``_single``/``_pair``)."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return (int(value),) * n
    if isinstance(value, (tuple, list)) and len(value) == n and all(isinstance(v, (int, np.integer)) for v in value):
        return tuple(int(v) for v in value)
    kind = "an int" if n == 1 else f"an int or a sequence of {n} ints"
    raise shape_error(op, f"{name} must be {kind}, got {value!r}")


def _pair(op: str, name: str, value) -> tuple[int, int]:
    return _ntuple(op, name, value, 2)


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


_LAYOUTS = {1: ("(N, C, L)", "(O, C/groups, k)"), 2: ("(N, C, H, W)", "(O, C/groups, kH, kW)")}


def _conv(op: str, nd: int, x: Tensor, weight: Tensor, bias, stride, padding, dilation, groups: int) -> Tensor:
    """ONNX Conv over ``nd`` spatial dims with PyTorch's argument rules (shared by conv1d and conv2d)."""
    x_layout, w_layout = _LAYOUTS[nd]
    if x.ndim != nd + 2:
        raise shape_error(op, f"expects a {nd + 2}-D input {x_layout}, got {ops.fmt(x.shape)}")
    if weight.ndim != nd + 2:
        raise shape_error(op, f"weight must be {w_layout}, got {ops.fmt(weight.shape)}")
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise shape_error(op, f"groups must be a positive int, got {groups!r}")
    out_c, in_per_group, kernel = weight.shape[0], weight.shape[1], tuple(weight.shape[2:])
    channels = x.shape[1]
    if isinstance(channels, int) and channels != in_per_group * groups:
        raise shape_error(op, f"input has {channels} channels, weight {ops.fmt(weight.shape)} with "
                              f"groups={groups} expects {in_per_group * groups}")
    if out_c % groups:
        raise shape_error(op, f"out channels {out_c} are not divisible by groups={groups}")
    strides = _ntuple(op, "stride", stride, nd)
    dilations = _ntuple(op, "dilation", dilation, nd)
    if padding == "valid":
        begin = end = (0,) * nd
    elif padding == "same":
        if any(s != 1 for s in strides):
            raise shape_error(op, "padding='same' needs stride 1, as in PyTorch")
        total = [d * (k - 1) for d, k in zip(dilations, kernel)]
        begin, end = tuple(t // 2 for t in total), tuple(t - t // 2 for t in total)
    else:
        begin = end = _ntuple(op, "padding", padding, nd)
    if bias is not None and bias.shape != (out_c,):
        raise shape_error(op, f"bias must be ({out_c},), got {ops.fmt(bias.shape)}")
    spatial = tuple(_out_size(x.shape[2 + i], kernel[i], strides[i], begin[i] + end[i], dilations[i])
                    for i in range(nd))
    if any(o is not None and o <= 0 for o in spatial):
        raise shape_error(op, f"kernel {ops.fmt(kernel)} does not fit input {ops.fmt(x.shape)} with padding "
                              f"{begin + end}")
    inputs = [x, weight] + ([bias] if bias is not None else [])
    attrs = {"kernel_shape": list(kernel), "strides": list(strides), "pads": list(begin + end),
             "dilations": list(dilations), "group": int(groups)}
    return emit("Conv", inputs, attrs, shape=(x.shape[0], out_c) + spatial, dtype=x.dtype)


def conv1d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1) -> Tensor:
    """1-D convolution (ONNX Conv): x (N, C, L), weight (O, C/groups, k), padding int/"same"/"valid".

    >>> import graphc as gc, graphc.nn.functional as F
    >>> w = gc.constant(np.zeros((8, 3, 5), np.float32))
    >>> F.conv1d(gc.input("x", ("batch", 3, 100)), w, stride=2).shape
    ('batch', 8, 48)
    """
    return _conv("conv1d", 1, x, weight, bias, stride, padding, dilation, groups)


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0, dilation=1,
           groups: int = 1) -> Tensor:
    """2-D convolution (ONNX Conv): x (N, C, H, W), weight (O, C/groups, kH, kW), padding int/pair/"same"/"valid".

    >>> import graphc as gc, graphc.nn.functional as F
    >>> w = gc.constant(np.zeros((8, 3, 3, 3), np.float32))
    >>> F.conv2d(gc.input("x", ("batch", 3, 32, 32)), w, padding=1).shape
    ('batch', 8, 32, 32)
    """
    return _conv("conv2d", 2, x, weight, bias, stride, padding, dilation, groups)


def conv_transpose2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
                     output_padding=0, groups: int = 1, dilation=1) -> Tensor:
    """Transposed 2-D convolution (ONNX ConvTranspose), the gradient of conv2d w.r.t. its input.

    x (N, C, H, W), weight (C, O/groups, kH, kW) as in PyTorch; output size per spatial dim
    (in - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1.

    >>> import graphc as gc, graphc.nn.functional as F
    >>> w = gc.constant(np.zeros((8, 4, 4, 4), np.float32))
    >>> F.conv_transpose2d(gc.input("x", ("batch", 8, 16, 16)), w, stride=2, padding=1).shape
    ('batch', 4, 32, 32)
    """
    op = "conv_transpose2d"
    _check_4d(op, x)
    if weight.ndim != 4:
        raise shape_error(op, f"weight must be (C, O/groups, kH, kW), got {ops.fmt(weight.shape)}")
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise shape_error(op, f"groups must be a positive int, got {groups!r}")
    in_c, out_per_group, kh, kw = weight.shape
    if isinstance(x.shape[1], int) and x.shape[1] != in_c:
        raise shape_error(op, f"input has {x.shape[1]} channels, weight {ops.fmt(weight.shape)} expects {in_c}")
    if in_c % groups:
        raise shape_error(op, f"in channels {in_c} are not divisible by groups={groups}")
    strides = _pair(op, "stride", stride)
    pads = _pair(op, "padding", padding)
    extra = _pair(op, "output_padding", output_padding)
    dilations = _pair(op, "dilation", dilation)
    for e, s, d in zip(extra, strides, dilations):
        if not 0 <= e < max(s, d):
            raise shape_error(op, f"output_padding {extra} must be smaller than either stride {strides} or "
                                  f"dilation {dilations}, as in PyTorch")
    if min(strides + dilations) < 1 or min(pads) < 0:
        raise shape_error(op, f"stride and dilation must be >= 1 and padding >= 0, got stride {strides}, "
                              f"dilation {dilations}, padding {pads}")
    out_c = out_per_group * groups
    if bias is not None and bias.shape != (out_c,):
        raise shape_error(op, f"bias must be ({out_c},), got {ops.fmt(bias.shape)}")
    spatial = []
    for size, k, s, p, e, d in zip(x.shape[2:], (kh, kw), strides, pads, extra, dilations):
        out = (size - 1) * s - 2 * p + d * (k - 1) + e + 1 if isinstance(size, int) else None
        if out is not None and out <= 0:
            raise shape_error(op, f"input {ops.fmt(x.shape)} with padding {pads} gives an empty output")
        spatial.append(out)
    inputs = [x, weight] + ([bias] if bias is not None else [])
    attrs = {"kernel_shape": [kh, kw], "strides": list(strides), "pads": list(pads + pads),
             "dilations": list(dilations), "group": int(groups), "output_padding": list(extra)}
    return emit("ConvTranspose", inputs, attrs, shape=(x.shape[0], out_c, *spatial), dtype=x.dtype)


def _pool_args(op: str, kernel_size, stride, padding):
    kh, kw = _pair(op, "kernel_size", kernel_size)
    sh, sw = _pair(op, "stride", stride if stride is not None else (kh, kw))
    ph, pw = _pair(op, "padding", padding)
    if ph > kh // 2 or pw > kw // 2:
        raise shape_error(op, f"padding {(ph, pw)} must be at most half the kernel {(kh, kw)}, as in PyTorch")
    return (kh, kw), (sh, sw), (ph, pw)


def max_pool2d(x: Tensor, kernel_size, stride=None, padding=0, dilation=1, ceil_mode: bool = False) -> Tensor:
    """Max pooling (ONNX MaxPool with its Indices output; the gradient rule picks a mask, MaxUnpool or a scatter
    by window shape, see docs/gradient-lowerings.md, and drops Indices where it does not need them)."""
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

    Training: one ONNX BatchNormalization with ``training_mode=1`` (batch
    statistics, read back from its momentum-0 running outputs; its gradient is the closed-form rule in
    ``passes/autodiff/rules/batch_norm_training.py``); returns
    ``(y, new_running_mean, new_running_var)`` with PyTorch's momentum update
    and unbiased variance (the caller stores them).
    Eval: one ONNX BatchNormalization with the running statistics; returns ``y``.
    """
    if x.ndim < 2:
        raise shape_error("batch_norm", f"expects (N, C, ...), got {ops.fmt(x.shape)}")
    channels = x.shape[1]
    ones = weight if weight is not None else _per_channel(x, 1.0)
    zeros = bias if bias is not None else _per_channel(x, 0.0)
    if not training:
        if running_mean is None or running_var is None:
            raise shape_error("batch_norm", "eval mode needs running statistics")
        return emit("BatchNormalization", [x, ones, zeros, running_mean, running_var], {"epsilon": eps},
                    shape=x.shape, dtype=x.dtype)
    axes = (0,) + tuple(range(2, x.ndim))
    dims = [x.shape[a] for a in axes]
    if all(isinstance(d, int) for d in dims) and int(np.prod(dims)) == 1:
        raise shape_error("batch_norm", f"expected more than 1 value per channel when training, got input "
                                        f"{ops.fmt(x.shape)} (as PyTorch)")
    # momentum 0: the node's "running" outputs are this batch's mean and biased variance (ONNX:
    # input * momentum + batch statistic * (1 - momentum)), so the running update below and the gradient
    # rule read them instead of recomputing them (three passes over x fewer per layer). ONNX Runtime's CPU
    # kernel writes its running outputs into its running INPUTS in place (measured: a fed array, an
    # initializer, changed by the call), so those inputs are scratch values that nothing else reads.
    scratch = ops.mul(ops.reshape(_first_per_channel(x), -1), 0.0)
    y, batch_mean, batch_var = emit("BatchNormalization", [x, ones, zeros, scratch, ops.add(scratch, 1.0)],
                                    {"epsilon": eps, "momentum": 0.0, "training_mode": 1}, shape=x.shape,
                                    dtype=x.dtype, num_outputs=3, extra_outputs=[((channels,), x.dtype)] * 2)
    if running_mean is None:
        return y, None, None
    count = _count(x, axes)
    batch_mean, batch_var = ops.stop_gradient(batch_mean), ops.stop_gradient(batch_var)
    unbiased = ops.mul(batch_var, ops.div(count, ops.sub(count, 1.0)))  # PyTorch keeps the unbiased variance
    new_mean = ops.add(ops.mul(running_mean, 1.0 - momentum), ops.mul(batch_mean, float(momentum)))
    new_var = ops.add(ops.mul(running_var, 1.0 - momentum), ops.mul(unbiased, float(momentum)))
    return y, new_mean, new_var


def _per_channel(x: Tensor, value: float) -> Tensor:
    """A constant (C,) tensor of ``value`` in ``x``'s dtype (C = dim 1, read at run time when symbolic)."""
    if isinstance(x.shape[1], int):
        return constant(np.full(x.shape[1], value), dtype=x.dtype)
    # ConstantOfShape, not arithmetic on _first_per_channel: CSE would merge it with the scratch inputs
    # that ONNX Runtime writes in place (measured: wrong y with a symbolic C and no weight).
    dim = emit("Shape", [x], {"start": 1, "end": 2}, shape=(1,), dtype=np.int64)
    fill = ir.Tensor(np.asarray([value], dtype=to_numpy_dtype(x.dtype)))
    return emit("ConstantOfShape", [dim], {"value": fill}, shape=(x.shape[1],), dtype=x.dtype)


def _first_per_channel(x: Tensor) -> Tensor:
    """x[:1, :, :1, ...]: one value per channel, computed at run time (never folded to a constant)."""
    others = [0] + list(range(2, x.ndim))
    ones = np.ones(len(others), np.int64)
    return emit("Slice", [x, constant(np.zeros(len(others), np.int64)), constant(ones),
                          constant(np.asarray(others, np.int64))],
                shape=(1, x.shape[1]) + (1,) * (x.ndim - 2), dtype=x.dtype)


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


_INTERPOLATE_MODES = {"nearest": None, "nearest-exact": None, "linear": 1, "bilinear": 2}


def interpolate(x: Tensor, size=None, scale_factor=None, mode: str = "nearest", align_corners: bool | None = None,
                recompute_scale_factor: bool | None = None, antialias: bool = False) -> Tensor:
    """Resize the spatial dims of (N, C, ...) ``x`` (ONNX Resize), as ``torch.nn.functional.interpolate``.

    Modes: ``nearest`` (PyTorch's: floor of dst * in / out; Resize asymmetric + floor), ``nearest-exact``
    (half_pixel + round_prefer_ceil), ``linear`` for (N, C, L) and ``bilinear`` for (N, C, H, W)
    (half_pixel, or align_corners). Give ``size`` or ``scale_factor``: the output size is
    floor(in * scale_factor) and the coordinates use 1 / scale_factor, as in PyTorch (unless
    ``recompute_scale_factor``, which resizes to that size with in / out).

    >>> import graphc as gc, graphc.nn.functional as F
    >>> F.interpolate(gc.input("x", ("batch", 3, 8, 8)), scale_factor=2, mode="bilinear").shape
    ('batch', 3, 16, 16)
    """
    op = "interpolate"
    if mode not in _INTERPOLATE_MODES:
        raise shape_error(op, f"mode must be one of {sorted(_INTERPOLATE_MODES)}, got {mode!r}")
    nd = x.ndim - 2
    if nd < 1:
        raise shape_error(op, f"expects (N, C, ...) with at least one spatial dim, got {ops.fmt(x.shape)}")
    wanted = _INTERPOLATE_MODES[mode]
    if wanted is not None and nd != wanted:
        raise shape_error(op, f"mode {mode!r} needs a {wanted + 2}-D input, got {ops.fmt(x.shape)}")
    if align_corners is not None and wanted is None:
        raise shape_error(op, "align_corners option can only be set with the interpolating modes: linear | "
                              f"bilinear (got mode {mode!r}), as in PyTorch")
    if antialias:
        raise shape_error(op, "antialias=True is not supported")
    if (size is None) == (scale_factor is None):
        raise shape_error(op, f"give exactly one of size and scale_factor, got size={size!r}, "
                              f"scale_factor={scale_factor!r}")
    if size is not None and recompute_scale_factor:
        raise shape_error(op, "recompute_scale_factor is not meaningful with an explicit size, as in PyTorch")
    in_sizes = x.shape[2:]
    axes = list(range(2, x.ndim))
    if size is not None:
        sizes = _ntuple(op, "size", size, nd)
        if min(sizes) < 1:
            raise shape_error(op, f"size must be positive, got {size!r}")
        resize_input = ("sizes", sizes)
    else:
        factors = _scale_factors(op, scale_factor, nd)
        sizes = tuple(math.floor(d * f) if isinstance(d, int) else None for d, f in zip(in_sizes, factors))
        if any(s is not None and s < 1 for s in sizes):
            raise shape_error(op, f"scale_factor {scale_factor!r} makes input {ops.fmt(x.shape)} empty")
        # ONNX Runtime sizes the output as floor(float32(scale) * in); where that rounds differently
        # (rare), or when asked to recompute the scale, pass the sizes themselves. align_corners too:
        # with scales, ONNX's reference maps by the fractional length in * scale, ONNX Runtime and
        # PyTorch by the integer one (onnx/onnx#2462); with sizes every runtime agrees.
        float32_sizes = tuple(math.floor(float(np.float32(f) * np.float32(d))) if isinstance(d, int) else None
                              for d, f in zip(in_sizes, factors))
        if (recompute_scale_factor or align_corners or float32_sizes != sizes) and None not in sizes:
            resize_input = ("sizes", sizes)
        else:
            resize_input = ("scales", factors)
    attrs = {"axes": axes, "mode": "nearest" if wanted is None else "linear"}
    if mode == "nearest":
        attrs.update(coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    elif mode == "nearest-exact":
        attrs.update(coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_ceil")
    else:
        attrs["coordinate_transformation_mode"] = "align_corners" if align_corners else "half_pixel"
    kind, values = resize_input
    if kind == "sizes":
        inputs = [x, None, None, constant(np.asarray(values, np.int64))]
    else:
        inputs = [x, None, constant(np.asarray(values, np.float32))]
    return emit("Resize", inputs, attrs, shape=tuple(x.shape[:2]) + tuple(sizes), dtype=x.dtype)


def _scale_factors(op: str, scale_factor, nd: int) -> tuple[float, ...]:
    if isinstance(scale_factor, (int, float, np.integer, np.floating)) and not isinstance(scale_factor, bool):
        factors = (float(scale_factor),) * nd
    elif isinstance(scale_factor, (tuple, list)) and len(scale_factor) == nd and \
            all(isinstance(f, (int, float, np.integer, np.floating)) for f in scale_factor):
        factors = tuple(float(f) for f in scale_factor)
    else:
        raise shape_error(op, f"scale_factor must be a number or a sequence of {nd} numbers, got {scale_factor!r}")
    if min(factors) <= 0 or not all(math.isfinite(f) for f in factors):
        raise shape_error(op, f"scale_factor must be positive and finite, got {scale_factor!r}")
    return factors
