"""Probe: variants of the LSTM training step's lowering, each in its own process, taking turns.

    python benchmarks/probes/lstm_variants.py [--rounds 4] [--steps 30] [--threads 1]
                                              [--variants per_gate,now,time_major+stacked_reuse]

Variants (patched into the worker before the Trainer is built; ``+`` combines them):
- ``now``: the tree as it is (one Sigmoid per step over the contiguous i, o, f gate block).
- ``per_gate``: the LSTM cell as before: one activation per gate (three Sigmoids per step).
- ``time_major``: the batch-first input projected time-major (graphc's Transpose kept), so each step's slice
  of the projection is a contiguous block of rows instead of a strided column block (tried, not kept).
- ``stacked_reuse``: ``reuse_stacked_gradients.py`` (this folder) after the gradient-sum fusion: the
  recurrent weight's fused product reads the stacked gate gradients instead of a fresh copy (tried, not
  kept; with ``time_major`` for the first layer too).
Prints per variant the median wall ms/step over rounds [min-max], its ratio to the first variant in the
same round, and the process CPU ms per step (``time.process_time``), with the step's node count.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import cpu_ms_per_call, report, round_ratios, spread, take_turns, time_ms, worker_spec  # noqa: E402


def _per_gate_cell(b, xp, state, w, acts):
    """The LSTM cell as it was before issue 11's LSTM work: Split into four gates, one activation each."""
    from passes.lower_recurrent import _activation
    f_act, g_act, h_act = acts
    if w.p is not None:
        return _lowering_cell(b, xp, state, w, acts)
    gates = xp if state is None else b.gemm(state[0], w.r, xp)
    i, o, f, c = b.split(gates, 1, 4)
    i, f, c = _activation(b, f_act, i), _activation(b, f_act, f), _activation(b, g_act, c)
    cell = b.mul(i, c) if state is None else b.add(b.mul(f, state[1]), b.mul(i, c))
    h = b.mul(_activation(b, f_act, o), _activation(b, h_act, cell))
    if w.projection is not None:
        h = b.gemm(h, w.projection)
    return h, cell


_lowering_cell = None


def _time_major_input(x, layout):
    """Keep a time-major X as it is (graphc's layers feed Transpose(batch-first X)) instead of seeing through
    the Transpose: the projection's rows are then t*B + b, each step's slice a contiguous block of rows."""
    return x, 0 if layout == 0 else 1


def _with_stacked_reuse():
    """cleanup_pipeline with ReuseStackedGradientsPass (this folder) after the gradient-sum fusion."""
    import passes.pipelines as pipelines
    from reuse_stacked_gradients import ReuseStackedGradientsPass
    plain = pipelines.cleanup_pipeline

    def cleanup():
        pipeline = plain()
        named = list(zip(pipeline.names, pipeline.passes))
        at = pipeline.names.index("fuse-gradient-sums") + 1
        return pipelines.Pipeline(*named[:at], ("reuse-stacked-gradients", ReuseStackedGradientsPass()),
                                  *named[at:])
    pipelines.cleanup_pipeline = cleanup


def patch(variant: str) -> None:
    global _lowering_cell
    import passes.lower_recurrent as lowering
    if variant == "per_gate":
        _lowering_cell = lowering._lstm_cell
        lowering._lstm_cell = _per_gate_cell
    elif variant == "time_major":
        lowering._x_time_major = _time_major_input
    elif variant == "stacked_reuse":
        _with_stacked_reuse()
    elif variant != "now":
        raise SystemExit(f"unknown variant {variant!r}")


def worker(spec: dict) -> None:
    for part in spec["variant"].split("+"):
        patch(part)
    from profile_lstm import BATCH, CLASSES, FEATURES, build
    trainer = build(spec["length"], profile=False, threads=spec["threads"])
    rng = np.random.default_rng(0)
    data = [(rng.standard_normal((BATCH, spec["length"], FEATURES)).astype(np.float32),
             rng.integers(0, CLASSES, BATCH)) for _ in range(10)]
    count = [0]

    def one():
        xb, yb = data[count[0] % len(data)]
        count[0] += 1
        trainer.step({"x": xb, "y": yb})
    wall = float(np.median(time_ms(one, spec["steps"])))
    report({"median_ms": wall, "cpu_ms": cpu_ms_per_call(one, spec["steps"]),
            "nodes": len(trainer.step_model.graph.node)})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--length", type=int, default=28)
    parser.add_argument("--variants", default="per_gate,now")
    args = parser.parse_args()
    variants = args.variants.split(",")
    runs = take_turns(__file__, {v: {"variant": v, "steps": args.steps, "threads": args.threads,
                                     "length": args.length} for v in variants}, args.rounds)
    print(f"LSTM 2x128, {args.length} steps, batch 64, Adam, {args.threads} thread(s), {args.rounds} rounds "
          f"[min-max]: wall ms/step, ratio to {variants[0]} in the same round; CPU ms/step, ratio; nodes")
    for v in variants:
        print(f"  {v:34s} {spread(r['median_ms'] for r in runs[v]):>22s}  {spread(round_ratios(runs, v, variants[0])):>18s}"
              f"  {spread(r['cpu_ms'] for r in runs[v]):>22s}  {spread(round_ratios(runs, v, variants[0], 'cpu_ms')):>18s}"
              f"  {runs[v][0]['nodes']}")


if __name__ == "__main__":
    spec = worker_spec(sys.argv[1:])
    worker(spec) if spec is not None else main()
