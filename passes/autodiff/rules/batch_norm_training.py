"""VJP of BatchNormalization in training mode (batch statistics), in closed form.

Registered through the ``BatchNormalization`` rule in ``conv.py`` (one rule per op_type), which hands
nodes with ``training_mode=1`` to :func:`batch_norm_training_vjp`.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from passes.autodiff.registry import VJPContext


def batch_norm_training_vjp(ctx: VJPContext):
    """BatchNormalization(x, scale, b, mean_in, var_in; epsilon, momentum, training_mode=1) -> y (+ running outputs).

    Per channel, over its N elements: mean = Σx / N, c = x - mean, var = Σc² / N (biased),
    invstd = 1 / sqrt(var + eps), xhat = c * invstd, y = scale * xhat + b. With g = dL/dy:
      db     = Σ g
      dscale = Σ g·xhat = invstd · Σ(g·c)
      dx     = scale·invstd/N · (N·g − Σg − xhat·Σ(g·xhat))
             = k·g − (c·slope + shift),   k = scale·invstd, slope = k·invstd²·Σ(g·c)/N, shift = k·Σg/N
    (reads c instead of building xhat). c·slope + shift is one per-channel affine map of c, which an
    inference-mode BatchNormalization (mean 0, var 1, epsilon 0) computes in one pass: dx takes three
    passes over the activation (Mul, BatchNormalization, Sub) plus the two sums' (Mul, ReduceSum, ReduceSum).
    With momentum 0 the node's running outputs are the batch mean and variance (graphc's builder sets
    it), read here; otherwise they are recomputed. The running inputs get no gradient; gradients into the
    running outputs are not supported (graphc's builder never reads them).
    """
    if any(grad is not None for grad in ctx.out_grads[1:]):
        raise NotImplementedError("the gradient of BatchNormalization's running_mean/running_var outputs in "
                                  "training_mode is not implemented (only of its output Y)")
    x, scale = ctx.inputs[0], ctx.inputs[1]
    g = ctx.g
    rank = len(x.shape)
    axes = ctx.e.ints([0] + list(range(2, rank)))
    per_channel = ctx.e.ints([-1] + [1] * (rank - 2))
    mean, var = _batch_statistics(ctx, x, axes, per_channel)
    centered = ctx.op("Sub", [x, mean])
    inv_std = ctx.op("Reciprocal", [ctx.op("Sqrt", [ctx.op("Add", [var, ctx.const(ctx.attr("epsilon", 1e-5), x)])])])
    sum_g = ctx.op("ReduceSum", [g, axes], {"keepdims": 1})
    sum_gc = ctx.op("ReduceSum", [ctx.op("Mul", [g, centered]), axes], {"keepdims": 1})
    flat = ctx.e.ints([-1])
    dx = dscale = db = None
    if ctx.needs(0):
        # N = elements per channel = Size(x) / Size(scale): right for static and symbolic dims alike.
        count = ctx.op("Cast", [ctx.op("Div", [ctx.op("Size", [x]), ctx.op("Size", [scale])])],
                       {"to": x.dtype})
        k = ctx.op("Mul", [ctx.op("Reshape", [scale, per_channel]), inv_std])
        shift = ctx.op("Div", [ctx.op("Mul", [k, sum_g]), count])
        slope = ctx.op("Div", [ctx.op("Mul", [ctx.op("Mul", [k, ctx.op("Mul", [inv_std, inv_std])]), sum_gc]),
                               count])
        channels = ctx.op("Shape", [scale])
        zeros, ones = (ctx.op("ConstantOfShape", [channels], {"value": ir.Tensor(np.asarray([v], x.dtype.numpy()))})
                       for v in (0, 1))
        affine = ctx.op("BatchNormalization", [centered, ctx.op("Reshape", [slope, flat]),
                                               ctx.op("Reshape", [shift, flat]), zeros, ones], {"epsilon": 0.0})
        dx = ctx.op("Sub", [ctx.op("Mul", [g, k]), affine])
    if ctx.needs(1):
        dscale = ctx.op("Reshape", [ctx.op("Mul", [sum_gc, inv_std]), flat])
    if ctx.needs(2):
        db = ctx.op("Reshape", [sum_g, flat])
    return [dx, dscale, db, None, None]


def _batch_statistics(ctx: VJPContext, x, axes, per_channel):
    """The batch mean and biased variance, shaped to broadcast against x: the node's running outputs when
    its momentum is 0 (they are then exactly these), else recomputed (two passes over x and a square)."""
    if ctx.attr("momentum", 0.9) == 0.0 and len(ctx.outputs) == 3:
        return (ctx.op("Reshape", [ctx.outputs[1], per_channel]), ctx.op("Reshape", [ctx.outputs[2], per_channel]))
    mean = ctx.op("ReduceMean", [x, axes], {"keepdims": 1})
    centered = ctx.op("Sub", [x, mean])
    return mean, ctx.op("ReduceMean", [ctx.op("Mul", [centered, centered]), axes], {"keepdims": 1})
