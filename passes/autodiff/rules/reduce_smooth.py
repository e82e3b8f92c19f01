"""VJP rules of the smooth reductions beyond sum/mean: ReduceL2, ReduceLogSumExp, ReduceSumSquare, ReduceL1.

``axes`` are read from input 1 (opset 18+) or, in older models, from the ``axes`` attribute.
"""

from __future__ import annotations

import numpy as np

from passes.autodiff.helpers import normalize_axes, shape_of
from passes.autodiff.registry import VJPContext, register_vjp


def _axes(ctx: VJPContext) -> list[int]:
    """The reduced axes, normalised; every axis when none are given (or [] for noop_with_empty_axes)."""
    rank = len(ctx.inputs[0].shape)
    axes = ctx.attr("axes")
    if len(ctx.inputs) > 1 and ctx.inputs[1] is not None:
        const = ctx.inputs[1].const_value
        if const is None:
            raise NotImplementedError(f"{ctx.node.op_type} with non-constant axes has no gradient rule")
        axes = [int(a) for a in np.asarray(const.numpy()).reshape(-1)]
        if not axes and ctx.attr("noop_with_empty_axes", 0):
            return []
    return normalize_axes(axes, rank) if axes else list(range(rank))


def _restored(ctx: VJPContext, value, axes: list[int]):
    """``value`` (an output or its cotangent) with the reduced axes back as size-1 dims."""
    if ctx.attr("keepdims", 1) or not axes:
        return value
    return ctx.op("Unsqueeze", [value, ctx.e.ints(axes)])


def _rest(ctx: VJPContext) -> list:
    return [None] * (len(ctx.inputs) - 1)


@register_vjp("ReduceL2")
def reduce_l2_vjp(ctx: VJPContext):
    """ReduceL2(x, axes) -> y = sqrt(sum(x^2));  dx = g * x / y, 0 where y = 0 (PyTorch's norm subgradient)."""
    x = ctx.inputs[0]
    axes = _axes(ctx)
    y = _restored(ctx, ctx.outputs[0], axes)
    zero = ctx.const(0, x)
    is_zero = ctx.op("Equal", [y, zero])
    safe_y = ctx.op("Where", [is_zero, ctx.const(1, x), y])
    ratio = ctx.op("Where", [is_zero, zero, ctx.op("Div", [x, safe_y])])
    return [ctx.op("Mul", [_restored(ctx, ctx.g, axes), ratio])] + _rest(ctx)


@register_vjp("ReduceLogSumExp")
def reduce_log_sum_exp_vjp(ctx: VJPContext):
    """ReduceLogSumExp(x, axes) -> y = log(sum(exp(x)));  dx = g * exp(x - y) (a softmax over the axes)."""
    x = ctx.inputs[0]
    axes = _axes(ctx)
    y = _restored(ctx, ctx.outputs[0], axes)
    return [ctx.op("Mul", [_restored(ctx, ctx.g, axes), ctx.op("Exp", [ctx.op("Sub", [x, y])])])] + _rest(ctx)


@register_vjp("ReduceSumSquare")
def reduce_sum_square_vjp(ctx: VJPContext):
    """ReduceSumSquare(x, axes) -> y = sum(x^2);  dx = 2 g x."""
    x = ctx.inputs[0]
    g = _restored(ctx, ctx.g, _axes(ctx))
    return [ctx.op("Mul", [ctx.op("Mul", [g, x]), ctx.const(2, x)])] + _rest(ctx)


@register_vjp("ReduceL1")
def reduce_l1_vjp(ctx: VJPContext):
    """ReduceL1(x, axes) -> y = sum(|x|);  dx = g * sign(x)."""
    x = ctx.inputs[0]
    g = _restored(ctx, ctx.g, _axes(ctx))
    return [ctx.op("Mul", [g, ctx.op("Sign", [x])])] + _rest(ctx)


@register_vjp("ReduceLogSum")
def reduce_log_sum_vjp(ctx: VJPContext):
    """ReduceLogSum(x, axes) -> y = log(sum(x));  dx = g / exp(y) = g / sum(x)."""
    x = ctx.inputs[0]
    axes = _axes(ctx)
    y = _restored(ctx, ctx.outputs[0], axes)
    dx = ctx.op("Div", [_restored(ctx, ctx.g, axes), ctx.op("Exp", [y])])
    return [ctx.op("Expand", [dx, shape_of(ctx, x)])] + _rest(ctx)
