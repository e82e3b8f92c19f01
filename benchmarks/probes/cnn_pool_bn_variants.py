"""Probe: the padded CNN's pooling-mask and BatchNorm lowerings in the whole training step.

    python benchmarks/probes/cnn_pool_bn_variants.py [--models cnn,lenet] [--rounds 6] [--steps 20] [--threads 1]
                                                     [--settings default,mask_always_first]

Settings (combine with ``+``), on top of ``cnn_patch_chunks.py``'s and ``cnn_step_variants.py``'s:
``mask_always_first`` the MaxPool mask as before the tie test (the first-maximum weights on every
window, no ``If``); ``bn_before`` BatchNorm's training forward and gradient as before (the node's momentum
0.9, its running outputs unread, the batch mean and variance recomputed by ReduceMean, Sub, Mul, ReduceMean;
dx in four passes); ``bn_dx_four_passes`` the batch statistics read from the node (as now) but dx as
before, ``k·g - (c·slope + shift)`` by Mul, Mul, Add, Sub; ``mask_if_dx`` the ``If`` returning dx rather
than the mask (``_mask_if_dx``). Each variant runs in its own process, the variants taking turns round after round
(``common.take_turns``); prints the median wall ms per step [min-max], its ratio to the first setting in
the same round, and the process CPU ms per step with its ratio.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import settings_main, worker_spec  # noqa: E402


def _mask_always_first(ctx, x, kernel):
    """The MaxPool mask before the tie test: the first-maximum weights on every window (setting
    ``mask_always_first``)."""
    import numpy as np
    import onnx_ir as ir

    from passes.autodiff.helpers import static_dims
    from passes.autodiff.rules.pool import _window_weights
    dims = static_dims(x)
    x_sp = dims[2:]
    out_sp = [size // k for size, k in zip(x_sp, kernel)]
    weights = ctx.e.const(_window_weights(x_sp, kernel))
    scales = ctx.e.const(np.asarray([1, 1, *kernel], dtype=np.float32))
    nearest = {"mode": "nearest", "nearest_mode": "floor", "coordinate_transformation_mode": "asymmetric"}

    def upsampled_view(value):
        return ctx.op("Resize", [ctx.op("Reshape", [value, ctx.e.ints([-1, 1, *out_sp])]), None, scales], nearest)
    is_max = ctx.op("Equal", [ctx.op("Reshape", [x, ctx.e.ints([-1, 1, *x_sp])]), upsampled_view(ctx.outputs[0])])
    weight = ctx.op("Mul", [ctx.op("Cast", [is_max], {"to": ir.DataType.FLOAT}), weights])
    first = ctx.op("Resize", [ctx.op("MaxPool", [weight], {"kernel_shape": kernel, "strides": kernel}), None, scales],
                   nearest)
    chosen = ctx.op("And", [ctx.op("Equal", [weight, first]), is_max])
    dx = ctx.op("Mul", [ctx.op("Cast", [chosen], {"to": ir.DataType.FLOAT}), upsampled_view(ctx.g)])
    return ctx.op("Reshape", [dx, ctx.e.ints([-1, *dims[1:]])])


def _batch_norm_before(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1,
                       eps=1e-5):
    """``F.batch_norm`` before the momentum-0 node (setting ``bn_before``): training mode recomputes the
    batch statistics for the running update."""
    from graphc import ops
    from graphc.nn import functional_spatial as fs
    if not training:
        return _batch_norm_now(x, running_mean, running_var, weight, bias, training, momentum, eps)
    channels = x.shape[1]
    ones = weight if weight is not None else fs._per_channel(x, 1.0)
    zeros = bias if bias is not None else fs._per_channel(x, 0.0)
    axes = (0,) + tuple(range(2, x.ndim))
    scratch = ops.mul(ops.reshape(fs._first_per_channel(x), -1), 0.0)
    y, _, _ = fs.emit("BatchNormalization", [x, ones, zeros, scratch, ops.add(scratch, 1.0)],
                      {"epsilon": eps, "momentum": 1.0 - momentum, "training_mode": 1}, shape=x.shape,
                      dtype=x.dtype, num_outputs=3, extra_outputs=[((channels,), x.dtype)] * 2)
    if running_mean is None:
        return y, None, None
    mean = ops.reduce("ReduceMean", x, axes, keepdim=True)
    centered = ops.sub(x, mean)
    var = ops.reduce("ReduceMean", ops.mul(centered, centered), axes, keepdim=True)
    count = fs._count(x, axes)
    batch_mean = ops.stop_gradient(ops.reshape(mean, channels))
    batch_var = ops.stop_gradient(ops.reshape(var, channels))
    unbiased = ops.mul(batch_var, ops.div(count, ops.sub(count, 1.0)))
    new_mean = ops.add(ops.mul(running_mean, 1.0 - momentum), ops.mul(batch_mean, float(momentum)))
    new_var = ops.add(ops.mul(running_var, 1.0 - momentum), ops.mul(unbiased, float(momentum)))
    return y, new_mean, new_var


def _bn_rule_dx_four_passes(ctx):
    """The training-mode BatchNorm rule with dx = k·g - (c·slope + shift) by Mul, Mul, Add, Sub (before)."""
    from passes.autodiff.rules.batch_norm_training import _batch_statistics
    x, scale, g = ctx.inputs[0], ctx.inputs[1], ctx.g
    rank = len(x.shape)
    axes = ctx.e.ints([0] + list(range(2, rank)))
    per_channel = ctx.e.ints([-1] + [1] * (rank - 2))
    mean, var = _batch_statistics(ctx, x, axes, per_channel)
    centered = ctx.op("Sub", [x, mean])
    inv_std = ctx.op("Reciprocal", [ctx.op("Sqrt", [ctx.op("Add", [var, ctx.const(ctx.attr("epsilon", 1e-5), x)])])])
    sum_g = ctx.op("ReduceSum", [g, axes], {"keepdims": 1})
    sum_gc = ctx.op("ReduceSum", [ctx.op("Mul", [g, centered]), axes], {"keepdims": 1})
    flat = ctx.e.ints([-1])
    count = ctx.op("Cast", [ctx.op("Div", [ctx.op("Size", [x]), ctx.op("Size", [scale])])], {"to": x.dtype})
    k = ctx.op("Mul", [ctx.op("Reshape", [scale, per_channel]), inv_std])
    shift = ctx.op("Div", [ctx.op("Mul", [k, sum_g]), count])
    slope = ctx.op("Div", [ctx.op("Mul", [ctx.op("Mul", [k, ctx.op("Mul", [inv_std, inv_std])]), sum_gc]), count])
    dx = ctx.op("Sub", [ctx.op("Mul", [g, k]), ctx.op("Add", [ctx.op("Mul", [centered, slope]), shift])])
    return [dx, ctx.op("Reshape", [ctx.op("Mul", [sum_gc, inv_std]), flat]) if ctx.needs(1) else None,
            ctx.op("Reshape", [sum_g, flat]) if ctx.needs(2) else None, None, None]


def _mask_if_dx(ctx, x, kernel):
    """The mask rule with the ``If`` returning dx (its branches multiply by the upsampled g) instead of the
    mask (setting ``mask_if_dx``): no second Cast in the cheap branch; the branches read the upsampled g,
    which extraction missed until ``passes/traversal.py`` followed subgraph reads (``node_reads``)."""
    import numpy as np
    import onnx_ir as ir

    from passes.autodiff.helpers import static_dims
    from passes.autodiff.rules import pool
    dims = static_dims(x)
    x_sp = dims[2:]
    out_sp = [size // k for size, k in zip(x_sp, kernel)]
    scales = ctx.e.const(np.asarray([1, 1, *kernel], dtype=np.float32))

    def upsampled(value):
        return ctx.op("Resize", [value, None, scales], pool._NEAREST)
    y_view = ctx.op("Reshape", [ctx.outputs[0], ctx.e.ints([-1, 1, *out_sp])])
    is_max = ctx.op("Equal", [ctx.op("Reshape", [x, ctx.e.ints([-1, 1, *x_sp])]), upsampled(y_view)])
    maxima = ctx.op("Cast", [is_max], {"to": ir.DataType.FLOAT})
    g_up = upsampled(ctx.op("Reshape", [ctx.g, ctx.e.ints([-1, 1, *out_sp])]))
    first_only = pool._branch("first", lambda e: e.op("Mul", [pool._first_maximum_only(
        e, is_max, maxima, pool._window_weights(x_sp, kernel), kernel, scales), g_up]))
    as_is = pool._branch("no_ties", lambda e: e.op("Mul", [maxima, g_up]))
    dx = ctx.op("If", [pool._has_tied_windows(ctx, maxima, kernel)],
                {"then_branch": first_only, "else_branch": as_is}, dtype=ir.DataType.FLOAT)
    return ctx.op("Reshape", [dx, ctx.e.ints([-1, *dims[1:]])])


def _rules(setting: str) -> None:
    global _batch_norm_now
    import graphc.nn.functional as F
    import passes.autodiff.rules.conv as conv_rules
    import passes.autodiff.rules.pool as pool_rules
    if setting == "mask_always_first":
        pool_rules._max_pool_mask_vjp = _mask_always_first
    elif setting == "mask_if_dx":
        pool_rules._max_pool_mask_vjp = _mask_if_dx
    elif setting in ("bn_before", "bn_dx_four_passes"):
        conv_rules.batch_norm_training_vjp = _bn_rule_dx_four_passes
        if setting == "bn_before":
            _batch_norm_now, F.batch_norm = F.batch_norm, _batch_norm_before
    else:
        _inherited(setting)


def worker(spec: dict) -> None:
    global _inherited
    import cnn_patch_chunks
    import cnn_step_variants
    cnn_patch_chunks._inherited = cnn_step_variants._inherited_patch_rules  # step_variants' own settings
    _inherited = cnn_patch_chunks._chunk_rules
    cnn_step_variants._inherited_patch_rules = _rules
    cnn_step_variants.worker(spec)


def main():
    settings_main(__file__, __doc__, models="cnn", settings="default,mask_always_first", rounds=6, steps=20,
                  width=22)


if __name__ == "__main__":
    spec = worker_spec(sys.argv[1:])
    worker(spec) if spec is not None else main()
