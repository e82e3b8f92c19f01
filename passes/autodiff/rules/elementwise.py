"""VJP rules of element-wise ONNX ops (broadcasting ones unbroadcast their cotangent)."""

from __future__ import annotations

import numpy as np

from passes.autodiff.helpers import unbroadcast
from passes.autodiff.registry import VJPContext, register_vjp


@register_vjp("Identity")
def identity_vjp(ctx: VJPContext):
    """Identity(x) -> y;  dx = g."""
    return [ctx.g]


@register_vjp("Add")
def add_vjp(ctx: VJPContext):
    """Add(a, b) -> a + b;  da = unbroadcast(g), db = unbroadcast(g)."""
    a, b = ctx.inputs
    return [unbroadcast(ctx, ctx.g, a) if ctx.needs(0) else None,
            unbroadcast(ctx, ctx.g, b) if ctx.needs(1) else None]


@register_vjp("Sub")
def sub_vjp(ctx: VJPContext):
    """Sub(a, b) -> a - b;  da = unbroadcast(g), db = -unbroadcast(g)."""
    a, b = ctx.inputs
    return [unbroadcast(ctx, ctx.g, a) if ctx.needs(0) else None,
            ctx.op("Neg", [unbroadcast(ctx, ctx.g, b)]) if ctx.needs(1) else None]


@register_vjp("Mul")
def mul_vjp(ctx: VJPContext):
    """Mul(a, b) -> a * b;  da = unbroadcast(g * b), db = unbroadcast(g * a)."""
    a, b = ctx.inputs
    return [unbroadcast(ctx, ctx.op("Mul", [ctx.g, b]), a) if ctx.needs(0) else None,
            unbroadcast(ctx, ctx.op("Mul", [ctx.g, a]), b) if ctx.needs(1) else None]


@register_vjp("Div")
def div_vjp(ctx: VJPContext):
    """Div(a, b) -> a / b;  da = unbroadcast(g / b), db = unbroadcast(-g * y / b)."""
    a, b = ctx.inputs
    y = ctx.outputs[0]
    ga = ctx.op("Div", [ctx.g, b]) if (ctx.needs(0) or ctx.needs(1)) else None
    db = None
    if ctx.needs(1):
        db = unbroadcast(ctx, ctx.op("Neg", [ctx.op("Mul", [ga, y])]), b)
    return [unbroadcast(ctx, ga, a) if ctx.needs(0) else None, db]


@register_vjp("Pow")
def pow_vjp(ctx: VJPContext):
    """Pow(a, b) -> a ** b;  da = g * b * a ** (b - 1), db = g * y * log(a)."""
    a, b = ctx.inputs
    y = ctx.outputs[0]
    da = db = None
    if ctx.needs(0):
        b_a = ctx.op("Cast", [b], {"to": a.dtype}) if b.dtype != a.dtype else b
        a_pow = ctx.op("Pow", [a, ctx.op("Sub", [b_a, ctx.const(1, a)])])
        da = unbroadcast(ctx, ctx.op("Mul", [ctx.g, ctx.op("Mul", [b_a, a_pow])]), a)
    if ctx.needs(1):
        db = unbroadcast(ctx, ctx.op("Mul", [ctx.g, ctx.op("Mul", [y, ctx.op("Log", [a])])]), b)
    return [da, db]


@register_vjp("Neg")
def neg_vjp(ctx: VJPContext):
    """Neg(x) -> -x;  dx = -g."""
    return [ctx.op("Neg", [ctx.g])]


@register_vjp("Abs")
def abs_vjp(ctx: VJPContext):
    """Abs(x) -> |x|;  dx = g * sign(x)  (0 at x = 0, as PyTorch)."""
    return [ctx.op("Mul", [ctx.g, ctx.op("Sign", [ctx.inputs[0]])])]


@register_vjp("Exp")
def exp_vjp(ctx: VJPContext):
    """Exp(x) -> y;  dx = g * y."""
    return [ctx.op("Mul", [ctx.g, ctx.outputs[0]])]


@register_vjp("Log")
def log_vjp(ctx: VJPContext):
    """Log(x) -> y;  dx = g / x."""
    return [ctx.op("Div", [ctx.g, ctx.inputs[0]])]


@register_vjp("Sqrt")
def sqrt_vjp(ctx: VJPContext):
    """Sqrt(x) -> y;  dx = g / (2 y)."""
    y = ctx.outputs[0]
    return [ctx.op("Div", [ctx.g, ctx.op("Add", [y, y])])]


@register_vjp("Reciprocal")
def reciprocal_vjp(ctx: VJPContext):
    """Reciprocal(x) -> y = 1/x;  dx = -g * y * y."""
    y = ctx.outputs[0]
    return [ctx.op("Neg", [ctx.op("Mul", [ctx.g, ctx.op("Mul", [y, y])])])]


@register_vjp("Relu")
def relu_vjp(ctx: VJPContext):
    """Relu(x) -> y;  dx = g where y > 0 else 0."""
    y = ctx.outputs[0]
    return [ctx.op("Where", [ctx.op("Greater", [y, ctx.const(0, y)]), ctx.g, ctx.const(0, y)])]


@register_vjp("Sigmoid")
def sigmoid_vjp(ctx: VJPContext):
    """Sigmoid(x) -> y;  dx = g * y * (1 - y)."""
    y = ctx.outputs[0]
    return [ctx.op("Mul", [ctx.g, ctx.op("Mul", [y, ctx.op("Sub", [ctx.const(1, y), y])])])]


@register_vjp("Tanh")
def tanh_vjp(ctx: VJPContext):
    """Tanh(x) -> y;  dx = g * (1 - y * y)."""
    y = ctx.outputs[0]
    return [ctx.op("Mul", [ctx.g, ctx.op("Sub", [ctx.const(1, y), ctx.op("Mul", [y, y])])])]


@register_vjp("Clip")
def clip_vjp(ctx: VJPContext):
    """Clip(x, lo, hi) -> y;  dx = g where lo <= x <= hi (PyTorch's clamp), bounds get none."""
    x = ctx.inputs[0]
    mask = None
    for index, op in ((1, "GreaterOrEqual"), (2, "LessOrEqual")):
        if len(ctx.inputs) > index and ctx.inputs[index] is not None:
            inside = ctx.op(op, [x, ctx.inputs[index]])
            mask = inside if mask is None else ctx.op("And", [mask, inside])
    dx = ctx.g if mask is None else ctx.op("Where", [mask, ctx.g, ctx.const(0, x)])
    return [dx] + [None] * (len(ctx.inputs) - 1)


@register_vjp("Where")
def where_vjp(ctx: VJPContext):
    """Where(c, a, b) -> y;  da = unbroadcast(g where c), db = unbroadcast(g where not c)."""
    cond, a, b = ctx.inputs
    zero = ctx.const(0, ctx.outputs[0])  # cotangents may carry no dtype; the output's is theirs
    da = unbroadcast(ctx, ctx.op("Where", [cond, ctx.g, zero]), a) if ctx.needs(1) else None
    db = unbroadcast(ctx, ctx.op("Where", [cond, zero, ctx.g]), b) if ctx.needs(2) else None
    return [None, da, db]


def _minmax_vjp(ctx: VJPContext):
    """Max/Min(a, b) -> y;  the cotangent goes to the selected input, split evenly on ties."""
    y = ctx.outputs[0]
    grads = []
    masks = [ctx.op("Cast", [ctx.op("Equal", [v, y])], {"to": y.dtype}) for v in ctx.inputs]
    count = masks[0] if len(masks) == 1 else ctx.op("Sum", masks)
    share = ctx.op("Div", [ctx.g, count])
    for index, (value, mask) in enumerate(zip(ctx.inputs, masks)):
        grads.append(unbroadcast(ctx, ctx.op("Mul", [share, mask]), value) if ctx.needs(index) else None)
    return grads


register_vjp("Max")(_minmax_vjp)
register_vjp("Min")(_minmax_vjp)


@register_vjp("Cast")
def cast_vjp(ctx: VJPContext):
    """Cast(x, to) -> y;  dx = Cast(g, x.dtype) for float x (integers get none)."""
    return [ctx.op("Cast", [ctx.g], {"to": ctx.inputs[0].dtype})]


@register_vjp("Sum")
def sum_vjp(ctx: VJPContext):
    """Sum(x1, ..., xn) -> y;  dxi = unbroadcast(g)."""
    return [unbroadcast(ctx, ctx.g, v) if ctx.needs(i) else None for i, v in enumerate(ctx.inputs)]


@register_vjp("Erf")
def erf_vjp(ctx: VJPContext):
    """Erf(x) -> y;  dx = g * 2 / sqrt(pi) * exp(-x^2)."""
    x = ctx.inputs[0]
    slope = ctx.op("Mul", [ctx.op("Exp", [ctx.op("Neg", [ctx.op("Mul", [x, x])])]), ctx.const(2 / np.sqrt(np.pi), x)])
    return [ctx.op("Mul", [ctx.g, slope])]
