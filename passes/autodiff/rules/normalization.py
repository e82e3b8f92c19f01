"""VJP rules of global pooling and the normalisation ops (LayerNormalization, GroupNormalization, ...).

The normalisations share one backward: with xhat = (x - mean) * rstd over the normalised axes and
dxhat the cotangent of xhat,  dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)).
Statistics are recomputed from x (the optional Mean/InvStdDev outputs are often absent).
"""

from __future__ import annotations

import numpy as np

from passes.autodiff.helpers import shape_of, static_dims, unbroadcast
from passes.autodiff.registry import VJPContext, register_vjp


def _spatial_axes(ctx: VJPContext) -> list[int]:
    return list(range(2, len(ctx.inputs[0].shape)))


@register_vjp("GlobalAveragePool")
def global_average_pool_vjp(ctx: VJPContext):
    """GlobalAveragePool(x (N, C, ...)) -> y (N, C, 1, ...);  dx = Expand(g / prod(spatial dims), shape(x))."""
    x = ctx.inputs[0]
    axes = _spatial_axes(ctx)
    dims = static_dims(x)
    if all(isinstance(dims[a], int) for a in axes):
        count = ctx.const(float(np.prod([dims[a] for a in axes])), x)
    else:
        count = ctx.op("Cast", [ctx.op("ReduceProd", [ctx.op("Shape", [x], {"start": 2})], {"keepdims": 0})],
                       {"to": x.dtype})
    return [ctx.op("Expand", [ctx.op("Div", [ctx.g, count]), shape_of(ctx, x)])]


@register_vjp("GlobalMaxPool")
def global_max_pool_vjp(ctx: VJPContext):
    """GlobalMaxPool(x (N, C, ...)) -> y (N, C, 1, ...);  dx = g * (x == y) / count(x == y): ties share."""
    x, y = ctx.inputs[0], ctx.outputs[0]
    mask = ctx.op("Cast", [ctx.op("Equal", [x, y])], {"to": x.dtype})
    count = ctx.op("ReduceSum", [mask, ctx.e.ints(_spatial_axes(ctx))], {"keepdims": 1})
    return [ctx.op("Mul", [mask, ctx.op("Div", [ctx.g, count])])]


def _standardize(ctx: VJPContext, x, axes: list[int], epsilon: float):
    """(xhat, rstd) over ``axes`` (kept as size-1 dims), as the forward computes them."""
    like = ctx.inputs[0]  # x may be a reshaped value without a dtype of its own
    axes_value = ctx.e.ints(axes)
    centered = ctx.op("Sub", [x, ctx.op("ReduceMean", [x, axes_value], {"keepdims": 1})])
    var = ctx.op("ReduceMean", [ctx.op("Mul", [centered, centered]), axes_value], {"keepdims": 1})
    rstd = ctx.op("Reciprocal", [ctx.op("Sqrt", [ctx.op("Add", [var, ctx.const(epsilon, like)])])])
    return ctx.op("Mul", [centered, rstd]), rstd


def _standardize_vjp(ctx: VJPContext, xhat, rstd, dxhat, axes: list[int]):
    """dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), means over ``axes``."""
    axes_value = ctx.e.ints(axes)
    mean_d = ctx.op("ReduceMean", [dxhat, axes_value], {"keepdims": 1})
    mean_dx = ctx.op("ReduceMean", [ctx.op("Mul", [dxhat, xhat]), axes_value], {"keepdims": 1})
    inner = ctx.op("Sub", [ctx.op("Sub", [dxhat, mean_d]), ctx.op("Mul", [xhat, mean_dx])])
    return ctx.op("Mul", [rstd, inner])


@register_vjp("LayerNormalization")
def layer_normalization_vjp(ctx: VJPContext):
    """LayerNormalization(x, scale, bias?; axis=-1, epsilon) -> y, mean?, inv_std_dev?.

    Normalised axes [axis, rank): y = xhat * scale + bias;  dxhat = g * scale; dx as in the module
    docstring; dscale = unbroadcast(g * xhat), dbias = unbroadcast(g). Cotangents of the mean and
    inv_std_dev outputs add g_mean / n and -g_rstd * rstd^2 * xhat / n.
    """
    x, scale = ctx.inputs[0], ctx.inputs[1]
    bias = ctx.inputs[2] if len(ctx.inputs) > 2 else None
    rank = len(x.shape)
    axes = list(range(ctx.attr("axis", -1) % rank, rank))
    xhat, rstd = _standardize(ctx, x, axes, ctx.attr("epsilon", 1e-5))
    g = ctx.g
    dx = dscale = dbias = None
    if ctx.needs(0):
        dx = _standardize_vjp(ctx, xhat, rstd, ctx.op("Mul", [g, scale]), axes) if g is not None else None
        extra = _stat_cotangents(ctx, xhat, rstd, axes)
        if extra is not None:
            dx = extra if dx is None else ctx.op("Add", [dx, extra])
    if g is not None and ctx.needs(1):
        dscale = unbroadcast(ctx, ctx.op("Mul", [g, xhat]), scale, out=x)
    if g is not None and bias is not None and ctx.needs(2):
        dbias = unbroadcast(ctx, g, bias, out=x)
    return [dx, dscale, dbias]


def _stat_cotangents(ctx: VJPContext, xhat, rstd, axes: list[int]):
    """The part of dx coming from LayerNormalization's mean and inv_std_dev outputs (None when unused)."""
    g_mean = ctx.out_grads[1] if len(ctx.out_grads) > 1 else None
    g_rstd = ctx.out_grads[2] if len(ctx.out_grads) > 2 else None
    if g_mean is None and g_rstd is None:
        return None
    x = ctx.inputs[0]
    count = _count(ctx, x, axes)
    parts = []
    if g_mean is not None:
        parts.append(ctx.op("Div", [g_mean, count]))
    if g_rstd is not None:  # d rstd / dx = -rstd^3 (x - mean) / n = -rstd^2 xhat / n
        scale = ctx.op("Div", [ctx.op("Mul", [g_rstd, ctx.op("Mul", [rstd, rstd])]), count])
        parts.append(ctx.op("Neg", [ctx.op("Mul", [scale, xhat])]))
    total = parts[0] if len(parts) == 1 else ctx.op("Add", parts)
    return ctx.op("Expand", [total, shape_of(ctx, x)])


def _count(ctx: VJPContext, x, axes: list[int]):
    dims = static_dims(x)
    if all(isinstance(dims[a], int) for a in axes):
        return ctx.const(float(np.prod([dims[a] for a in axes])), x)
    sizes = ctx.op("Gather", [ctx.op("Shape", [x]), ctx.e.ints(axes)])
    return ctx.op("Cast", [ctx.op("ReduceProd", [sizes], {"keepdims": 0})], {"to": x.dtype})


def _per_channel(ctx: VJPContext, value, rank: int):
    """A (C,) vector reshaped to (C, 1, ..., 1) so it broadcasts against (N, C, ...)."""
    return ctx.op("Unsqueeze", [value, ctx.e.ints(range(1, rank - 1))]) if rank > 2 else value


def _channel_sums(ctx: VJPContext, value, rank: int):
    """Sum over every axis but the channel axis 1: (N, C, ...) -> (C,)."""
    return ctx.op("ReduceSum", [value, ctx.e.ints([0] + list(range(2, rank)))], {"keepdims": 0})


@register_vjp("InstanceNormalization")
def instance_normalization_vjp(ctx: VJPContext):
    """InstanceNormalization(x (N, C, ...), scale (C), bias (C); epsilon) -> y = xhat * scale + bias.

    xhat normalises each (n, c) over the spatial axes;  dxhat = g * scale, dx as in the module docstring;
    dscale = sum over (n, spatial) of g * xhat, dbias = the same sum of g.
    """
    x, scale = ctx.inputs[0], ctx.inputs[1]
    rank = len(x.shape)
    axes = list(range(2, rank))
    xhat, rstd = _standardize(ctx, x, axes, ctx.attr("epsilon", 1e-5))
    dx = dscale = dbias = None
    if ctx.needs(0):
        dx = _standardize_vjp(ctx, xhat, rstd, ctx.op("Mul", [ctx.g, _per_channel(ctx, scale, rank)]), axes)
    if ctx.needs(1):
        dscale = _channel_sums(ctx, ctx.op("Mul", [ctx.g, xhat]), rank)
    if ctx.needs(2):
        dbias = _channel_sums(ctx, ctx.g, rank)
    return [dx, dscale, dbias]


@register_vjp("GroupNormalization")
def group_normalization_vjp(ctx: VJPContext):
    """GroupNormalization(x (N, C, ...), scale, bias; num_groups G, epsilon) -> y.

    xhat normalises each (n, group of C/G channels) over its channels and spatial axes, computed on
    x reshaped to (N, G, -1). Opset 21: scale/bias are (C,), y = xhat * scale[c] + bias[c]; opset 18:
    they are (G,), one per group. dxhat = g * scale; dx as in the module docstring (on the reshaped
    values); dscale/dbias = sums of g * xhat / g over everything but the channel (or group).
    """
    x, scale, bias = ctx.inputs[0], ctx.inputs[1], ctx.inputs[2]
    rank = len(x.shape)
    groups = ctx.attr("num_groups")
    dims = static_dims(x)
    scale_dims = static_dims(scale)
    per_group = scale_dims is not None and scale_dims[0] == groups and dims[1] != groups
    grouped_shape = ctx.e.ints([0, groups, -1])
    xg = ctx.op("Reshape", [x, grouped_shape])
    xhat_g, rstd = _standardize(ctx, xg, [2], ctx.attr("epsilon", 1e-5))
    g_grouped = ctx.op("Reshape", [ctx.g, grouped_shape])
    if per_group:
        scale_b = ctx.op("Unsqueeze", [scale, ctx.e.ints([1])])  # (G, 1) against (N, G, -1)
        dxhat_g = ctx.op("Mul", [g_grouped, scale_b])
    else:
        xhat = ctx.op("Reshape", [xhat_g, shape_of(ctx, x)])
        dxhat_g = ctx.op("Reshape", [ctx.op("Mul", [ctx.g, _per_channel(ctx, scale, rank)]), grouped_shape])
    dx = dscale = dbias = None
    if ctx.needs(0):
        dx = ctx.op("Reshape", [_standardize_vjp(ctx, xhat_g, rstd, dxhat_g, [2]), shape_of(ctx, x)])
    if per_group:
        axes = ctx.e.ints([0, 2])
        if ctx.needs(1):
            dscale = ctx.op("ReduceSum", [ctx.op("Mul", [g_grouped, xhat_g]), axes], {"keepdims": 0})
        if ctx.needs(2):
            dbias = ctx.op("ReduceSum", [g_grouped, axes], {"keepdims": 0})
    else:
        if ctx.needs(1):
            dscale = _channel_sums(ctx, ctx.op("Mul", [ctx.g, xhat]), rank)
        if ctx.needs(2):
            dbias = _channel_sums(ctx, ctx.g, rank)
    return [dx, dscale, dbias]
