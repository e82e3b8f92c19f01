"""VJP rules of the neural-network ops: softmaxes and losses."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from passes.autodiff.helpers import static_dims
from passes.autodiff.registry import VJPContext, register_vjp


@register_vjp("Softmax")
def softmax_vjp(ctx: VJPContext):
    """Softmax(x; axis) -> y;  dx = y * (g - sum(g * y, axis))."""
    y = ctx.outputs[0]
    axis = ctx.e.ints([ctx.attr("axis", -1)])
    dot = ctx.op("ReduceSum", [ctx.op("Mul", [ctx.g, y]), axis], {"keepdims": 1})
    return [ctx.op("Mul", [y, ctx.op("Sub", [ctx.g, dot])])]


@register_vjp("LogSoftmax")
def log_softmax_vjp(ctx: VJPContext):
    """LogSoftmax(x; axis) -> y;  dx = g - exp(y) * sum(g, axis)."""
    y = ctx.outputs[0]
    total = ctx.op("ReduceSum", [ctx.g, ctx.e.ints([ctx.attr("axis", -1)])], {"keepdims": 1})
    return [ctx.op("Sub", [ctx.g, ctx.op("Mul", [ctx.op("Exp", [y]), total])])]


@register_vjp("NegativeLogLikelihoodLoss")
def nll_loss_vjp(ctx: VJPContext):
    """NegativeLogLikelihoodLoss(x (N,C,...), t (N,...), w (C)?; reduction, ignore_index) -> loss.

    loss_i = -w[t_i] * x[i, t_i] (0 where t_i == ignore_index); "mean" divides
    the sum by sum_i w[t_i]. dx = OneHot(t, C; axis=1) * coef, with
    coef_i = -w[t_i] * g_i (none) or -w[t_i] * g / norm (sum, mean).
    """
    x, target = ctx.inputs[0], ctx.inputs[1]
    weight = ctx.inputs[2] if len(ctx.inputs) > 2 else None
    if ctx.needs(2):  # as PyTorch: "the derivative for 'weight' is not implemented"
        raise NotImplementedError("the gradient of NegativeLogLikelihoodLoss with respect to its class weights "
                                  "is not implemented; pass the weights as a constant")
    reduction = ctx.attr("reduction", "mean")
    ignore = ctx.attr("ignore_index")
    dtype = x.dtype
    safe_target = target
    mask = None
    if ignore is not None:
        keep = ctx.op("Not", [ctx.op("Equal", [target, ctx.e.ints([ignore])])])
        safe_target = ctx.op("Where", [keep, target, ctx.e.ints([0])])
        mask = ctx.op("Cast", [keep], {"to": dtype})
    if weight is not None:
        w = ctx.op("Gather", [weight, safe_target])
        w = w if mask is None else ctx.op("Mul", [w, mask])
    else:
        w = mask
    if reduction == "none":
        coef = ctx.g if w is None else ctx.op("Mul", [ctx.g, w])
    else:
        scale = ctx.g
        if reduction == "mean":
            if w is None:
                norm = ctx.op("Cast", [ctx.op("Size", [target])], {"to": dtype})
            else:
                norm = ctx.op("ReduceSum", [w], {"keepdims": 0})
            scale = ctx.op("Div", [scale, norm])
        coef = scale if w is None else ctx.op("Mul", [w, scale])
    coef = ctx.op("Neg", [coef])
    classes = static_dims(x)[1]
    # A scalar depth: the spec also allows a 1-element 1-D tensor, but the reference evaluator does not.
    if isinstance(classes, int):
        depth = ctx.e.const(np.asarray(classes, dtype=np.int64))
    else:
        depth = ctx.op("Squeeze", [ctx.op("Shape", [x], {"start": 1, "end": 2})])
    # float32 values: ONNX Runtime's CPU OneHot has no double (or float16) kernel; 0 and 1 cast exactly.
    off_on = ctx.e.const(np.array([0, 1], dtype=np.float32))
    onehot = ctx.op("OneHot", [safe_target, depth, off_on], {"axis": 1})
    if dtype != ir.DataType.FLOAT:
        onehot = ctx.op("Cast", [onehot], {"to": dtype})
    per_sample = w is not None or reduction == "none"
    if not per_sample:
        return [ctx.op("Mul", [onehot, coef]), None, None]
    return [ctx.op("Mul", [onehot, ctx.op("Unsqueeze", [coef, ctx.e.ints([1])])]), None, None]
