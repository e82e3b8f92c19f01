"""VJP rules of the Reduce* ops (axes as an input, opset 18+)."""

from __future__ import annotations

import numpy as np

from passes.autodiff.helpers import normalize_axes, restore_reduced, static_dims
from passes.autodiff.helpers import reduction_axes as _input_axes
from passes.autodiff.helpers import shape_of as _shape_of
from passes.autodiff.registry import VJPContext, register_vjp


def reduction_axes(ctx: VJPContext) -> list[int]:
    """The reduced axes in the form of the node's opset: the ``axes`` attribute (ReduceSum < 13, the other
    Reduce* < 18), else input 1. Reading only input 1 made opset-17 gradients silently wrong (issue 8)."""
    if "axes" in ctx.node.attributes:
        return normalize_axes([int(a) for a in ctx.attr("axes")], len(ctx.inputs[0].shape))
    return _input_axes(ctx)


@register_vjp("ReduceSum")
def reduce_sum_vjp(ctx: VJPContext):
    """ReduceSum(x, axes; keepdims) -> y;  dx = Expand(g with reduced axes restored, shape(x))."""
    x = ctx.inputs[0]
    g = restore_reduced(ctx, ctx.g, reduction_axes(ctx))
    return [ctx.op("Expand", [g, _shape_of(ctx, x)]), None]


def _reduced_count(ctx: VJPContext, axes: list[int]):
    """How many elements each output of a reduction averages, as a scalar of x's dtype."""
    x = ctx.inputs[0]
    dims = static_dims(x)
    if all(isinstance(dims[a], int) for a in axes):
        return ctx.const(float(np.prod([dims[a] for a in axes])), x)
    sizes = ctx.op("Gather", [ctx.op("Shape", [x]), ctx.e.ints(axes)])
    count = ctx.op("ReduceProd", [sizes], {"keepdims": 0})
    return ctx.op("Cast", [count], {"to": x.dtype})


@register_vjp("ReduceMean")
def reduce_mean_vjp(ctx: VJPContext):
    """ReduceMean(x, axes; keepdims) -> y;  dx = Expand(restored g, shape(x)) / count."""
    x = ctx.inputs[0]
    axes = reduction_axes(ctx)
    g = restore_reduced(ctx, ctx.g, axes)
    g = ctx.op("Div", [g, _reduced_count(ctx, axes)])
    return [ctx.op("Expand", [g, _shape_of(ctx, x)]), None]


def _reduce_extreme_vjp(ctx: VJPContext):
    """ReduceMax/Min(x, axes) -> y;  dx = g * (x == y) / count(x == y): ties share evenly (torch.amax)."""
    x = ctx.inputs[0]
    axes = reduction_axes(ctx)
    y = restore_reduced(ctx, ctx.outputs[0], axes)
    g = restore_reduced(ctx, ctx.g, axes)
    mask = ctx.op("Cast", [ctx.op("Equal", [x, y])], {"to": x.dtype})
    count = ctx.op("ReduceSum", [mask, ctx.e.ints(axes)], {"keepdims": 1})
    return [ctx.op("Mul", [mask, ctx.op("Div", [g, count])]), None]


register_vjp("ReduceMax")(_reduce_extreme_vjp)
register_vjp("ReduceMin")(_reduce_extreme_vjp)


@register_vjp("CumSum")
def cumsum_vjp(ctx: VJPContext):
    """CumSum(x, axis; exclusive, reverse) -> y;  dx = CumSum(g, axis; exclusive, reverse=1-reverse).

    y_i = sum of x_j over j <= i (j < i when exclusive), so dx_j = sum of g_i over i >= j (i > j):
    the same running sum taken from the other end.
    """
    attrs = {"exclusive": ctx.attr("exclusive", 0), "reverse": 1 - ctx.attr("reverse", 0)}
    return [ctx.op("CumSum", [ctx.g, ctx.inputs[1]], attrs), None]
