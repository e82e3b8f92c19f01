"""Probe: what the MLP's training step is made of, and whether several steps per ONNX Runtime call help.

    python benchmarks/probes/mlp_step_parts.py [--rounds 4] [--calls 400] [--variants adam,sgd,adam_k4,gemms]

Each variant runs in a process of its own, the variants taking turns (``common.take_turns``); each
reports the 1-thread process CPU time and the 2-thread wall time (median) per training step:

``adam``: graphc's step as ``bench_mlp.py`` builds it (Adam), run as ``session.run`` on the step's own
feeds, the state fed back (what ``Trainer.step`` does, without its Python checks).
``sgd``: the same network with plain SGD (one update pass per parameter instead of Adam's 12): the
difference is what Adam's element-wise passes cost.
``adam_k4``: the issue's direction "several steps per ONNX Runtime call": four copies of the Adam step
chained in one graph (each copy's state outputs feed the next copy's state inputs, four batches fed at
once), timed per step: what per-call overhead a Loop or unrolled K-step graph could save at best.
``gemms``: the step's five large products alone (forward, input and weight gradients of the two big
layers, each a one-node session on the step's shapes): the floor under the step at this GEMM rate.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import report, round_ratios, spread, take_turns, worker_spec  # noqa: E402

VARIANTS = ["adam", "sgd", "adam_k4", "gemms"]
BATCH = 64


def chain_steps(model, pairs, batch_inputs, copies: int):
    """``copies`` copies of a training step in one graph: copy k's state inputs are copy k-1's outputs,
    its batch inputs are renamed ``<name>__k``; the last copy's state outputs are the graph's."""
    import onnx
    graph = model.graph
    state_inputs, state_outputs = {i for i, _ in pairs}, {o for _, o in pairs}
    shared = {i.name for i in graph.input if i.name not in state_inputs and i.name not in batch_inputs}
    shared |= {t.name for t in graph.initializer}
    nodes, inputs, outputs, previous = [], [], [], {}
    for k in range(copies):
        def renamed(name, k=k, previous=previous):
            if name == "" or name in shared:
                return name
            if name in state_inputs and k > 0:
                return previous[name]
            return name if k == 0 else f"{name}__{k}"
        for node in graph.node:
            clone = copy.deepcopy(node)
            clone.name = f"{node.name}__{k}"
            clone.input[:] = [renamed(n) for n in node.input]
            clone.output[:] = [renamed(n) for n in node.output]
            nodes.append(clone)
        for value in graph.input:
            if value.name in batch_inputs or k == 0:
                clone = copy.deepcopy(value)
                clone.name = renamed(value.name)
                inputs.append(clone)
        previous = {i: renamed(o) for i, o in pairs}
        for value in graph.output:
            if value.name not in state_outputs or k == copies - 1:
                clone = copy.deepcopy(value)
                clone.name = renamed(value.name)
                outputs.append(clone)
    chained = onnx.helper.make_graph(nodes, "chained_steps", inputs, outputs, list(graph.initializer))
    result = onnx.helper.make_model(chained, opset_imports=model.opset_import)
    result.ir_version = model.ir_version
    return result


def step_runner(optimizer: str, copies: int, threads: int):
    """A closure running ``copies`` training steps per ONNX Runtime call, the state fed back."""
    import onnxruntime as ort

    import graphc as gc
    import graphc.nn.functional as F
    from bench_mlp import SIZES, graphc_model
    from runtime.training_session import pinned_model, session_options
    gc.manual_seed(0)
    x = gc.input("x", shape=("batch", SIZES[0]))
    y = gc.input("y", shape=("batch",), dtype="int64")
    model = graphc_model()
    opt = gc.optim.Adam(model.parameters(), lr=1e-3) if optimizer == "adam" else \
        gc.optim.SGD(model.parameters(), lr=1e-3)
    trainer = gc.Trainer(F.cross_entropy(model(x), y), opt, inputs=[x, y], seed=0, threads=threads)
    rng = np.random.default_rng(0)
    data = [{"x": rng.standard_normal((BATCH, SIZES[0])).astype(np.float32), "y": rng.integers(0, 10, BATCH)}
            for _ in range(8)]
    trainer.step(data[0])
    ts = trainer.session
    step = pinned_model(ts._model, {"batch": BATCH})
    if copies > 1:
        step = chain_steps(step, ts.state_pairs, ts.batch_inputs, copies)
    session = ort.InferenceSession(step.SerializeToString(), session_options(threads),
                                   providers=["CPUExecutionProvider"])
    names = [o.name for o in step.graph.output]
    last = "" if copies == 1 else f"__{copies - 1}"
    state = {"now": dict(ts.state)}
    feeds_of_batches = []
    for start in range(0, 8, copies):
        feeds = {}
        for k in range(copies):
            batch = data[(start + k) % 8]
            feeds.update({(n if k == 0 else f"{n}__{k}"): batch[n] for n in ("x", "y")})
        feeds_of_batches.append(feeds)
    counter = {"i": 0}

    def run():
        feeds = feeds_of_batches[counter["i"] % len(feeds_of_batches)]
        counter["i"] += 1
        out = dict(zip(names, session.run(None, {**feeds, **ts._extra_inputs, **state["now"]})))
        state["now"] = {i: out[o + last] for i, o in ts.state_pairs}
    return run


def gemm_runner(threads: int):
    """The step's large products (fc1 and fc2 forward, weight and input gradients) as one-node sessions."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from bench_mlp import SIZES
    from runtime.training_session import session_options
    rng = np.random.default_rng(0)
    sessions = []
    for fan_in, fan_out in zip(SIZES[:-1], SIZES[1:]):
        shapes = {"fwd": ((BATCH, fan_in), (fan_out, fan_in), {"transB": 1}),
                  "dW": ((BATCH, fan_out), (BATCH, fan_in), {"transA": 1}),
                  "dX": ((BATCH, fan_out), (fan_out, fan_in), {})}
        for kind, (a, b, attrs) in shapes.items():
            if kind == "dX" and fan_in == SIZES[0]:
                continue  # the first layer's input gradient is not computed
            graph = helper.make_graph([helper.make_node("Gemm", ["a", "b"], ["y"], **attrs)], kind,
                                      [helper.make_tensor_value_info("a", TensorProto.FLOAT, a),
                                       helper.make_tensor_value_info("b", TensorProto.FLOAT, b)],
                                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, None])])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            model.ir_version = 10
            onnx.checker.check_model(model)
            session = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                           providers=["CPUExecutionProvider"])
            sessions.append((session, {"a": rng.standard_normal(a).astype(np.float32),
                                       "b": rng.standard_normal(b).astype(np.float32)}))

    def run():
        for session, feeds in sessions:
            session.run(None, feeds)
    return run


def worker(spec: dict) -> None:
    variant, calls = spec["variant"], spec["calls"]
    copies = 4 if variant.endswith("_k4") else 1
    result = {}
    for threads in (1, 2):
        run = gemm_runner(threads) if variant == "gemms" else step_runner(variant.split("_")[0], copies, threads)
        for _ in range(20):
            run()
        if threads == 1:
            start = time.process_time()
            for _ in range(calls // copies):
                run()
            result["cpu_ms"] = (time.process_time() - start) * 1e3 / ((calls // copies) * copies)
        else:
            times = []
            for _ in range(calls // copies):
                start = time.perf_counter()
                run()
                times.append((time.perf_counter() - start) * 1e3 / copies)
            result["median_ms"] = float(np.median(times))
    report(result)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    specs = {v: {"variant": v, "calls": args.calls} for v in variants}
    results = take_turns(os.path.abspath(__file__), specs, args.rounds)
    print(f"MLP step parts, batch {BATCH}; {args.rounds} rounds, each variant in its own process; "
          f"median [min-max] over rounds; ratio to {variants[0]} per round")
    for v in variants:
        cpu = [r["cpu_ms"] for r in results[v]]
        wall = [r["median_ms"] for r in results[v]]
        print(f"  {v:10s} 1-thread CPU {spread(cpu)} ms/step (ratio {spread(round_ratios(results, v, variants[0], 'cpu_ms'))})"
              f"   2-thread wall {spread(wall)} ms/step (ratio {spread(round_ratios(results, v, variants[0]))})")
    return results


if __name__ == "__main__":
    spec = worker_spec(sys.argv[1:])
    if spec is not None:
        worker(spec)
    else:
        main()
