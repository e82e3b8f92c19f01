"""Probe: two settings of a training step in ONE process at 1 thread, their steps interleaved in short blocks.

    python benchmarks/probes/step_ab_interleaved.py [--model lenet] [--a default] [--b before] [--pairs 150]
                                                    [--block 4]

At one intra-op thread ONNX Runtime has no worker threads, so two sessions in one process do not disturb
each other (the reason the other probes use a process per setting is spinning workers at 2 threads). Both
trainers are built first (settings of ``lenet_dw_batch_last.py``, applied before building B only, so A is
built with the tree's rules unless ``--a`` names a setting that B does not change back), then blocks of
``--block`` steps alternate A, B, B, A, ...; each block's process CPU time and wall time per step are
recorded and the B / A ratio is taken per adjacent pair of blocks. On a machine loaded by others this
pairs steps seconds apart instead of a process apart, so load drift cancels better. Prints the median
ms per step of each and the median [quartiles] of the per-pair ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def build(model: str, setting: str):
    import cnn_step_variants
    import lenet_dw_batch_last as variants
    import lenet_step_layouts
    import step_variants
    lenet_step_layouts.patch_rules = variants.patch_rules
    cnn_step_variants.patch_rules = variants.patch_rules
    step_variants.patch_rules = variants.patch_rules
    for part in setting.split("+"):
        if part != "default":
            variants.patch_rules(part)
    from profile_step import build as build_trainer
    return build_trainer(model, profile=False)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--a", default="default")
    parser.add_argument("--b", default="before")
    parser.add_argument("--pairs", type=int, default=150)
    parser.add_argument("--block", type=int, default=4)
    args = parser.parse_args()
    import runtime.training_session as training_session
    plain = training_session.session_options
    training_session.session_options = lambda threads=None: plain(1)
    rng = np.random.default_rng(0)
    trainer_a, shape = build(args.model, args.a)
    data = [(rng.standard_normal((64, *shape)).astype(np.float32), rng.integers(0, 10, 64)) for _ in range(10)]
    trainer_a.step({"x": data[0][0], "y": data[0][1]})  # the step graph and session are built at the first step
    trainer_b, _ = build(args.model, args.b)
    trainer_b.step({"x": data[0][0], "y": data[0][1]})
    # B's new Parameters bump graphc's requires-grad version, which would make A rebuild its step (with B's
    # rules) at its next call: A's parameters did not change, so A is marked as built for this version.
    from graphc.nn.parameter import requires_grad_version
    trainer_a._built_for = requires_grad_version()
    count = [0]

    def block(trainer):
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(args.block):
            xb, yb = data[count[0] % len(data)]
            count[0] += 1
            trainer.step({"x": xb, "y": yb})
        return (time.process_time() - c0) * 1e3 / args.block, (time.perf_counter() - t0) * 1e3 / args.block

    for _ in range(5):
        block(trainer_a), block(trainer_b)
    a_runs, b_runs = [], []
    for i in range(args.pairs):
        if i % 2:
            b_runs.append(block(trainer_b))
            a_runs.append(block(trainer_a))
        else:
            a_runs.append(block(trainer_a))
            b_runs.append(block(trainer_b))
    nodes = [len(t.step_model.graph.node) for t in (trainer_a, trainer_b)]  # after the runs: no rebuild
    for k, label in ((0, "CPU"), (1, "wall")):
        ratios = sorted(b[k] / a[k] for a, b in zip(a_runs, b_runs))
        q = statistics.quantiles(ratios, n=4)
        print(f"{args.model} {label:4s}: A {args.a} {statistics.median(r[k] for r in a_runs):.3f} ms, "
              f"B {args.b} {statistics.median(r[k] for r in b_runs):.3f} ms per step; "
              f"B/A per pair {statistics.median(ratios):.3f} [{q[0]:.3f}-{q[2]:.3f}] over {len(ratios)} pairs "
              f"(nodes {nodes[0]} / {nodes[1]})")


if __name__ == "__main__":
    main()
