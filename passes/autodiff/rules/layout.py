"""VJP rules of the ops that copy elements to new places: Pad, Tile, Trilu."""

from __future__ import annotations

import numpy as np

from passes.autodiff.helpers import static_dims
from passes.autodiff.registry import VJPContext, register_vjp

INT64_MAX = np.iinfo(np.int64).max


def _const_ints(ctx: VJPContext, index: int, what: str) -> list[int] | None:
    if len(ctx.inputs) <= index or ctx.inputs[index] is None:
        return None
    const = ctx.inputs[index].const_value
    if const is None:
        raise NotImplementedError(f"the gradient of {ctx.node.op_type} needs a constant {what} (input {index})")
    return [int(v) for v in np.asarray(const.numpy()).reshape(-1)]


def _slice(ctx: VJPContext, value, axis: int, start: int, end: int, step: int = 1):
    return ctx.op("Slice", [value, ctx.e.ints([start]), ctx.e.ints([end]), ctx.e.ints([axis]), ctx.e.ints([step])])


def _pad_axis(ctx: VJPContext, value, axis: int, rank: int, before: int, after: int):
    pads = [0] * (2 * rank)
    pads[axis], pads[rank + axis] = before, after
    return ctx.op("Pad", [value, ctx.e.ints(pads)])


def _unpad_constant(ctx: VJPContext, g, axes, begins, ends, rank: int):
    """Pad(g, -pads) written as a Slice (positive pads) and a Pad (negative ones): the reference
    evaluator, like numpy, rejects negative pads."""
    starts = [max(b, 0) for b in begins]
    stops = [-e if e > 0 else INT64_MAX for e in ends]
    if any(starts) or any(e > 0 for e in ends):
        g = ctx.op("Slice", [g, ctx.e.ints(starts), ctx.e.ints(stops), ctx.e.ints(axes)])
    if any(b < 0 for b in begins) or any(e < 0 for e in ends):
        full = [0] * (2 * rank)
        for a, b, e in zip(axes, begins, ends):
            full[a], full[rank + a] = max(-b, 0), max(-e, 0)
        g = ctx.op("Pad", [g, ctx.e.ints(full)])
    return g


@register_vjp("Pad")
def pad_vjp(ctx: VJPContext):
    """Pad(x, pads, value?, axes?; mode) -> y (opset 11+ inputs; the ``pads``/``value`` attributes before).

    constant: dx = g with the padding sliced off (and zeros where pads < 0 cropped x),
              dvalue = sum(g) - sum(dx).
    edge:     dx = the centre of g, its first/last slice plus the sums of the padding before/after it.
    reflect:  dx = the centre of g plus the padding mirrored back: y[b - i] = x[i] for i in 1..b.
    Edge and reflect need static dims on the padded axes and pads >= 0.
    """
    x = ctx.inputs[0]
    rank = len(x.shape)
    pads = _const_ints(ctx, 1, "pads")
    if pads is None:
        pads = list(ctx.attr("pads"))
    axes = _const_ints(ctx, 3, "axes")
    axes = list(range(rank)) if axes is None else [a % rank for a in axes]
    count = len(axes)
    mode = ctx.attr("mode", "constant")
    rest = [None] * (len(ctx.inputs) - 1)
    if mode == "constant":
        dx = _unpad_constant(ctx, ctx.g, axes, pads[:count], pads[count:], rank)
        if ctx.needs(2):
            total = ctx.op("ReduceSum", [ctx.g], {"keepdims": 0})
            rest[1] = ctx.op("Sub", [total, ctx.op("ReduceSum", [dx], {"keepdims": 0})])
            value_dims = static_dims(ctx.inputs[2])
            if value_dims:  # a 1-element 1-D value
                rest[1] = ctx.op("Reshape", [rest[1], ctx.e.ints(value_dims)])
        return [dx] + rest
    if mode not in ("edge", "reflect"):
        raise NotImplementedError(f"the gradient of Pad with mode={mode!r} is not implemented")
    dims = static_dims(x)
    g = ctx.g
    for i, axis in enumerate(axes):
        before, after = pads[i], pads[count + i]
        if before == 0 and after == 0:
            continue
        dim = dims[axis]
        if not isinstance(dim, int) or before < 0 or after < 0:
            raise NotImplementedError(f"the gradient of Pad in {mode} mode needs a static dim and pads >= 0, "
                                      f"got dim {dim} and pads ({before}, {after}) on axis {axis}")
        centre = _slice(ctx, g, axis, before, before + dim)
        parts = [centre]
        if mode == "edge":
            if before:
                summed = ctx.op("ReduceSum", [_slice(ctx, g, axis, 0, before), ctx.e.ints([axis])], {"keepdims": 1})
                parts.append(_pad_axis(ctx, summed, axis, rank, 0, dim - 1))
            if after:
                summed = ctx.op("ReduceSum", [_slice(ctx, g, axis, before + dim, before + dim + after),
                                              ctx.e.ints([axis])], {"keepdims": 1})
                parts.append(_pad_axis(ctx, summed, axis, rank, dim - 1, 0))
        else:
            if before:  # y[j] = x[before - j] for j < before: reversed, it lands on x[1 .. before]
                mirrored = _slice(ctx, g, axis, before - 1, -(2 ** 62), -1)
                parts.append(_pad_axis(ctx, mirrored, axis, rank, 1, dim - 1 - before))
            if after:  # y[before + dim + j] = x[dim - 2 - j]: reversed, on x[dim - 1 - after .. dim - 2]
                mirrored = _slice(ctx, g, axis, before + dim + after - 1, before + dim - 1, -1)
                parts.append(_pad_axis(ctx, mirrored, axis, rank, dim - 1 - after, 1))
        g = parts[0] if len(parts) == 1 else ctx.op("Sum", parts)
    return [g] + rest


@register_vjp("Tile")
def tile_vjp(ctx: VJPContext):
    """Tile(x, repeats) -> y, y.shape[i] = r_i * d_i;  dx = ReduceSum(Reshape(g, (r_0, d_0, r_1, d_1, ...)), r axes)."""
    x = ctx.inputs[0]
    repeats = _const_ints(ctx, 1, "repeats")
    rank = len(x.shape)
    dims = static_dims(x)
    interleaved = []
    for axis, (r, d) in enumerate(zip(repeats, dims)):
        interleaved.append(ctx.e.ints([r]))
        interleaved.append(ctx.e.ints([d]) if isinstance(d, int) else
                           ctx.op("Shape", [x], {"start": axis, "end": axis + 1}))
    split = ctx.op("Reshape", [ctx.g, ctx.op("Concat", interleaved, {"axis": 0})])
    return [ctx.op("ReduceSum", [split, ctx.e.ints(range(0, 2 * rank, 2))], {"keepdims": 0}), None]


@register_vjp("Trilu")
def trilu_vjp(ctx: VJPContext):
    """Trilu(x, k?; upper) -> y = x masked to a triangle;  dx = Trilu(g, k; upper) (the same mask)."""
    k = ctx.inputs[1] if len(ctx.inputs) > 1 else None
    inputs = [ctx.g] + ([k] if k is not None else [])
    return [ctx.op("Trilu", inputs, {"upper": ctx.attr("upper", 1)}), None][:len(ctx.inputs)]
