"""VJP rules of the linear-algebra ops: MatMul, Gemm, Transpose."""

from __future__ import annotations

from passes.autodiff.helpers import unbroadcast
from passes.autodiff.registry import VJPContext, register_vjp


def _swap_last(ctx: VJPContext, value, rank: int):
    perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    return ctx.op("Transpose", [value], {"perm": perm})


@register_vjp("MatMul")
def matmul_vjp(ctx: VJPContext):
    """MatMul(a, b) -> a @ b (numpy semantics);  da = g @ b^T, db = a^T @ g, batch dims unbroadcast.

    1-D operands are promoted to matrices first (as numpy does) and the
    promoted axis is squeezed out of the result again; plain 2-D products use
    Gemm's transpose flags instead of explicit transposes.
    """
    a, b = ctx.inputs
    g = ctx.g
    ra, rb = len(a.shape), len(b.shape)
    a2, b2 = a, b
    if rb == 1:  # before a's axis: for 1-D @ 1-D, g is a scalar and gets -1 first, then -2
        b2 = ctx.op("Unsqueeze", [b, ctx.e.ints([1])])
        g = ctx.op("Unsqueeze", [g, ctx.e.ints([-1])])
    if ra == 1:
        a2 = ctx.op("Unsqueeze", [a, ctx.e.ints([0])])
        g = ctx.op("Unsqueeze", [g, ctx.e.ints([-2])])
    ra2, rb2 = max(ra, 2), max(rb, 2)
    da = db = None
    if ra2 == 2 and rb2 == 2:
        if ctx.needs(0):
            da = ctx.op("Gemm", [g, b2], {"transB": 1})
        if ctx.needs(1):
            db = ctx.op("Gemm", [a2, g], {"transA": 1})
    else:
        out_rank = max(ra2, rb2)
        if ctx.needs(0):
            da = ctx.op("MatMul", [g, _swap_last(ctx, b2, rb2)])
            da = _reduce_batch(ctx, da, a, ra2, out_rank)
        if ctx.needs(1):
            db = ctx.op("MatMul", [_swap_last(ctx, a2, ra2), g])
            db = _reduce_batch(ctx, db, b, rb2, out_rank)
    if da is not None and ra == 1:
        da = ctx.op("Squeeze", [da, ctx.e.ints([0])])
    if db is not None and rb == 1:
        db = ctx.op("Squeeze", [db, ctx.e.ints([1])])
    return [da, db]


def _reduce_batch(ctx: VJPContext, grad, operand, rank: int, out_rank: int):
    """Sum the broadcast batch dims of a MatMul cotangent back to ``operand``'s (the unpromoted input)."""
    lead = out_rank - rank
    dims = list(operand.shape)
    axes = list(range(lead)) + [lead + i for i, d in enumerate(dims[:-2]) if d == 1]
    if not axes:
        return grad
    grad = ctx.op("ReduceSum", [grad, ctx.e.ints(axes)], {"keepdims": 1})
    return ctx.op("Squeeze", [grad, ctx.e.ints(range(lead))]) if lead else grad


@register_vjp("Gemm")
def gemm_vjp(ctx: VJPContext):
    """Gemm(A, B, C; alpha, beta, transA, transB) -> alpha * A' @ B' + beta * C.

    dA = alpha * g @ B'^T (transposed back when transA), dB = alpha * A'^T @ g
    (transposed back when transB), dC = unbroadcast(beta * g); each written as
    one Gemm with transpose flags.
    """
    a, b = ctx.inputs[0], ctx.inputs[1]
    c = ctx.inputs[2] if len(ctx.inputs) > 2 else None
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    ta, tb = ctx.attr("transA", 0), ctx.attr("transB", 0)
    g = ctx.g
    scale = {"alpha": alpha} if alpha != 1.0 else {}
    da = db = dc = None
    if ctx.needs(0):
        if not ta:
            da = ctx.op("Gemm", [g, b], {"transB": 0 if tb else 1, **scale})
        else:
            da = ctx.op("Gemm", [b, g], {"transA": tb, "transB": 1, **scale})
    if ctx.needs(1):
        if not tb:
            db = ctx.op("Gemm", [a, g], {"transA": 0 if ta else 1, **scale})
        else:
            db = ctx.op("Gemm", [g, a], {"transA": 1, "transB": ta, **scale})
    if c is not None and ctx.needs(2):
        gc_ = g if beta == 1.0 else ctx.op("Mul", [g, ctx.const(beta, ctx.outputs[0])])
        dc = unbroadcast(ctx, gc_, c)
    return [da, db, dc]


@register_vjp("Transpose")
def transpose_vjp(ctx: VJPContext):
    """Transpose(x; perm) -> y;  dx = Transpose(g; inverse(perm))."""
    rank = len(ctx.inputs[0].shape)
    perm = ctx.attr("perm") or list(reversed(range(rank)))
    inverse = [0] * rank
    for i, p in enumerate(perm):
        inverse[p] = i
    return [ctx.op("Transpose", [ctx.g], {"perm": inverse})]
