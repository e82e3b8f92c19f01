"""The VJP rule of SoftmaxCrossEntropyLoss (ONNX's fused softmax + negative log-likelihood)."""

from __future__ import annotations

from passes.autodiff.registry import VJPContext, register_vjp
from passes.autodiff.rules.nn import nll_loss_vjp


@register_vjp("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy_loss_vjp(ctx: VJPContext):
    """SoftmaxCrossEntropyLoss(x (N, C, ...), t, w?; reduction, ignore_index) -> loss, log_prob?.

    With lp = LogSoftmax(x, axis=1) and loss = NLL(lp, t, w), the cotangent of lp is NLL's
    (-w[t] * onehot(t) * g / norm; 0 where t == ignore_index) plus g_log_prob; then
    dx = dlp - softmax(x) * sum(dlp, axis=1): softmax minus one-hot for the loss alone.
    """
    x = ctx.inputs[0]
    g_loss = ctx.out_grads[0]
    g_log_prob = ctx.out_grads[1] if len(ctx.out_grads) > 1 else None
    parts = []
    if g_loss is not None:  # the NLL rule reads the same inputs and attributes as this node
        nll = VJPContext(ctx.node, [g_loss], [ctx.needs(i) for i in range(len(ctx.inputs))], ctx.e)
        parts.append(nll_loss_vjp(nll)[0])
    if g_log_prob is not None:
        parts.append(g_log_prob)
    dlp = parts[0] if len(parts) == 1 else ctx.op("Add", parts)
    log_prob = ctx.outputs[1] if len(ctx.outputs) > 1 and ctx.outputs[1].name else \
        ctx.op("LogSoftmax", [x], {"axis": 1})
    total = ctx.op("ReduceSum", [dlp, ctx.e.ints([1])], {"keepdims": 1})
    dx = ctx.op("Sub", [dlp, ctx.op("Mul", [ctx.op("Exp", [log_prob]), total])])
    return [dx] + [None] * (len(ctx.inputs) - 1)
