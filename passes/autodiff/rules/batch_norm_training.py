"""VJP of BatchNormalization in training mode (batch statistics), in closed form.

Registered through the ``BatchNormalization`` rule in ``conv.py`` (one rule per op_type), which hands
nodes with ``training_mode=1`` to :func:`batch_norm_training_vjp`.
"""

from __future__ import annotations

from passes.autodiff.registry import VJPContext


def batch_norm_training_vjp(ctx: VJPContext):
    """BatchNormalization(x, scale, b, mean_in, var_in; epsilon, training_mode=1) -> y (+ running outputs).

    Per channel, over its N elements: mean = Σx / N, c = x - mean, var = Σc² / N (biased),
    invstd = 1 / sqrt(var + eps), xhat = c * invstd, y = scale * xhat + b. With g = dL/dy:
      db     = Σ g
      dscale = Σ g·xhat = invstd · Σ(g·c)
      dx     = scale·invstd/N · (N·g − Σg − xhat·Σ(g·xhat))
             = k·g − (k·Σg/N + c · k·invstd²·Σ(g·c)/N),   k = scale·invstd
    (the second form reads c instead of building xhat: four passes over the activation plus two sums).
    mean and var are recomputed with the same ops as the builder's running-statistics update, so
    CSE shares them. The running inputs get no gradient; gradients into the running outputs are
    not supported (graphc's builder never reads them).
    """
    if any(grad is not None for grad in ctx.out_grads[1:]):
        raise NotImplementedError("the gradient of BatchNormalization's running_mean/running_var outputs in "
                                  "training_mode is not implemented (only of its output Y)")
    x, scale = ctx.inputs[0], ctx.inputs[1]
    g = ctx.g
    rank = len(x.shape)
    axes = ctx.e.ints([0] + list(range(2, rank)))
    mean = ctx.op("ReduceMean", [x, axes], {"keepdims": 1})
    centered = ctx.op("Sub", [x, mean])
    var = ctx.op("ReduceMean", [ctx.op("Mul", [centered, centered]), axes], {"keepdims": 1})
    inv_std = ctx.op("Reciprocal", [ctx.op("Sqrt", [ctx.op("Add", [var, ctx.const(ctx.attr("epsilon", 1e-5), x)])])])
    sum_g = ctx.op("ReduceSum", [g, axes], {"keepdims": 1})
    sum_gc = ctx.op("ReduceSum", [ctx.op("Mul", [g, centered]), axes], {"keepdims": 1})
    flat = ctx.e.ints([-1])
    dx = dscale = db = None
    if ctx.needs(0):
        # N = elements per channel = Size(x) / Size(scale): right for static and symbolic dims alike.
        count = ctx.op("Cast", [ctx.op("Div", [ctx.op("Size", [x]), ctx.op("Size", [scale])])],
                       {"to": x.dtype})
        k = ctx.op("Mul", [ctx.op("Reshape", [scale, ctx.e.ints([-1] + [1] * (rank - 2))]), inv_std])
        shift = ctx.op("Div", [ctx.op("Mul", [k, sum_g]), count])
        slope = ctx.op("Div", [ctx.op("Mul", [ctx.op("Mul", [k, ctx.op("Mul", [inv_std, inv_std])]), sum_gc]),
                               count])
        dx = ctx.op("Sub", [ctx.op("Mul", [g, k]), ctx.op("Add", [ctx.op("Mul", [centered, slope]), shift])])
    if ctx.needs(1):
        dscale = ctx.op("Reshape", [ctx.op("Mul", [sum_gc, inv_std]), flat])
    if ctx.needs(2):
        db = ctx.op("Reshape", [sum_g, flat])
    return [dx, dscale, db, None, None]
