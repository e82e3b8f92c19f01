"""Probe: where the LSTM classifier's training step spends its time (ONNX Runtime profiler), and its node counts.

    python benchmarks/probes/profile_lstm.py [--steps 30] [--top 20] [--threads N] [--no-profile]
    python benchmarks/probes/profile_lstm.py --count-only --lengths 28,300 [--first-step] [--variant per_gate]

Builds ``bench_lstm.py``'s 2x128 LSTM classifier (Adam, batch 64), trains ``--steps`` steps under ONNX
Runtime's profiler and prints kernel milliseconds per step by op type with node counts, the median wall
time and process CPU time per step (graphc alone in this process). ``--count-only`` builds the training
step at each of ``--lengths`` unrolled lengths and prints its node count per op type (``--first-step``:
and the first step's time, which creates the session). ``--variant``: a variant of ``lstm_variants.py``.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import runtime.training_session as training_session  # noqa: E402

import graphc as gc  # noqa: E402
import graphc.nn.functional as F  # noqa: E402

BATCH, FEATURES, HIDDEN, LAYERS, CLASSES = 64, 28, 128, 2, 10


from bench_lstm import Classifier  # noqa: E402  (the benchmark's 2x128 LSTM classifier)


def build(steps: int, profile: bool, threads: int | None = None):
    if profile:
        plain = training_session.session_options

        def profiled(threads=None):
            options = plain(threads)
            options.enable_profiling = True
            return options
        training_session.session_options = profiled
    gc.manual_seed(0)
    model = Classifier()
    x = gc.input("x", shape=("batch", steps, FEATURES))
    y = gc.input("y", shape=("batch",), dtype="int64")
    trainer = gc.Trainer(F.cross_entropy(model(x), y), gc.optim.Adam(model.parameters(), lr=1e-3),
                         inputs=[x, y], seed=0, threads=threads)
    return trainer


def op_counts(trainer) -> collections.Counter:
    return collections.Counter(n.op_type for n in trainer.step_model.graph.node)


def count_only(lengths, first_step: bool) -> None:
    for steps in lengths:
        start = time.perf_counter()
        trainer = build(steps, profile=False)
        ops = op_counts(trainer)
        built = time.perf_counter() - start
        line = f"{steps} steps: {sum(ops.values())} nodes (graph built in {built:.2f} s"
        if first_step:  # the session is created at the first step
            start = time.perf_counter()
            trainer.step({"x": np.zeros((BATCH, steps, FEATURES), np.float32), "y": np.zeros(BATCH, np.int64)})
            line += f", first step (session creation) {time.perf_counter() - start:.2f} s"
        print(line + ")")
        print("  " + ", ".join(f"{op} {n}" for op, n in ops.most_common()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--top", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--length", type=int, default=28, help="unrolled sequence length")
    parser.add_argument("--no-profile", action="store_true", help="only the median step time")
    parser.add_argument("--count-only", action="store_true")
    parser.add_argument("--lengths", default="28,300")
    parser.add_argument("--first-step", action="store_true", help="with --count-only: also time the first step")
    parser.add_argument("--variant", default="now", help="a variant of lstm_variants.py (before profiling)")
    args = parser.parse_args(argv)
    from lstm_variants import patch
    for part in args.variant.split("+"):
        patch(part)
    if args.count_only:
        return count_only([int(n) for n in args.lengths.split(",")], args.first_step)
    trainer = build(args.length, not args.no_profile, args.threads)
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((BATCH, args.length, FEATURES)).astype(np.float32),
                rng.integers(0, CLASSES, BATCH)) for _ in range(10)]
    for xb, yb in batches:
        trainer.step({"x": xb, "y": yb})
    times, cpu = [], []
    for i in range(args.steps):
        xb, yb = batches[i % len(batches)]
        start, start_cpu = time.perf_counter(), time.process_time()
        trainer.step({"x": xb, "y": yb})
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    ops = op_counts(trainer)
    print(f"lstm {args.length} steps: median step {statistics.median(times) * 1e3:.2f} ms "
          f"(min {min(times) * 1e3:.2f}), CPU {statistics.median(cpu) * 1e3:.2f} ms, {sum(ops.values())} nodes")
    if args.no_profile:
        return
    path = trainer.session.session.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    per_op = collections.defaultdict(float)
    per_node = collections.defaultdict(float)
    shapes = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 1e3
            node = e["name"][:-len("_kernel_time")]
            per_node[node] += e["dur"] / 1e3
            shapes[node] = (e["args"]["op_name"], e["args"].get("output_type_shape"))
    runs = args.steps + len(batches)
    total = sum(per_op.values()) / runs
    print(f"kernel time {total:.2f} ms/step")
    for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {op:24s} {ms / runs:7.3f} ms  {ms / runs / total:5.1%}  x{ops.get(op, 0)}")
    print("slowest nodes (ms/step, op, output shapes):")
    for node, ms in sorted(per_node.items(), key=lambda kv: -kv[1])[:args.top]:
        op, out = shapes[node]
        print(f"  {ms / runs:7.3f}  {op:10s} {node[:40]:40s} {[list(o.values())[0] for o in out or []]}")
    print("nodes: " + ", ".join(f"{op} {n}" for op, n in ops.most_common()))


if __name__ == "__main__":
    main()
