"""Probe: kernel time of two parts of the LSTM classifier's step under ONNX Runtime's profiler, per variant.

    python benchmarks/probes/lstm_profile_parts.py --variant stacked_y [--threads 1] [--steps 40]
    python benchmarks/probes/lstm_profile_parts.py --variant gathered_weights

Builds ``bench_lstm.py``'s classifier with a variant of ``lstm_variants.py`` patched in, runs ``--steps`` steps
under the profiler and prints the step's kernel ms and two parts:
- the stacked-Y path (what a one-step Slice of layer 2's Y costs when it reads the stacked Y): Pad, Transpose
  and Slice nodes, layer 2's Y Concat and the 28-way Split of the padded gradient (``stacked_y``);
- weight-sized nodes: those with no output dim of a batch-sized extent (64, 1728, 1792, 14336), Gemm excluded:
  the weights' gate re-ordering and its gradient, and Adam (``gathered_weights`` against ``now``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

_BATCH_DIMS = {64, 1728, 1792, 14336}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", default="now")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    from lstm_variants import patch
    for part in args.variant.split("+"):
        patch(part)
    from profile_lstm import BATCH, CLASSES, FEATURES, build
    trainer = build(28, profile=True, threads=args.threads)
    rng = np.random.default_rng(0)
    xb, yb = rng.standard_normal((BATCH, 28, FEATURES)).astype(np.float32), rng.integers(0, CLASSES, BATCH)
    for _ in range(args.steps + 1):
        trainer.step({"x": xb, "y": yb})
    path = trainer.session.session.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    runs = args.steps + 1
    total, stacked, weights = 0.0, {}, collections.defaultdict(float)
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        name, op, ms = e["name"][:-len("_kernel_time")], e["args"]["op_name"], e["dur"] / 1e3 / runs
        total += ms
        if op in ("Pad", "Transpose", "Slice") or name.endswith("LSTM_39/lowered/Concat_314") \
                or name == "train/Split_69":
            stacked[name.split("/")[-1]] = stacked.get(name.split("/")[-1], 0.0) + ms
        dims = {d for out in e["args"].get("output_type_shape") or [] for d in list(out.values())[0]}
        if op != "Gemm" and not dims & _BATCH_DIMS:
            weights[op] += ms
    print(f"{args.variant}: kernel {total:.2f} ms/step")
    print(f"  stacked-Y path {sum(stacked.values()):.3f} ms: "
          + ", ".join(f"{k} {v:.3f}" for k, v in sorted(stacked.items(), key=lambda kv: -kv[1])))
    print(f"  weight-sized nodes (no Gemm) {sum(weights.values()):.3f} ms: "
          + ", ".join(f"{k} {v:.3f}" for k, v in sorted(weights.items(), key=lambda kv: -kv[1])[:10]))


if __name__ == "__main__":
    main()
