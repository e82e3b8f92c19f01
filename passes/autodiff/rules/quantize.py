"""VJP rules of ONNX's quantization ops: the straight-through estimator (STE) of fake quantization.

``DequantizeLinear(QuantizeLinear(x, s, zp), s, zp)`` is a staircase in ``x``: its true derivative is
zero almost everywhere. Quantization-aware training uses the straight-through estimator instead
(Bengio et al. 2013; PyTorch's ``FakeQuantize``): the gradient passes unchanged where ``x`` lies in
the representable range and is zero outside. It is split over the two ops so that each rule is a
local formula: the quantized value ``q`` (an integer tensor) carries a float cotangent ``dq`` (autodiff
lets ``QuantizeLinear``'s output carry one, see ``registry.is_float``). Composed:

    dx = (g * s) / s * mask = g * mask              (STE, as torch.fake_quantize_per_*_affine)
    ds = g * (q - zp) + g * s * (-x / s^2) * mask   (LSQ's scale gradient, as torch's learnable
                                                     fake quantization, without its gradient factor)

Per-axis scales (``axis``) broadcast along that axis; block quantization (``block_size``) has no rule.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from passes.autodiff.helpers import static_dims
from passes.autodiff.registry import VJPContext, register_vjp


def _rank(ctx: VJPContext, value: ir.Value) -> int:
    dims = static_dims(value)
    if dims is None:
        raise NotImplementedError(f"{ctx.node.op_type} of a value of unknown rank has no gradient rule")
    return len(dims)


def _per_axis(ctx: VJPContext, param: ir.Value | None, rank: int) -> int | None:
    """The axis a 1-D scale/zero point runs along (normalised), or None for per-tensor parameters."""
    if ctx.attr("block_size", 0):
        raise NotImplementedError(f"{ctx.node.op_type} with block_size (blocked quantization) has no gradient rule")
    if param is None or _rank(ctx, param) == 0:
        return None
    axis = ctx.attr("axis", 1)
    return axis + rank if axis < 0 else axis


def _broadcastable(ctx: VJPContext, param: ir.Value, axis: int | None, rank: int) -> ir.Value:
    """A per-axis (C,) parameter reshaped to broadcast against a rank-``rank`` tensor along ``axis``."""
    if axis is None:
        return param
    others = [a for a in range(rank) if a != axis]
    return ctx.op("Unsqueeze", [param, ctx.e.ints(others)]) if others else param


def _reduce_to(ctx: VJPContext, grad: ir.Value, axis: int | None, rank: int) -> ir.Value:
    """Sum a full-shape gradient down to the scale's shape: () per tensor, (C,) per axis."""
    axes = [a for a in range(rank) if a != axis]
    if not axes:
        return grad
    return ctx.op("ReduceSum", [grad, ctx.e.ints(axes)], {"keepdims": 0})


def _as_float(ctx: VJPContext, value: ir.Value | None, like: ir.Value) -> ir.Value | None:
    return None if value is None else ctx.op("Cast", [value], {"to": like.dtype})


def _integer_range(ctx: VJPContext, value: ir.Value) -> tuple[int, int]:
    dtype = value.dtype
    if dtype is None or dtype.numpy().kind not in "iu" or dtype.bitwidth not in (8, 16, 32):
        raise NotImplementedError(f"{ctx.node.op_type} to {dtype} has no gradient rule "
                                  f"(int8, uint8, int16, uint16 and int32 have one)")
    info = np.iinfo(dtype.numpy())
    return int(info.min), int(info.max)


@register_vjp("QuantizeLinear")
def quantize_linear_vjp(ctx: VJPContext):
    """QuantizeLinear(x, s, zp?; axis) -> q = clamp(round(x / s) + zp, qmin, qmax), an integer tensor.

    Straight-through estimator, with r = round(x / s) + zp and mask = (qmin <= r <= qmax):
    dx = dq / s * mask;  ds = sum(dq * (-x / s^2) * mask) over the axes s is broadcast along;
    zp (an integer) has no gradient. Composed with DequantizeLinear's rule: dx = g * mask.
    """
    x, scale = ctx.inputs[0], ctx.inputs[1]
    zero_point = ctx.inputs[2] if len(ctx.inputs) > 2 else None
    rank = _rank(ctx, x)
    axis = _per_axis(ctx, scale, rank)
    qmin, qmax = _integer_range(ctx, ctx.outputs[0])
    s = _broadcastable(ctx, scale, axis, rank)
    ratio = ctx.op("Div", [x, s])
    rounded = ctx.op("Round", [ratio])
    if zero_point is not None:
        rounded = ctx.op("Add", [rounded, _broadcastable(ctx, _as_float(ctx, zero_point, x), axis, rank)])
    inside = ctx.op("And", [ctx.op("GreaterOrEqual", [rounded, ctx.const(qmin, x)]),
                            ctx.op("LessOrEqual", [rounded, ctx.const(qmax, x)])])
    masked = ctx.op("Where", [inside, ctx.g, ctx.const(0, x)])
    dx = ctx.op("Div", [masked, s]) if ctx.needs(0) else None
    ds = None
    if ctx.needs(1):  # dq/ds = -x / s^2 = -(x / s) / s
        ds = _reduce_to(ctx, ctx.op("Neg", [ctx.op("Div", [ctx.op("Mul", [masked, ratio]), s])]), axis, rank)
    return [dx, ds, None]


@register_vjp("DequantizeLinear")
def dequantize_linear_vjp(ctx: VJPContext):
    """DequantizeLinear(q, s, zp?; axis) -> y = (q - zp) * s.

    dq = g * s (the float cotangent of the integer q, for QuantizeLinear's rule);
    ds = sum(g * (q - zp)) over the axes s is broadcast along; zp (an integer) has no gradient.
    """
    q, scale = ctx.inputs[0], ctx.inputs[1]
    zero_point = ctx.inputs[2] if len(ctx.inputs) > 2 else None
    y = ctx.outputs[0]
    rank = _rank(ctx, q)
    axis = _per_axis(ctx, scale, rank)
    s = _broadcastable(ctx, scale, axis, rank)
    dq = ctx.op("Mul", [ctx.g, s]) if ctx.needs(0) else None
    ds = None
    if ctx.needs(1):
        centred = _as_float(ctx, q, y)
        if zero_point is not None:
            centred = ctx.op("Sub", [centred, _broadcastable(ctx, _as_float(ctx, zero_point, y), axis, rank)])
        ds = _reduce_to(ctx, ctx.op("Mul", [ctx.g, centred]), axis, rank)
    return [dq, ds, None]
