"""VJP rules of data-movement ops: reshapes, slices, concatenation, gathers."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from passes.autodiff.helpers import shape_of as _shape_of
from passes.autodiff.helpers import static_dims, unbroadcast, zeros_like
from passes.autodiff.registry import VJPContext, register_vjp

INT64_MAX = np.iinfo(np.int64).max


def _reshape_back(ctx: VJPContext):
    """dx = Reshape(g, shape(x)): the VJP of every op that only re-labels elements.

    ``allowzero=1``: shape(x) is exact, so a 0 in it is a real empty dim, not "copy g's dim".
    """
    back = ctx.op("Reshape", [ctx.g, _shape_of(ctx, ctx.inputs[0])], {"allowzero": 1})
    return [back] + [None] * (len(ctx.inputs) - 1)


register_vjp("Reshape")(_reshape_back)
register_vjp("Flatten")(_reshape_back)
register_vjp("Squeeze")(_reshape_back)
register_vjp("Unsqueeze")(_reshape_back)


@register_vjp("Expand")
def expand_vjp(ctx: VJPContext):
    """Expand(x, shape) -> y;  dx = unbroadcast(g, x)."""
    return [unbroadcast(ctx, ctx.g, ctx.inputs[0]), None]


@register_vjp("Concat")
def concat_vjp(ctx: VJPContext):
    """Concat(x1..xn; axis) -> y;  dxi = the i-th piece of Split(g, sizes(xi); axis)."""
    rank = len(ctx.outputs[0].shape)
    axis = ctx.attr("axis") % rank
    sizes = [static_dims(v)[axis] for v in ctx.inputs]
    if all(isinstance(s, int) for s in sizes):
        split = ctx.e.ints(sizes)
    else:
        split = ctx.op("Concat", [ctx.op("Shape", [v], {"start": axis, "end": axis + 1}) for v in ctx.inputs],
                       {"axis": 0})
    pieces = ctx.op("Split", [ctx.g, split], {"axis": axis}, num_outputs=len(ctx.inputs))
    pieces = pieces if isinstance(pieces, tuple) else (pieces,)
    return [p if ctx.needs(i) else None for i, p in enumerate(pieces)]


def _const_ints(ctx: VJPContext, index: int, default):
    if len(ctx.inputs) <= index or ctx.inputs[index] is None:
        return default
    const = ctx.inputs[index].const_value
    if const is None:
        raise NotImplementedError(f"{ctx.node.op_type} with non-constant input {index} has no gradient rule")
    return [int(v) for v in np.asarray(const.numpy()).reshape(-1)]


@register_vjp("Split")
def split_vjp(ctx: VJPContext):
    """Split(x, split?; axis, num_outputs?) -> y1..yn;  dx = Concat(g1..gn; axis), zeros for unused pieces.

    The recurrent layers read each step's slice of the input projection through one Split: its VJP
    is one Concat, where per-step Slices would each pad a full-size cotangent.
    """
    pieces = [g if g is not None else zeros_like(ctx, y) for g, y in zip(ctx.out_grads, ctx.outputs)]
    dx = pieces[0] if len(pieces) == 1 else ctx.op("Concat", pieces, {"axis": ctx.attr("axis", 0)})
    return [dx] + [None] * (len(ctx.inputs) - 1)


@register_vjp("Slice")
def slice_vjp(ctx: VJPContext):
    """Slice(x, starts, ends, axes, steps) -> y;  dx = Pad(g, the cut-off parts) with zeros.

    Starts/ends are normalised like ONNX does (negative counts from the end,
    then clamped to [0, dim]); static dims give constant pads, symbolic dims
    compute them from ``Shape(x)``. Axes with a step > 1 (static dims, positive
    steps) are first scattered into their full length (``_unstride``).
    """
    x = ctx.inputs[0]
    rank = len(x.shape)
    starts, ends = _const_ints(ctx, 1, None), _const_ints(ctx, 2, None)
    axes = [a % rank for a in _const_ints(ctx, 3, list(range(len(starts))))]
    steps = _const_ints(ctx, 4, [1] * len(starts))
    dims = static_dims(x)
    g = ctx.g
    strided = [(a, st, en, sp) for a, st, en, sp in zip(axes, starts, ends, steps) if sp != 1]
    for axis, start, stop, step in strided:
        g = _unstride(ctx, g, dims[axis], axis, start, stop, step)
    plain = [(a, st, en) for a, st, en, sp in zip(axes, starts, ends, steps) if sp == 1]
    begin = [ctx.e.ints([0])] * rank
    end = [ctx.e.ints([0])] * rank
    for axis, start, stop in plain:
        dim = dims[axis]
        if isinstance(dim, int):
            s = min(max(start + dim if start < 0 else start, 0), dim)
            e = min(max(stop + dim if stop < 0 else stop, 0), dim)
            begin[axis], end[axis] = ctx.e.ints([s]), ctx.e.ints([dim - max(e, s)])
            continue
        d = ctx.op("Shape", [x], {"start": axis, "end": axis + 1})
        zero = ctx.e.ints([0])

        def norm(v):
            raw = ctx.op("Add", [d, ctx.e.ints([v])]) if v < 0 else ctx.e.ints([min(v, INT64_MAX)])
            return ctx.op("Min", [ctx.op("Max", [raw, zero]), d])

        s, e = norm(start), norm(stop)
        begin[axis] = s
        end[axis] = ctx.op("Sub", [d, ctx.op("Max", [e, s])])
    if not plain:
        return [g] + [None] * (len(ctx.inputs) - 1)
    pads = ctx.op("Concat", begin + end, {"axis": 0})
    return [ctx.op("Pad", [g, pads])] + [None] * (len(ctx.inputs) - 1)


def _unstride(ctx: VJPContext, g, dim, axis: int, start: int, stop: int, step: int):
    """Scatter ``g``'s elements along ``axis`` back to positions start, start+step, ... of a length-``dim`` axis."""
    if not isinstance(dim, int) or step < 1:
        raise NotImplementedError(f"the gradient of Slice with step {step} needs a static dim and a positive step")
    begin = min(max(start + dim if start < 0 else start, 0), dim)
    finish = min(max(stop + dim if stop < 0 else stop, 0), dim)
    positions = np.arange(begin, finish, step, dtype=np.int64)
    rank = len(ctx.inputs[0].shape)
    index_shape = [1] * rank
    index_shape[axis] = len(positions)
    shape_g = ctx.op("Shape", [g])
    indices = ctx.op("Expand", [ctx.e.const(positions.reshape(index_shape)), shape_g])
    full_shape = ctx.op("Concat", [ctx.op("Shape", [g], {"start": 0, "end": axis}), ctx.e.ints([dim]),
                                   ctx.op("Shape", [g], {"start": axis + 1})], {"axis": 0}) if axis else \
        ctx.op("Concat", [ctx.e.ints([dim]), ctx.op("Shape", [g], {"start": 1})], {"axis": 0})
    zero = ir.Tensor(np.zeros((1,), dtype=ctx.inputs[0].dtype.numpy()))
    zeros = ctx.op("ConstantOfShape", [full_shape], {"value": zero})
    return ctx.op("ScatterElements", [zeros, indices, g], {"axis": axis})


@register_vjp("Gather")
def gather_vjp(ctx: VJPContext):
    """Gather(x, idx; axis) -> y = x[..., idx, ...];  dx = ScatterND-add of g's slices into zeros(x).

    Repeated indices accumulate (an embedding row used twice gets both
    cotangents). ``axis=0`` (what Embedding emits) scatters directly; another
    axis a is moved to the front first: zeros shaped like x with a first,
    g with its index axes [a, a + rank(idx)) first, the sum transposed back.
    """
    x, indices = ctx.inputs
    rank = len(x.shape)
    axis = ctx.attr("axis", 0) % rank
    if indices.dtype is not None and indices.dtype != ir.DataType.INT64:
        indices = ctx.op("Cast", [indices], {"to": ir.DataType.INT64})
    idx = ctx.op("Unsqueeze", [indices, ctx.e.ints([-1])])
    dim = ctx.op("Shape", [x], {"start": axis, "end": axis + 1})
    idx = ctx.op("Where", [ctx.op("Less", [idx, ctx.e.ints([0])]), ctx.op("Add", [idx, dim]), idx])
    if axis == 0:
        return [ctx.op("ScatterND", [zeros_like(ctx, x), idx, ctx.g], {"reduction": "add"}), None]
    q = len(indices.shape)
    x_perm = [axis] + [d for d in range(rank) if d != axis]
    g_perm = list(range(axis, axis + q)) + list(range(axis)) + list(range(axis + q, rank - 1 + q))
    zero = ir.Tensor(np.zeros((1,), dtype=x.dtype.numpy()))
    zeros = ctx.op("ConstantOfShape", [ctx.op("Gather", [ctx.op("Shape", [x]), ctx.e.ints(x_perm)])], {"value": zero})
    moved = ctx.op("ScatterND", [zeros, idx, ctx.op("Transpose", [ctx.g], {"perm": g_perm})], {"reduction": "add"})
    inverse = [x_perm.index(d) for d in range(rank)]
    return [ctx.op("Transpose", [moved], {"perm": inverse}), None]
