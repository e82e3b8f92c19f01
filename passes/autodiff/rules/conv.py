"""VJP rules of the spatial ops: Conv, ConvTranspose, MaxPool, AveragePool, BatchNormalization (inference form).

Lowerings were chosen by measurement (benchmarks/probes/conv_dw_lowerings.py,
32->64 3x3 on 16x16, batch 64, ONNX Runtime CPU): the weight gradient as
patches (a one-hot depthwise Conv, i.e. im2col) + batched MatMul + ReduceSum
over the batch ran 12 ms, against 54 ms for a Conv over the batch-transposed
input and 33 ms for the patches laid out for a single Gemm.
"""

from __future__ import annotations

import numpy as np

from passes.autodiff.helpers import static_dims, zeros_like
from passes.autodiff.registry import VJPContext, register_vjp


def _spatial(ctx: VJPContext, name: str, default):
    value = ctx.attr(name)
    return list(value) if value is not None else list(default)


def _static_spatial(ctx: VJPContext, value, op: str) -> list[int]:
    """The static spatial dims of an (N, C, ...) value; the batch and channel dims may be symbolic."""
    dims = static_dims(value)
    if dims is None or len(dims) < 3 or not all(isinstance(d, int) for d in dims[2:]):
        raise NotImplementedError(f"the gradient of {op} needs static spatial dims, got {value.shape}")
    return list(dims[2:])


def _static_hw(ctx: VJPContext, value, op: str) -> tuple[int, int]:
    dims = _static_spatial(ctx, value, op)
    if len(dims) != 2:
        raise NotImplementedError(f"the gradient of {op} is implemented for 2-D pooling, got {value.shape}")
    return dims[0], dims[1]


def _no_auto_pad(ctx: VJPContext, op: str) -> None:
    if ctx.attr("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        raise NotImplementedError(f"the gradient of {op} with auto_pad is not implemented; use explicit pads")


def _transpose_pads(size, out, kernel, stride, dilation, begin, end) -> tuple[int, int]:
    """Pads for a ConvTranspose that maps ``out`` positions back onto exactly ``size`` inputs.

    The forward may have ignored trailing inputs (stride remainder) or read
    past the end (ceil_mode); the end pad absorbs either difference.
    """
    full = stride * (out - 1) + dilation * (kernel - 1) + 1
    return begin, full - begin - size


def _conv_transpose(ctx: VJPContext, g, weight, x_sp, out_sp, kernel, strides, dilations, pads, group):
    """ConvTranspose of ``g`` landing on the input's spatial size, with extra end pads where needed."""
    nd = len(x_sp)
    t_pads, extra = [], []
    for axis in range(nd):
        begin, end = _transpose_pads(x_sp[axis], out_sp[axis], kernel[axis], strides[axis], dilations[axis],
                                     pads[axis], pads[axis + nd])
        t_pads.append(begin)
        extra.append(end)
    attrs = {"strides": strides, "dilations": dilations, "group": group, "kernel_shape": kernel}
    if min(extra) < 0:  # the forward ignored trailing inputs: pad the result with zeros there
        attrs["pads"] = t_pads + [max(e, 0) for e in extra]
        dx = ctx.op("ConvTranspose", [g, weight], attrs)
        grow = ctx.e.ints([0] * (nd + 2) + [0, 0] + [max(-e, 0) for e in extra])
        return ctx.op("Pad", [dx, grow])
    attrs["pads"] = t_pads + extra
    return ctx.op("ConvTranspose", [g, weight], attrs)


def _conv_weight_grad(ctx: VJPContext, x, g, w, strides, dilations, pads, group):
    """dw of y = Conv(x, w): the sum over the batch of g's correlation with x's patches.

    Patches + MatMul by default; a transposed-batch Conv for ungrouped kernels with more taps than
    output channels (see ``_weight_grad_by_transposed_batch``).
    """
    w_dims = static_dims(w)
    out_c, in_per_group, kernel = w_dims[0], w_dims[1], list(w_dims[2:])
    taps = int(np.prod(kernel))
    if group == 1 and taps > out_c:
        return _weight_grad_by_transposed_batch(ctx, x, g, kernel, strides, dilations, pads)
    channels = in_per_group * group
    eye = np.zeros((channels * taps, 1, *kernel), dtype=w.dtype.numpy())
    for c in range(channels):
        for t in range(taps):
            eye[(c * taps + t, 0, *np.unravel_index(t, kernel))] = 1
    patches = ctx.op("Conv", [x, ctx.e.const(eye)], {"strides": strides, "dilations": dilations, "pads": pads,
                                                     "group": channels, "kernel_shape": kernel})
    patches = ctx.op("Reshape", [patches, ctx.e.ints([0, group, in_per_group * taps, -1])])
    grads = ctx.op("Reshape", [g, ctx.e.ints([0, group, out_c // group, -1])])
    per_sample = ctx.op("MatMul", [grads, ctx.op("Transpose", [patches], {"perm": [0, 1, 3, 2]})])
    summed = ctx.op("ReduceSum", [per_sample, ctx.e.ints([0])], {"keepdims": 0})
    return ctx.op("Reshape", [summed, ctx.e.ints([out_c, in_per_group, *kernel])])


@register_vjp("Conv")
def conv_vjp(ctx: VJPContext):
    """Conv(x, w, b; strides, pads, dilations, group) -> y, any number of spatial dims (Conv1d, Conv2d, ...).

    dx = ConvTranspose(g, w) with the same strides/pads/dilations/group;
    dw = sum_n g_n (O, L) @ patches_n (C*prod(k), L)^T per group, patches from a
    one-hot depthwise Conv (im2col in standard ops), or, for ungrouped kernels with
    more taps than output channels, a transposed-batch Conv; db = sum of g over N and the spatial dims.
    """
    x, w = ctx.inputs[0], ctx.inputs[1]
    g = ctx.g
    w_dims = static_dims(w)
    kernel = list(w_dims[2:])
    nd = len(kernel)
    strides = _spatial(ctx, "strides", [1] * nd)
    dilations = _spatial(ctx, "dilations", [1] * nd)
    pads = _spatial(ctx, "pads", [0] * (2 * nd))
    group = ctx.attr("group", 1)
    _no_auto_pad(ctx, "Conv")
    x_sp = _static_spatial(ctx, x, "Conv")
    out_sp = _static_spatial(ctx, ctx.outputs[0], "Conv")
    dx = dw = db = None
    if ctx.needs(0):
        dx = _conv_transpose(ctx, g, w, x_sp, out_sp, kernel, strides, dilations, pads, group)
    if ctx.needs(1):
        dw = _conv_weight_grad(ctx, x, g, w, strides, dilations, pads, group)
    if len(ctx.inputs) > 2 and ctx.needs(2):
        db = ctx.op("ReduceSum", [g, ctx.e.ints([0, *range(2, nd + 2)])], {"keepdims": 0})
    return [dx, dw, db]


def _weight_grad_by_transposed_batch(ctx: VJPContext, x, g, kernel, strides, dilations, pads):
    """dw[o, c] = sum_n g[n, o] (*) x[n, c]: a Conv of x^T (C, N, ...) with g^T (O, N, ...) as kernel,
    the forward's dilations as strides and its strides as dilations, cropped to the kernel size.

    Chosen when the kernel has more taps than output channels (LeNet's 5x5 convs with 6 and 16
    channels: 2.6 vs 3.1 ms and 0.86 vs 1.0 ms against patches + MatMul, probes/conv_dw_lowerings.py),
    where the one-hot patches Conv does more work than the product itself.
    """
    nd = len(kernel)
    swap = [1, 0, *range(2, nd + 2)]
    xt = ctx.op("Transpose", [x], {"perm": swap})
    gt = ctx.op("Transpose", [g], {"perm": swap})
    full = ctx.op("Conv", [xt, gt], {"strides": dilations, "dilations": strides, "pads": pads})
    cropped = ctx.op("Slice", [full, ctx.e.ints([0] * nd), ctx.e.ints(kernel), ctx.e.ints(range(2, nd + 2))])
    return ctx.op("Transpose", [cropped], {"perm": swap})


@register_vjp("ConvTranspose")
def conv_transpose_vjp(ctx: VJPContext):
    """ConvTranspose(x, w, b; strides, pads, dilations, group, output_padding) -> y, w (C, O/group, k...).

    y is the adjoint of z = Conv(y'; w) (same strides/dilations/group), so
    dx = Conv(g, w) with pads (begin, end - output_padding) (a negative end pad crops g: those
    trailing outputs no input reached); dw = the Conv weight gradient with g as the input and x as
    the output cotangent (same lowering as Conv's dw); db = sum of g over N and the spatial dims.
    """
    x, w = ctx.inputs[0], ctx.inputs[1]
    w_dims = static_dims(w)
    kernel = list(w_dims[2:])
    nd = len(kernel)
    if ctx.attr("output_shape") is not None:
        raise NotImplementedError("the gradient of ConvTranspose with output_shape is not implemented; use pads")
    _no_auto_pad(ctx, "ConvTranspose")
    strides = _spatial(ctx, "strides", [1] * nd)
    dilations = _spatial(ctx, "dilations", [1] * nd)
    pads = _spatial(ctx, "pads", [0] * (2 * nd))
    group = ctx.attr("group", 1)
    x_sp = _static_spatial(ctx, x, "ConvTranspose")
    y_sp = _static_spatial(ctx, ctx.outputs[0], "ConvTranspose")
    g = ctx.g
    # The end pad that makes Conv(g) land on exactly x's size (output_padding is inside y's size).
    ends = [strides[i] * (x_sp[i] - 1) + dilations[i] * (kernel[i] - 1) + 1 - pads[i] - y_sp[i] for i in range(nd)]
    if min(ends) < 0:
        keep = [y_sp[i] + min(ends[i], 0) for i in range(nd)]
        g = ctx.op("Slice", [g, ctx.e.ints([0] * nd), ctx.e.ints(keep), ctx.e.ints(range(2, nd + 2))])
    conv_pads = pads[:nd] + [max(e, 0) for e in ends]
    dx = dw = db = None
    if ctx.needs(0):
        dx = ctx.op("Conv", [g, w], {"strides": strides, "dilations": dilations, "pads": conv_pads, "group": group,
                                     "kernel_shape": kernel})
    if ctx.needs(1):
        dw = _conv_weight_grad(ctx, g, x, w, strides, dilations, conv_pads, group)
    if len(ctx.inputs) > 2 and ctx.needs(2):
        db = ctx.op("ReduceSum", [ctx.g, ctx.e.ints([0, *range(2, nd + 2)])], {"keepdims": 0})
    return [dx, dw, db]


@register_vjp("MaxPool")
def max_pool_vjp(ctx: VJPContext):
    """MaxPool(x) -> (y, indices);  dx = zeros(x) scatter-added with g at the argmax indices.

    ONNX Runtime, like PyTorch, picks the first maximum of a window on ties;
    overlapping windows that pick the same element add their cotangents.
    """
    x = ctx.inputs[0]
    if ctx.attr("storage_order", 0):
        raise NotImplementedError("the gradient of MaxPool with storage_order=1 (column-major indices)")
    if len(ctx.outputs) > 1:
        indices = ctx.outputs[1]
    else:  # an imported model whose MaxPool dropped Indices: pool again, with indices
        attrs = {k: v.value for k, v in ctx.node.attributes.items()}
        indices = ctx.op("MaxPool", [x], attrs, num_outputs=2)[1]
    flat_g = ctx.op("Reshape", [ctx.g, ctx.e.ints([-1])])
    flat_i = ctx.op("Reshape", [indices, ctx.e.ints([-1])])
    zero = ctx.op("Reshape", [zeros_like(ctx, x), ctx.e.ints([-1])])  # not x * 0: inf * 0 is NaN
    dx = ctx.op("ScatterElements", [zero, flat_i, flat_g], {"axis": 0, "reduction": "add"})
    return [ctx.op("Reshape", [dx, ctx.op("Shape", [x])])]


def _avg_divisors(size, out, kernel, stride, pad, count_include_pad) -> np.ndarray:
    """PyTorch's per-window divisor along one axis (windows clipped to the padded input, then to the input)."""
    divisors = []
    for o in range(out):
        start = o * stride - pad
        end = min(start + kernel, size + pad)
        span = end - start
        if not count_include_pad:
            span = min(end, size) - max(start, 0)
        divisors.append(span)
    return np.asarray(divisors, dtype=np.float64)


@register_vjp("AveragePool")
def average_pool_vjp(ctx: VJPContext):
    """AveragePool(x) -> y;  dx = ConvTranspose(g / divisor, ones depthwise kernel).

    The divisor map follows PyTorch's rules for padding, count_include_pad and
    ceil_mode; it is computed at build time from the static spatial dims.
    """
    x = ctx.inputs[0]
    channels = static_dims(x)[1]
    if not isinstance(channels, int):
        raise NotImplementedError("the gradient of AveragePool needs a static channel count")
    kernel = _spatial(ctx, "kernel_shape", [])
    strides = _spatial(ctx, "strides", [1, 1])
    pads = _spatial(ctx, "pads", [0, 0, 0, 0])
    include = ctx.attr("count_include_pad", 0)
    if any(d != 1 for d in _spatial(ctx, "dilations", [1, 1])) or \
            ctx.attr("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        raise NotImplementedError("the gradient of AveragePool with dilations or auto_pad is not implemented")
    x_hw = _static_hw(ctx, x, "AveragePool")
    out_hw = _static_hw(ctx, ctx.outputs[0], "AveragePool")
    rows = _avg_divisors(x_hw[0], out_hw[0], kernel[0], strides[0], pads[0], include)
    cols = _avg_divisors(x_hw[1], out_hw[1], kernel[1], strides[1], pads[1], include)
    inverse = (1.0 / np.outer(rows, cols)).astype(x.dtype.numpy())[None, None]
    scaled = ctx.op("Mul", [ctx.g, ctx.e.const(inverse)])
    ones = ctx.e.const(np.ones((channels, 1, kernel[0], kernel[1]), dtype=x.dtype.numpy()))
    return [_conv_transpose(ctx, scaled, ones, x_hw, out_hw, kernel, strides, [1, 1], pads, channels)]


@register_vjp("BatchNormalization")
def batch_norm_inference_vjp(ctx: VJPContext):
    """BatchNormalization(x, scale, b, mean, var; epsilon) in inference form -> y = (x - mean) * k + b.

    k = scale / sqrt(var + eps);  dx = g * k, dscale = sum(g * (x - mean) / sqrt(var + eps)), db = sum(g);
    the running statistics are constants here (training mode is lowered to primitives by the builder).
    """
    if ctx.attr("training_mode", 0):
        raise NotImplementedError("BatchNormalization in training_mode has no rule; graphc lowers it to primitives")
    x, scale, _, mean, var = ctx.inputs[:5]
    rank = len(x.shape)
    shape = ctx.e.ints([-1] + [1] * (rank - 2))
    axes = ctx.e.ints([0] + list(range(2, rank)))
    inv_std = ctx.op("Reciprocal", [ctx.op("Sqrt", [ctx.op("Add", [var, ctx.const(ctx.attr("epsilon", 1e-5), x)])])])
    inv_std = ctx.op("Reshape", [inv_std, shape])
    dx = ctx.op("Mul", [ctx.g, ctx.op("Mul", [ctx.op("Reshape", [scale, shape]), inv_std])]) if ctx.needs(0) else None
    dscale = db = None
    if ctx.needs(1):
        normalized = ctx.op("Mul", [ctx.op("Sub", [x, ctx.op("Reshape", [mean, shape])]), inv_std])
        dscale = ctx.op("ReduceSum", [ctx.op("Mul", [ctx.g, normalized]), axes], {"keepdims": 0})
    if ctx.needs(2):
        db = ctx.op("ReduceSum", [ctx.g, axes], {"keepdims": 0})
    return [dx, dscale, db, None, None]
