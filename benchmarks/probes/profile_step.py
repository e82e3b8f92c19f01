"""Probe: where a tutorial model's training step spends its time, per ONNX op type (ONNX Runtime profiler).

    python benchmarks/probes/profile_step.py [--model lenet|cnn|mlp] [--steps 30] [--top 15]
                                             [--dw patches|transposed_batch] [--no-profile]

Builds the model of ``bench_cnn.py`` (or the MLP), trains ``--steps`` steps under ONNX Runtime's
profiler and prints kernel milliseconds per step by op type, and the step's node count by op type.
Also prints the median step time (graphc alone in this process). ``--dw`` forces one lowering of every
Conv weight gradient (to compare them in the whole step; the rule otherwise picks per layer shape).
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


def build(model_key: str, profile: bool):
    from bench_cnn import MODELS
    from bench_mlp import SIZES, graphc_model
    if profile:
        plain = training_session.session_options

        def profiled(threads=None):
            options = plain(threads)
            options.enable_profiling = True
            return options
        training_session.session_options = profiled
    gc.manual_seed(0)
    if model_key == "mlp":
        x = gc.input("x", shape=("batch", SIZES[0]))
        model = graphc_model()
    else:
        x = gc.input("x", shape=("batch", 3, 32, 32))
        model = MODELS[model_key][1]()
    y = gc.input("y", shape=("batch",), dtype="int64")
    trainer = gc.Trainer(F.cross_entropy(model(x), y), gc.optim.Adam(model.parameters(), lr=1e-3),
                         inputs=[x, y], seed=0)
    if profile:  # sessions are created at the first step: restore the plain options after it
        first = trainer.step
        def step_then_restore(feeds):
            loss = first(feeds)
            training_session.session_options = plain
            trainer.step = first
            return loss
        trainer.step = step_then_restore
    return trainer, tuple(x.shape[1:])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet", choices=["lenet", "cnn", "mlp"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--no-profile", action="store_true", help="only the median step time")
    parser.add_argument("--nodes", type=int, default=0, help="also the N slowest single nodes with their input shapes")
    parser.add_argument("--dw", choices=["patches", "transposed_batch"], default=None)
    args = parser.parse_args(argv)
    if args.dw:
        import passes.autodiff.rules.conv as conv_rules
        conv_rules.weight_grad_lowering = lambda out_channels, taps, group: args.dw if group == 1 else "patches"
    trainer, shape = build(args.model, not args.no_profile)
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((64, *shape)).astype(np.float32), rng.integers(0, 10, 64))
               for _ in range(10)]
    for xb, yb in batches:
        trainer.step({"x": xb, "y": yb})
    times = []
    for i in range(args.steps):
        xb, yb = batches[i % len(batches)]
        start = time.perf_counter()
        trainer.step({"x": xb, "y": yb})
        times.append(time.perf_counter() - start)
    ops = collections.Counter(n.op_type for n in trainer.step_model.graph.node)
    print(f"{args.model}: median step {statistics.median(times) * 1e3:.2f} ms "
          f"(min {min(times) * 1e3:.2f}), {sum(ops.values())} nodes")
    if args.no_profile:
        return
    path = trainer.session.session.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    per_op = collections.defaultdict(float)
    per_node, shapes = collections.defaultdict(float), {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 1e3
            node = (e["name"][:-len("_kernel_time")], e["args"]["op_name"])
            per_node[node] += e["dur"] / 1e3
            shapes[node] = [list(d.values())[0] for d in e["args"].get("input_type_shape", [])]
    runs = args.steps + len(batches)
    total = sum(per_op.values()) / runs
    print(f"kernel time {total:.2f} ms/step")
    for op, ms in sorted(per_op.items(), key=lambda kv: -kv[1])[:args.top]:
        print(f"  {op:24s} {ms / runs:7.3f} ms  {ms / runs / total:5.1%}  x{ops.get(op, 0)}")
    if args.nodes:
        print("slowest nodes (ms/step, input shapes):")
        for (name, op), ms in sorted(per_node.items(), key=lambda kv: -kv[1])[:args.nodes]:
            print(f"  {ms / runs:7.3f} ms  {op:14s} {name[:48]:48s} {shapes[(name, op)]}")


if __name__ == "__main__":
    main()
