"""Probe: the CNN training steps with and without issue 11's later rewrites, each variant in its own process.

    python benchmarks/probes/cnn_step_variants.py [--models lenet,cnn] [--rounds 4] [--steps 30]
                                                  [--settings default,relu_first] [--threads 1]

Settings (combine with ``+``), on top of ``step_variants.py``'s (``pool_mask``, ``no_spinning``, ...):
``relu_first`` leaves ``MaxPool(Relu(x))`` as built (``PoolBeforeReluPass`` off); ``no_view`` leaves
MaxPools on (N, C, H, W) (``PoolOnChannelViewPass`` off); ``mask_where`` the MaxPool mask lowering by
``Where`` as before (``pool_mask``: the mask for every tiling pool). The variants take turns, a fresh process each, round after round (``common.take_turns``); per model prints the median
step time over rounds [min-max], its ratio to the first setting in the same round, and the process CPU
time per step. ``--threads 1`` gives steadier figures on a loaded machine (one thread is less disturbed
by the other core's load).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import step_variants  # noqa: E402
from common import settings_main, worker_spec  # noqa: E402

_inherited_patch_rules = step_variants.patch_rules


def _mask_by_where(ctx, x, kernel):
    """The MaxPool mask lowering as it was before the arithmetic (N*C, 1, H, W) form (setting ``mask_where``)."""
    import numpy as np

    from passes.autodiff.helpers import static_dims
    x_sp = static_dims(x)[2:]
    taps = int(np.prod(kernel))
    within = np.ravel_multi_index(np.meshgrid(*[np.arange(size) % k for size, k in zip(x_sp, kernel)],
                                              indexing="ij"), kernel)
    numbers = ctx.e.const(-within.astype(np.float32)[None, None])
    scales = ctx.e.const(np.asarray([1, 1, *kernel], dtype=np.float32))
    nearest = {"mode": "nearest", "nearest_mode": "floor", "coordinate_transformation_mode": "asymmetric"}

    def upsample(value):
        return ctx.op("Resize", [value, None, scales], nearest)
    is_max = ctx.op("Equal", [x, upsample(ctx.outputs[0])])
    score = ctx.op("Where", [is_max, numbers, ctx.const(-taps, x)])
    first = ctx.op("MaxPool", [score], {"kernel_shape": kernel, "strides": kernel})
    return ctx.op("Where", [ctx.op("Equal", [numbers, upsample(first)]), upsample(ctx.g), ctx.const(0, x)])


def patch_rules(setting: str) -> None:
    if setting == "mask_where":
        import passes.autodiff.rules.pool as pool_rules
        pool_rules._max_pool_mask_vjp = _mask_by_where
    elif setting == "no_view":
        import onnx_ir as ir

        from passes.pool_channel_view import PoolOnChannelViewPass
        PoolOnChannelViewPass.call = lambda self, model: ir.passes.PassResult(model, False)
    elif setting == "relu_first":
        import onnx_ir as ir

        from passes.pool_before_relu import PoolBeforeReluPass
        PoolBeforeReluPass.call = lambda self, model: ir.passes.PassResult(model, False)
    else:
        _inherited_patch_rules(setting)


def worker(spec: dict) -> None:
    import runtime.training_session as training_session
    step_variants.patch_rules = patch_rules
    if spec.get("threads"):
        plain = training_session.session_options
        training_session.session_options = lambda threads=None: plain(spec["threads"])
    step_variants.worker(spec)


def main():
    settings_main(__file__, __doc__, models="lenet,cnn", settings="default,relu_first", rounds=4, steps=30,
                  width=24)


if __name__ == "__main__":
    spec = worker_spec(sys.argv[1:])
    worker(spec) if spec is not None else main()
