"""VJP rules of the indexing ops: GatherElements, GatherND, ScatterND, TopK.

A gather's VJP scatters (adding, so repeated indices accumulate) into zeros; a scatter's VJP gathers.
Negative indices are made positive first: ScatterND/ScatterElements accept them, but the add
reduction of a negative and a positive spelling of one element must meet at one place.
"""

from __future__ import annotations

import numpy as np

from passes.autodiff.helpers import static_dims, zeros_like
from passes.autodiff.registry import VJPContext, register_vjp


def _positive_indices(ctx: VJPContext, indices, dim):
    """indices + dim where negative; ``dim`` an int64 value that broadcasts against ``indices``."""
    return ctx.op("Where", [ctx.op("Less", [indices, ctx.e.ints([0])]), ctx.op("Add", [indices, dim]), indices])


@register_vjp("GatherElements")
def gather_elements_vjp(ctx: VJPContext):
    """GatherElements(x, idx; axis) -> y[i] = x[i with i_axis := idx[i]];  dx = ScatterElements-add(0, idx, g)."""
    x, indices = ctx.inputs
    axis = ctx.attr("axis", 0) % len(x.shape)
    dim = ctx.op("Shape", [x], {"start": axis, "end": axis + 1})
    if indices.dtype is not None and indices.dtype.numpy() != np.int64:
        indices = ctx.op("Cast", [indices], {"to": 7})  # INT64
    idx = _positive_indices(ctx, indices, dim)
    return [ctx.op("ScatterElements", [zeros_like(ctx, x), idx, ctx.g], {"axis": axis, "reduction": "add"}), None]


def _batch_coordinates(ctx: VJPContext, x, indices, batch_dims: int):
    """Indices of GatherND with ``batch_dims`` > 0 rewritten for batch_dims = 0 (batch coordinates prepended)."""
    dims = static_dims(x)[:batch_dims]
    if not all(isinstance(d, int) for d in dims):
        raise NotImplementedError("the gradient of GatherND with batch_dims > 0 needs static batch dims")
    index_rank = len(indices.shape)
    grid = np.stack(np.indices(dims), axis=-1).astype(np.int64)  # dims + [batch_dims]
    grid = grid.reshape(list(dims) + [1] * (index_rank - 1 - batch_dims) + [batch_dims])
    target = ctx.op("Concat", [ctx.op("Shape", [indices], {"end": -1}), ctx.e.ints([batch_dims])], {"axis": 0})
    return ctx.op("Concat", [ctx.op("Expand", [ctx.e.const(grid), target]), indices], {"axis": -1})


def _nd_indices(ctx: VJPContext, x, indices, batch_dims: int = 0):
    """GatherND/ScatterND indices as int64, non-negative, with batch dims made explicit."""
    depth = static_dims(indices)[-1]
    if not isinstance(depth, int):
        raise NotImplementedError("the gradient of GatherND/ScatterND needs a static last index dim")
    depth += batch_dims
    if indices.dtype is not None and indices.dtype.numpy() != np.int64:
        indices = ctx.op("Cast", [indices], {"to": 7})
    if batch_dims:
        indices = _batch_coordinates(ctx, x, indices, batch_dims)
    dims = ctx.op("Shape", [x], {"start": 0, "end": depth})
    return _positive_indices(ctx, indices, dims)


@register_vjp("GatherND")
def gather_nd_vjp(ctx: VJPContext):
    """GatherND(x, idx; batch_dims) -> y = x[idx[..., :]] per batch;  dx = ScatterND-add(0, idx, g)."""
    x, indices = ctx.inputs
    idx = _nd_indices(ctx, x, indices, ctx.attr("batch_dims", 0))
    return [ctx.op("ScatterND", [zeros_like(ctx, x), idx, ctx.g], {"reduction": "add"}), None]


@register_vjp("ScatterND")
def scatter_nd_vjp(ctx: VJPContext):
    """ScatterND(x, idx, u; reduction) -> y.

    "none": y = x with y[idx] = u;  dx = g with g[idx] = 0, du = GatherND(g, idx) (indices are unique).
    "add":  y = x with y[idx] += u;  dx = g, du = GatherND(g, idx).
    mul/max/min have no rule.
    """
    x, indices, updates = ctx.inputs
    reduction = ctx.attr("reduction", "none")
    if reduction not in ("none", "add"):
        raise NotImplementedError(f"the gradient of ScatterND with reduction={reduction!r} is not implemented")
    idx = _nd_indices(ctx, x, indices)
    dx = du = None
    if ctx.needs(0):
        dx = ctx.g if reduction == "add" else ctx.op("ScatterND", [ctx.g, idx, zeros_like(ctx, updates)])
    if ctx.needs(2):
        du = ctx.op("GatherND", [ctx.g, idx])
    return [dx, None, du]


@register_vjp("TopK")
def topk_vjp(ctx: VJPContext):
    """TopK(x, k; axis, largest, sorted) -> values, indices;  dx = ScatterElements(0, indices, g_values; axis)."""
    x = ctx.inputs[0]
    g = ctx.out_grads[0]
    if g is None:
        return [None, None]
    axis = ctx.attr("axis", -1) % len(x.shape)
    return [ctx.op("ScatterElements", [zeros_like(ctx, x), ctx.outputs[1], g], {"axis": axis}), None]
