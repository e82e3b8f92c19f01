"""VJP rules of ONNX's element-wise activation ops (the single-op forms importers meet: Gelu, Softplus, ...).

graphc's own builders compose these from primitives; imported models carry the ops themselves.
"""

from __future__ import annotations

import numpy as np

from passes.autodiff.registry import VJPContext, register_vjp

_SQRT_2_OVER_PI = float(np.sqrt(2.0 / np.pi))
_GELU_TANH_CUBIC = 0.044715


def _is_const_true(value) -> bool | None:
    """True/False for a constant boolean input, None when it is only known at run time."""
    if value is None:
        return False
    const = value.const_value
    return None if const is None else bool(np.asarray(const.numpy()).reshape(-1)[0])


@register_vjp("Gelu")
def gelu_vjp(ctx: VJPContext):
    """Gelu(x; approximate) -> y.

    "none": y = x * Phi(x);  dx = g * (Phi(x) + x * phi(x)), phi(x) = exp(-x^2 / 2) / sqrt(2 pi).
    "tanh": y = x/2 * (1 + t), t = tanh(u), u = sqrt(2/pi) (x + 0.044715 x^3);
            dx = g * (0.5 (1 + t) + 0.5 x (1 - t^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)).
    """
    x = ctx.inputs[0]
    c = lambda v: ctx.const(v, x)  # noqa: E731
    x2 = ctx.op("Mul", [x, x])
    if ctx.attr("approximate", "none") == "tanh":
        inner = ctx.op("Add", [c(1.0), ctx.op("Mul", [x2, c(_GELU_TANH_CUBIC)])])
        t = ctx.op("Tanh", [ctx.op("Mul", [ctx.op("Mul", [x, inner]), c(_SQRT_2_OVER_PI)])])
        du = ctx.op("Add", [c(_SQRT_2_OVER_PI), ctx.op("Mul", [x2, c(3 * _GELU_TANH_CUBIC * _SQRT_2_OVER_PI)])])
        one_minus_t2 = ctx.op("Sub", [c(1.0), ctx.op("Mul", [t, t])])
        slope = ctx.op("Mul", [c(0.5), ctx.op("Add", [ctx.op("Add", [c(1.0), t]),
                                                       ctx.op("Mul", [x, ctx.op("Mul", [one_minus_t2, du])])])])
    else:
        cdf = ctx.op("Mul", [c(0.5), ctx.op("Add", [c(1.0), ctx.op("Erf", [ctx.op("Mul", [x, c(1 / np.sqrt(2))])])])])
        pdf = ctx.op("Mul", [ctx.op("Exp", [ctx.op("Mul", [x2, c(-0.5)])]), c(1 / np.sqrt(2 * np.pi))])
        slope = ctx.op("Add", [cdf, ctx.op("Mul", [x, pdf])])
    return [ctx.op("Mul", [ctx.g, slope])]


@register_vjp("Softplus")
def softplus_vjp(ctx: VJPContext):
    """Softplus(x) -> y = log(1 + exp(x));  dx = g * sigmoid(x)."""
    return [ctx.op("Mul", [ctx.g, ctx.op("Sigmoid", [ctx.inputs[0]])])]


@register_vjp("LeakyRelu")
def leaky_relu_vjp(ctx: VJPContext):
    """LeakyRelu(x; alpha=0.01) -> y;  dx = g where x > 0 else alpha * g."""
    x = ctx.inputs[0]
    alpha = ctx.attr("alpha", 0.01)
    return [ctx.op("Where", [ctx.op("Greater", [x, ctx.const(0, x)]), ctx.g,
                             ctx.op("Mul", [ctx.g, ctx.const(alpha, x)])])]


@register_vjp("Elu")
def elu_vjp(ctx: VJPContext):
    """Elu(x; alpha=1) -> y = x (x > 0), alpha (exp(x) - 1) (else);  dx = g (x > 0), g * (y + alpha) (else)."""
    x, y = ctx.inputs[0], ctx.outputs[0]
    alpha = ctx.const(ctx.attr("alpha", 1.0), x)
    return [ctx.op("Where", [ctx.op("Greater", [x, ctx.const(0, x)]), ctx.g,
                             ctx.op("Mul", [ctx.g, ctx.op("Add", [y, alpha])])])]


def _hard_sigmoid_parts(ctx: VJPContext, alpha: float, beta: float):
    """(hard_sigmoid(x), inside) where inside marks 0 < alpha x + beta < 1 (the linear piece)."""
    x = ctx.inputs[0]
    z = ctx.op("Add", [ctx.op("Mul", [x, ctx.const(alpha, x)]), ctx.const(beta, x)])
    inside = ctx.op("And", [ctx.op("Greater", [z, ctx.const(0, x)]), ctx.op("Less", [z, ctx.const(1, x)])])
    return ctx.op("Clip", [z, ctx.const(0, x), ctx.const(1, x)]), inside


@register_vjp("HardSigmoid")
def hard_sigmoid_vjp(ctx: VJPContext):
    """HardSigmoid(x; alpha=0.2, beta=0.5) -> y = clip(alpha x + beta, 0, 1);  dx = alpha * g inside (0, 1), else 0."""
    x = ctx.inputs[0]
    alpha = ctx.attr("alpha", 0.2)
    _, inside = _hard_sigmoid_parts(ctx, alpha, ctx.attr("beta", 0.5))
    return [ctx.op("Where", [inside, ctx.op("Mul", [ctx.g, ctx.const(alpha, x)]), ctx.const(0, x)])]


@register_vjp("HardSwish")
def hard_swish_vjp(ctx: VJPContext):
    """HardSwish(x) -> y = x * hs(x), hs = clip(x/6 + 1/2, 0, 1);  dx = g * (hs(x) + x/6 inside (0, 1))."""
    x = ctx.inputs[0]
    hs, inside = _hard_sigmoid_parts(ctx, 1 / 6, 0.5)
    linear = ctx.op("Where", [inside, ctx.op("Mul", [x, ctx.const(1 / 6, x)]), ctx.const(0, x)])
    return [ctx.op("Mul", [ctx.g, ctx.op("Add", [hs, linear])])]


@register_vjp("Sin")
def sin_vjp(ctx: VJPContext):
    """Sin(x) -> y;  dx = g * cos(x)."""
    return [ctx.op("Mul", [ctx.g, ctx.op("Cos", [ctx.inputs[0]])])]


@register_vjp("Cos")
def cos_vjp(ctx: VJPContext):
    """Cos(x) -> y;  dx = -g * sin(x)."""
    return [ctx.op("Neg", [ctx.op("Mul", [ctx.g, ctx.op("Sin", [ctx.inputs[0]])])])]


@register_vjp("Dropout")
def dropout_vjp(ctx: VJPContext):
    """Dropout(x, ratio?, training_mode?) -> y, mask?.

    Inference (training_mode absent or false; opsets before 12 have none): y = x, dx = g.
    Training: y = mask * x / (1 - ratio), dx = mask * g / (1 - ratio), reading the mask output the
    forward drew (so both passes see one draw). A run-time training_mode selects between the two.
    """
    x = ctx.inputs[0]
    training_input = ctx.inputs[2] if len(ctx.inputs) > 2 else None
    training = _is_const_true(training_input)
    ratio = ctx.inputs[1] if len(ctx.inputs) > 1 and ctx.inputs[1] is not None else None
    if ratio is not None and ratio.const_value is not None and not np.any(ratio.const_value.numpy()):
        training = False  # ratio 0 keeps every element: identity in training mode too
    if training is False:
        return [ctx.g] + [None] * (len(ctx.inputs) - 1)
    if len(ctx.outputs) < 2 or ctx.outputs[1].name == "":  # "": an imported node's omitted output
        raise NotImplementedError(f"the gradient of Dropout node {ctx.node.name!r} in training mode needs its "
                                  "mask output; give the node a second output")
    ratio = ctx.const(ctx.attr("ratio", 0.5), x) if ratio is None else ctx.op("Cast", [ratio], {"to": x.dtype})
    keep = ctx.op("Sub", [ctx.const(1, x), ratio])
    mask = ctx.op("Cast", [ctx.outputs[1]], {"to": x.dtype})
    dx = ctx.op("Div", [ctx.op("Mul", [ctx.g, mask]), keep])
    if training is None:
        dx = ctx.op("Where", [training_input, dx, ctx.g])
    return [dx] + [None] * (len(ctx.inputs) - 1)
