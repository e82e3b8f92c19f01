"""Probe: variants of graphc's training steps (session settings, gradient lowerings), each in its own process.

    python benchmarks/probes/step_variants.py [--models mlp,lenet,cnn] [--rounds 3] [--steps 60]
                                              [--settings default,no_spinning,...]

ONNX Runtime settings tried on top of runtime.training_session.session_options: no thread spinning
(``session.intra_op.allow_spinning=0``); no memory-pattern planning; no CPU arena; the priority-based
execution order; the parallel executor (the memory-efficient order exists only in training builds). Lowering variants (rule switches patched in
the worker): ``pool_unpool`` (MaxUnpool instead of the mask for small maps), ``pool_mask`` (the mask for
every tiling MaxPool), ``dw_patches`` / ``dw_transposed`` (one Conv weight-gradient lowering for all
layers), ``before_issue_11`` (MaxPool by ScatterElements and the old patches layout, as before issue 11). The variants take turns, each run in a fresh process, round after round; prints per model the
median step time over rounds [min-max] and its ratio to the first setting in the same round. Settings combine with ``+``
(``no_spinning+pool_unpool``): without spinning, the CPU time also printed counts work, not waiting.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import cpu_ms_per_call, report, round_ratios, spread, take_turns, time_ms, worker_spec  # noqa: E402

SETTINGS = ["default", "no_spinning", "no_mem_pattern", "no_arena", "priority_order",
            "parallel"]
LOWERINGS = ["pool_unpool", "pool_mask", "dw_patches", "dw_transposed", "before_issue_11"]


def _legacy_patches_weight_grad(ctx, x, g, w, strides, dilations, pads, group):
    """The patches lowering as it was before issue 11: g @ patches^T (the large patches tensor transposed)."""
    from passes.autodiff.helpers import static_dims
    import passes.autodiff.rules.conv as conv_rules
    w_dims = static_dims(w)
    out_c, in_per_group, kernel = w_dims[0], w_dims[1], list(w_dims[2:])
    taps = int(np.prod(kernel))
    if group == 1 and taps > out_c:
        return conv_rules._weight_grad_by_transposed_batch(ctx, x, g, kernel, strides, dilations, pads)
    channels = in_per_group * group
    eye = np.zeros((channels * taps, 1, *kernel), dtype=w.dtype.numpy())
    for c in range(channels):
        for t in range(taps):
            eye[(c * taps + t, 0, *np.unravel_index(t, kernel))] = 1
    patches = ctx.op("Conv", [x, ctx.e.const(eye)], {"strides": strides, "dilations": dilations, "pads": pads,
                                                     "group": channels, "kernel_shape": kernel})
    patches = ctx.op("Reshape", [patches, ctx.e.ints([0, group, in_per_group * taps, -1])])
    grads = ctx.op("Reshape", [g, ctx.e.ints([0, group, out_c // group, -1])])
    per_sample = ctx.op("MatMul", [grads, ctx.op("Transpose", [patches], {"perm": [0, 1, 3, 2]})])
    summed = ctx.op("ReduceSum", [per_sample, ctx.e.ints([0])], {"keepdims": 0})
    return ctx.op("Reshape", [summed, ctx.e.ints([out_c, in_per_group, *kernel])])


def patch_rules(setting: str) -> None:
    import passes.autodiff.rules.conv as conv_rules
    import passes.autodiff.rules.pool as pool_rules
    if setting == "pool_unpool":
        pool_rules.MASK_MAX_ELEMENTS_PER_SAMPLE = 0
    elif setting == "pool_mask":
        pool_rules.MASK_MAX_ELEMENTS_PER_SAMPLE = 1 << 62
    elif setting == "before_issue_11":  # MaxPool by ScatterElements, the old patches layout
        pool_rules.MASK_MAX_ELEMENTS_PER_SAMPLE = 0
        pool_rules._windows_disjoint = lambda ctx, nd: False
        conv_rules._conv_weight_grad = _legacy_patches_weight_grad
    elif setting.startswith("dw_"):
        choice = {"dw_patches": "patches", "dw_transposed": "transposed_batch"}[setting]
        conv_rules.weight_grad_lowering = lambda out_channels, taps, group: choice if group == 1 else "patches"


def configure(options, setting: str):
    import onnxruntime as ort
    if setting == "no_spinning":
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    elif setting == "no_mem_pattern":
        options.enable_mem_pattern = False
    elif setting == "no_arena":
        options.enable_cpu_mem_arena = False
    elif setting == "priority_order":
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    elif setting == "parallel":
        options.execution_mode = ort.ExecutionMode.ORT_PARALLEL
    return options


def worker(spec: dict) -> None:
    import runtime.training_session as training_session
    plain = training_session.session_options
    parts = spec["setting"].split("+")  # settings combine: "no_spinning+pool_unpool"

    def options(threads=None):
        result = plain(threads)
        for part in parts:
            configure(result, part)
        return result
    training_session.session_options = options
    for part in parts:
        patch_rules(part)
    from profile_step import build
    trainer, shape = build(spec["model"], profile=False)
    rng = np.random.default_rng(0)
    data = [(rng.standard_normal((64, *shape)).astype(np.float32), rng.integers(0, 10, 64)) for _ in range(10)]
    count = [0]

    def one():
        xb, yb = data[count[0] % len(data)]
        count[0] += 1
        trainer.step({"x": xb, "y": yb})
    report({"median_ms": float(np.median(time_ms(one, spec["steps"]))), "cpu_ms": cpu_ms_per_call(one, spec["steps"])})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp,lenet,cnn")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--settings", default=",".join(SETTINGS))
    args = parser.parse_args()
    settings = args.settings.split(",")
    for model in args.models.split(","):
        runs = take_turns(__file__, {s: {"model": model, "setting": s, "steps": args.steps} for s in settings},
                          args.rounds)
        print(f"{model}: over {args.rounds} rounds [min-max]: median step ms, its ratio to {settings[0]} in the "
              f"same round; CPU ms per step (all threads), its ratio")
        for s in settings:
            print(f"  {s:24s} {spread(r['median_ms'] for r in runs[s]):>22s}  "
                  f"{spread(round_ratios(runs, s, settings[0])):>18s}  {spread(r['cpu_ms'] for r in runs[s]):>22s}  "
                  f"{spread(round_ratios(runs, s, settings[0], 'cpu_ms')):>18s}")


if __name__ == "__main__":
    spec = worker_spec(sys.argv[1:])
    worker(spec) if spec is not None else main()
