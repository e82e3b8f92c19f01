"""Probe: the patches weight gradient over batch chunks (``_patches_batch_chunks``), in the whole training step.

    python benchmarks/probes/cnn_patch_chunks.py [--models cnn,lenet] [--rounds 4] [--steps 20] [--threads 1]
                                                 [--settings default,patches_whole,chunk4,chunk16]

Settings (combine with ``+``), on top of ``cnn_step_variants.py``'s: ``patches_whole`` the patches rule on the
whole batch, as before the chunks (``PATCHES_CHUNK_ABOVE`` out of reach); ``chunkB`` chunks of B samples
(64 / B of them, for batch 64); ``chunk_allB`` every patches layer chunked (the padded CNN's conv1 too);
``mask_max`` the MaxPool mask with ``Max(first, 1/2)`` on the pooled map instead of the full-size ``And``.
Each variant runs in its own process, the variants taking turns round after round (``common.take_turns``);
prints the median wall ms per step [min-max], its ratio to the first setting in the same round, and the
process CPU ms per step with its ratio.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import settings_main, worker_spec  # noqa: E402


def _mask_with_max(ctx, x, kernel):
    """The MaxPool mask with Max(first, 1/2) on the pooled map instead of And(weight == first, is_max) on the
    full one (tried, not kept): a window without a maximum equal to y has weights 0, 1/2 matches none."""
    import numpy as np
    import onnx_ir as ir

    from passes.autodiff.helpers import static_dims
    dims = static_dims(x)
    x_sp = dims[2:]
    out_sp = [size // k for size, k in zip(x_sp, kernel)]
    taps = int(np.prod(kernel))
    within = np.ravel_multi_index(np.meshgrid(*[np.arange(size) % k for size, k in zip(x_sp, kernel)],
                                              indexing="ij"), kernel)
    weights = ctx.e.const((2.0 ** (taps - 1 - within)).astype(np.float32)[None, None])
    scales = ctx.e.const(np.asarray([1, 1, *kernel], dtype=np.float32))
    nearest = {"mode": "nearest", "nearest_mode": "floor", "coordinate_transformation_mode": "asymmetric"}

    def upsampled_view(value):
        return ctx.op("Resize", [ctx.op("Reshape", [value, ctx.e.ints([-1, 1, *out_sp])]), None, scales], nearest)
    is_max = ctx.op("Equal", [ctx.op("Reshape", [x, ctx.e.ints([-1, 1, *x_sp])]), upsampled_view(ctx.outputs[0])])
    weight = ctx.op("Mul", [ctx.op("Cast", [is_max], {"to": ir.DataType.FLOAT}), weights])
    pooled = ctx.op("MaxPool", [weight], {"kernel_shape": kernel, "strides": kernel})
    first = ctx.op("Resize", [ctx.op("Max", [pooled, ctx.const(0.5, x)]), None, scales], nearest)
    chosen = ctx.op("Equal", [weight, first])
    dx = ctx.op("Mul", [ctx.op("Cast", [chosen], {"to": ir.DataType.FLOAT}), upsampled_view(ctx.g)])
    return ctx.op("Reshape", [dx, ctx.e.ints([-1, *dims[1:]])])


def _chunk_rules(setting: str) -> None:
    import passes.autodiff.rules.conv as conv_rules
    import passes.autodiff.rules.pool as pool_rules
    if setting == "mask_max":
        pool_rules._max_pool_mask_vjp = _mask_with_max
    elif setting == "patches_whole":
        conv_rules.PATCHES_CHUNK_ABOVE = 1 << 62
    elif setting.startswith("chunk_all"):
        conv_rules.PATCHES_CHUNK_ABOVE = 0
        conv_rules.PATCHES_CHUNK_SAMPLES = int(setting[len("chunk_all"):])
        conv_rules.PATCHES_CHUNK_COUNT = 64 // conv_rules.PATCHES_CHUNK_SAMPLES
    elif setting.startswith("chunk"):
        conv_rules.PATCHES_CHUNK_SAMPLES = int(setting[len("chunk"):])
        conv_rules.PATCHES_CHUNK_COUNT = 64 // conv_rules.PATCHES_CHUNK_SAMPLES
    else:
        _inherited(setting)


def worker(spec: dict) -> None:
    global _inherited
    import cnn_step_variants
    _inherited = cnn_step_variants._inherited_patch_rules
    cnn_step_variants._inherited_patch_rules = _chunk_rules
    cnn_step_variants.worker(spec)


def main():
    settings_main(__file__, __doc__, models="cnn", settings="default,patches_whole", rounds=4, steps=20,
                  width=18)


if __name__ == "__main__":
    spec = worker_spec(sys.argv[1:])
    worker(spec) if spec is not None else main()
