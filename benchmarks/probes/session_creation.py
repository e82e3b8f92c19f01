"""Probe: ONNX Runtime session-creation time of the unrolled LSTM training step, by sequence length and
graph-optimisation level (where the growth with the unrolled length comes from).

    python benchmarks/probes/session_creation.py [--lengths 28,100] [--levels all,extended,basic,disable]
                                                 [--static-batch] [--override] [--no-symbolic] [--disable-optimizers NAME,...]
                                                 [--lean]

Builds ``bench_lstm.py``'s classifier training step (symbolic batch) at each length and times the
Trainer's first step (its session is created there, lazily, from a copy of the model with the batch dim
written in as the fed 64, lean above ``LEAN_SESSION_NODES`` nodes: ``runtime/training_session.py``),
then times ``onnxruntime.InferenceSession`` creation at each level (one process; the step model is
serialised once), and the median step time at that level over 10 steps. Variants: the symbolic batch
as is; ``--static-batch``: "batch" fixed to 64 in a copy of the model; ``--override``: the symbolic
model with ``SessionOptions.add_free_dimension_override_by_name("batch", 64)`` (what the Trainer did
before issue 11's build-time change); ``--lean``: the fixed-batch copy with ``lean_options`` (no graph
optimisations, no memory-reuse planning; the level given is then ignored).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

LEVELS = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
          "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC, "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}


def step_model(length: int):
    import bench_lstm

    import graphc as gc
    import graphc.nn.functional as F
    bench_lstm.STEPS = length
    gc.manual_seed(0)
    x = gc.input("x", shape=("batch", length, bench_lstm.FEATURES))
    y = gc.input("y", shape=("batch",), dtype="int64")
    model = bench_lstm.Classifier()
    loss = F.cross_entropy(model(x), y)
    start = time.perf_counter()
    trainer = gc.Trainer(loss, gc.optim.Adam(model.parameters(), lr=1e-3), inputs=[x, y])
    return trainer, time.perf_counter() - start


def fixed_batch(model):
    """A copy of the step model whose symbolic "batch" dims (inputs, outputs, value_info) are 64."""
    import copy
    model = copy.deepcopy(model)
    graph = model.graph
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        for dim in info.type.tensor_type.shape.dim:
            if dim.dim_param == "batch":
                dim.dim_value = 64
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="28,100")
    parser.add_argument("--levels", default="all,extended,basic,disable")
    parser.add_argument("--static-batch", action="store_true", help="also time the step with batch fixed to 64")
    parser.add_argument("--override", action="store_true",
                        help="also time the symbolic-batch step with SessionOptions.add_free_dimension_override_by_name"
                             "('batch', 64)")
    parser.add_argument("--no-symbolic", action="store_true",
                        help="skip the plain symbolic-batch session (about 110 s at 300 steps)")
    parser.add_argument("--disable-optimizers", default="", help="ORT optimizer names to disable (at every level)")
    parser.add_argument("--lean", action="store_true", help="also time the fixed-batch copy with lean_options")
    args = parser.parse_args()
    disabled = [n for n in args.disable_optimizers.split(",") if n]
    for length in (int(v) for v in args.lengths.split(",")):
        trainer, build_s = step_model(length)
        variants = {"symbolic batch": trainer.step_model.SerializeToString()}
        if args.static_batch:
            variants["batch = 64"] = fixed_batch(trainer.step_model).SerializeToString()
        if args.override:
            variants["override 64"] = variants["symbolic batch"]
        if args.lean:
            variants["batch = 64 lean"] = fixed_batch(trainer.step_model).SerializeToString()
        if args.no_symbolic:
            del variants["symbolic batch"]
        rng = np.random.default_rng(0)
        feeds = {"x": rng.standard_normal((64, length, 28)).astype(np.float32), "y": rng.integers(0, 10, 64)}
        start = time.perf_counter()
        trainer.step(feeds)
        first_s = time.perf_counter() - start
        print(f"length {length}: {len(trainer.step_model.graph.node)} nodes, Trainer built in {build_s:.2f} s, "
              f"first step (session created, batch pinned) {first_s:.2f} s: {build_s + first_s:.2f} s in all")
        for (name, data), level in ((v, lv) for v in variants.items() for lv in args.levels.split(",")):
            options = ort.SessionOptions()
            options.graph_optimization_level = LEVELS[level]
            if name == "override 64":
                options.add_free_dimension_override_by_name("batch", 64)
            if name == "batch = 64 lean":
                from runtime.training_session import lean_options
                lean_options(options)
            start = time.perf_counter()
            session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"],
                                           disabled_optimizers=disabled or None)
            created = time.perf_counter() - start
            known = {**trainer.session._extra_inputs, **trainer.session.state}
            state = {i.name: known[i.name] for i in session.get_inputs() if i.name not in feeds}
            times = []
            for _ in range(10):
                start = time.perf_counter()
                session.run(None, {**feeds, **state})
                times.append(time.perf_counter() - start)
            print(f"  {name:15s} {level:9s} session created in {created:6.2f} s; step {np.median(times) * 1e3:7.2f} ms")


if __name__ == "__main__":
    main()
