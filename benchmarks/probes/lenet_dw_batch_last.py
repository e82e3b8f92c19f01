"""Probe: LeNet's step with and without the batch-last patches weight gradient and the two-step batch-last Transpose.

    python benchmarks/probes/lenet_dw_batch_last.py [--models lenet,cnn] [--rounds 6] [--steps 40] [--threads 1]
                                                    [--settings default,before]

Settings (combine with ``+``; also every setting of ``lenet_step_layouts.py`` and ``cnn_step_variants.py``):
- ``conv2_shifted``: ``_batch_last_patches_fit`` off: every shifted-Gemm layer (LeNet's conv2 too) takes
  ``_weight_grad_by_shifted_gemm`` as before;
- ``plain_transpose``: ``_batch_last`` as one Transpose (1, 2, 3, 0) whatever the sample's stride;
- ``before``: both (the tree before this probe's changes); ``tree``: the tree's rules back (in one process);
- ``fwd_patches``: ``passes/conv_from_patches.py`` wired in after the training-step pass: the forward Conv
  whose weight gradient built batch-last patches (LeNet's conv2) becomes Gemm(w as (O, C*k*k), patches
  [, bias as (O, 1)]) + a Transpose back to NCHW instead of ONNX Runtime's Conv (its own im2col);
- ``ko_dw1``, ``ko_dw2``: knock-outs (zeros for conv1's / conv2's weight gradient: wrong, for their cost).
Each setting runs in a fresh process, taking turns (``common.settings_main``): median step ms [min-max],
ratio to the first setting in the same round, process CPU ms per step and its ratio.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cnn_step_variants  # noqa: E402
import lenet_step_layouts  # noqa: E402
import step_variants  # noqa: E402
from common import settings_main, worker_spec  # noqa: E402

_inherited_patch_rules = lenet_step_layouts.patch_rules


def _plain_batch_last(ctx, value):
    return ctx.op("Transpose", [value], {"perm": [1, 2, 3, 0]})


def _share_patches_with_the_forward():
    """The training-step pipeline with ``ConvFromPatchesPass`` right after the training-step pass."""
    import passes.pipelines as pipelines
    from passes.conv_from_patches import ConvFromPatchesPass
    plain_pipeline = pipelines.training_step_pipeline

    def pipeline(step_pass):
        built = plain_pipeline(step_pass)
        at = built.names.index("training-step") + 1
        names, passes = list(built.names), list(built.passes)
        return pipelines.Pipeline(*zip(names[:at], passes[:at]), ("conv-from-patches", ConvFromPatchesPass()),
                                  *zip(names[at:], passes[at:]))
    pipelines.training_step_pipeline = pipeline


_TREE = {}


def _knock_out(conv_rules, setting):
    """``ko_dw1``: conv1's weight gradient (the shifted Gemm) as zeros; ``ko_dw2``: conv2's (the patches
    rule): what each costs in the step, an upper bound on any better lowering of it."""
    import numpy as np

    def zeros(ctx, out_c, channels, kernel):
        return ctx.e.const(np.zeros([out_c, channels, *kernel], np.float32))
    name = {"ko_dw1": "_weight_grad_by_shifted_gemm", "ko_dw2": "_weight_grad_by_batch_last_patches"}[setting]
    setattr(conv_rules, name,
            lambda ctx, x, g, out_c, channels, kernel, pads, padded: zeros(ctx, out_c, channels, kernel))


def patch_rules(setting: str) -> None:
    import passes.autodiff.rules.conv as conv_rules
    import passes.pipelines as pipelines
    names = ("_batch_last_patches_fit", "_batch_last", "_weight_grad_by_batch_last_patches",
             "_weight_grad_by_shifted_gemm")
    if not _TREE:
        _TREE.update({name: getattr(conv_rules, name) for name in names})
        _TREE["pipeline"] = pipelines.training_step_pipeline
    if setting.startswith("ko_"):  # knock-outs: zeros instead of a rule's result (wrong gradients; cost only)
        _knock_out(conv_rules, setting)
    elif setting == "tree":  # the tree's rules back (after another setting, in one process)
        for name in names:
            setattr(conv_rules, name, _TREE[name])
        pipelines.training_step_pipeline = _TREE["pipeline"]
    elif setting == "fwd_patches":
        _share_patches_with_the_forward()
    elif setting == "before":
        patch_rules("conv2_shifted")
        patch_rules("plain_transpose")
    elif setting == "conv2_shifted":
        conv_rules._batch_last_patches_fit = lambda *args: False
    elif setting == "plain_transpose":
        conv_rules._batch_last = _plain_batch_last
    else:
        _inherited_patch_rules(setting)


def worker(spec: dict) -> None:
    lenet_step_layouts.patch_rules = patch_rules
    cnn_step_variants.patch_rules = patch_rules
    step_variants.patch_rules = patch_rules
    cnn_step_variants.worker(spec)


def main():
    settings_main(__file__, __doc__, models="lenet", settings="default,before", rounds=6, steps=40,
                  width=24)


if __name__ == "__main__":
    spec = worker_spec(sys.argv[1:])
    worker(spec) if spec is not None else main()
