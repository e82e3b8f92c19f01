"""Probe: the MLP (and CNN) training step's update, finiteness check and Python overhead, each variant in its own process.

    python benchmarks/probes/mlp_step_variants.py [--models mlp] [--rounds 4] [--steps 300]
                                                  [--variants before,adam,after,after+io_binding]
    python benchmarks/probes/mlp_step_variants.py --in-process 250 --variants before,after,after+matmul_check

Variants (the lowerings as they were before are patched into the worker):
``before``: Adam as 13 element-wise passes (sqrt(v) / sqrt(bc2) + eps) and the step through the public
``InferenceSession.run``; ``adam``: the 12-pass Adam (sqrt(v) + eps sqrt(bc2), one scalar lr sqrt(bc2) / bc1),
the public run; ``after``: the 12-pass Adam with a plain-feeds step calling ONNX Runtime's ``_sess.run``
(tried and not kept: graphc's step uses the public run, so on today's tree ``after`` equals ``adam``);
``+ort_run``: that step through the public run; ``+matmul_check``: the finiteness check by ``MatMul(zeros(1, rows), g)`` per 2-D gradient
instead of ``ReduceSum(g * 0)`` (tried, not kept); ``+io_binding``: ``gc.Trainer(..., io_binding=True)``.

Each worker measures, on the same 10 batches: the CPU time per ``trainer.step`` with ``threads=1`` (one
thread: the least disturbed by the other core's load), then the wall time (median) with the default two
threads; and, in the 1-thread session, the bare ``session.run`` on the step's own feeds, so
``step - bare`` is the Python side of ``Trainer.step``. Prints medians over rounds [min-max] and the
per-round ratio to the first variant.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import report, round_ratios, take_turns, worker_spec  # noqa: E402


def spread(values) -> str:
    """``median [min-max]`` with three decimals (kernel times per op type are tens of microseconds)."""
    values = list(values)
    return f"{np.median(values):.3f} [{min(values):.3f}-{max(values):.3f}]"

VARIANTS = ["before", "adam", "after", "after+matmul_check", "after+io_binding"]


def _adam_before(e, s, p, g, state, hp, decoupled: bool = False):
    """passes/optimizers.py's Adam update before this probe: 13 element-wise passes per parameter."""
    from passes.optimizers import _axpy, _with_weight_decay
    b1, b2 = hp["betas"]
    wd = hp["weight_decay"]
    if decoupled and wd:
        p = e.op("Mul", [p, s.scalar("1-lr*wd", lambda: e.op("Sub", [s.d(1.0), e.op("Mul", [s.lr64, s.d(wd)])]))])
    elif not decoupled:
        g = _with_weight_decay(e, s, p, g, wd)
    m = _axpy(e, s, b1, state["exp_avg"], 1.0 - b1, g)
    v = _axpy(e, s, b2, state["exp_avg_sq"], 1.0 - b2, e.op("Mul", [g, g]))
    new_state = {"exp_avg": m, "exp_avg_sq": v}
    if hp["amsgrad"]:
        v = e.op("Max", [state["max_exp_avg_sq"], v])
        new_state["max_exp_avg_sq"] = v
    step_size = s.scalar(f"lr/(1-{b1}^t)", lambda: e.op("Div", [s.lr64, s.one_minus_pow(b1)]))
    bc2_sqrt = s.scalar(f"sqrt(1-{b2}^t)", lambda: e.op("Sqrt", [s.one_minus_pow(b2)]))
    denom = e.op("Add", [e.op("Div", [e.op("Sqrt", [v]), bc2_sqrt]), s.c(hp["eps"])])
    return e.op("Sub", [p, e.op("Mul", [e.op("Div", [m, denom]), step_size])]), new_state


def _check_by_matmul(e, grads, dtype):
    """The finiteness check tried and not kept: ``ReduceSum(MatMul(zeros(1, rows), g))`` for 2-D float32
    gradients (one read of g; NaN for NaN/+-Inf at every position on ONNX Runtime 1.31's MLAS kernel),
    ``ReduceSum(g * 0)`` for the others."""
    import onnx_ir as ir
    from passes.names import GRAD_CHECK
    zero = e.const(np.asarray(0, dtype=dtype.numpy()))
    sums = []
    for g in grads:
        dims = list(g.shape) if g.shape is not None else []
        if dtype == ir.DataType.FLOAT and len(dims) == 2 and all(isinstance(d, int) for d in dims):
            zeros = e.const(np.zeros((1, dims[0]), dtype=np.float32))
            sums.append(e.op("ReduceSum", [e.op("MatMul", [zeros, g])], {"keepdims": 0}))
        else:
            sums.append(e.op("ReduceSum", [e.op("Mul", [g, zero])], {"keepdims": 0}))
    check = sums[0] if len(sums) == 1 else e.op("Sum", sums)
    check.name = GRAD_CHECK
    check.type, check.shape = ir.TensorType(dtype), ir.Shape([])
    return check


def patch(parts: list[str]) -> None:
    import passes.optimizers as optimizers
    import passes.training_step as training_step
    if "matmul_check" in parts:
        training_step._finiteness_check = _check_by_matmul
    if "before" in parts:
        optimizers.OPTIMIZERS["adam"] = dataclasses.replace(optimizers.OPTIMIZERS["adam"], update=_adam_before)


def build(model_key: str, threads: int | None, io_binding: bool):
    import graphc as gc
    import graphc.nn.functional as F
    from bench_mlp import SIZES, graphc_model
    gc.manual_seed(0)
    if model_key == "mlp":
        x = gc.input("x", shape=("batch", SIZES[0]))
        model = graphc_model()
    else:
        from bench_cnn import MODELS
        x = gc.input("x", shape=("batch", 3, 32, 32))
        model = MODELS[model_key][1]()
    y = gc.input("y", shape=("batch",), dtype="int64")
    trainer = gc.Trainer(F.cross_entropy(model(x), y), gc.optim.Adam(model.parameters(), lr=1e-3),
                         inputs=[x, y], seed=0, threads=threads, io_binding=io_binding)
    return trainer, tuple(x.shape[1:])


def profile(model_key: str, steps: int) -> dict:
    """Kernel ms per step by op type (ONNX Runtime's profiler, one thread), and their sum as ``kernel_ms``."""
    import collections
    import json
    import runtime.training_session as training_session
    plain = training_session.session_options

    def profiled(threads=None):
        options = plain(threads)
        options.enable_profiling = True
        return options
    training_session.session_options = profiled
    trainer, shape = build(model_key, 1, False)
    rng = np.random.default_rng(0)
    data = [{"x": rng.standard_normal((64, *shape)).astype(np.float32), "y": rng.integers(0, 10, 64)}
            for _ in range(10)]
    for i in range(steps):
        trainer.step(data[i % 10])
    path = trainer.session.session.end_profiling()
    with open(path) as f:
        events = json.load(f)
    os.remove(path)
    per_op = collections.defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[e["args"]["op_name"]] += e["dur"] / 1e3 / steps
    return {"kernel_ms": sum(per_op.values()), **{f"op:{k}": v for k, v in per_op.items()}}


def worker(spec: dict) -> None:
    parts = spec["variant"].split("+")
    patch(parts)
    import runtime.run_errors as run_errors
    if {"before", "adam", "ort_run"} & set(parts):  # the public InferenceSession.run, as before
        import runtime.training_session as training_session
        training_session._run_plain = lambda session, names, feeds, model: run_errors.run_session(
            session, names, feeds, model, "training step")
    io_binding = "io_binding" in parts
    steps = spec["steps"]
    if spec.get("profile"):
        report(profile(spec["model"], steps))
        return
    result = {}
    for threads in (1, None):  # 1 thread first: no idle worker threads spinning yet
        trainer, shape = build(spec["model"], threads, io_binding)
        rng = np.random.default_rng(0)
        data = [{"x": rng.standard_normal((64, *shape)).astype(np.float32), "y": rng.integers(0, 10, 64)}
                for _ in range(10)]
        for i in range(10):
            trainer.step(data[i])
        if threads == 1:
            start = time.process_time()
            for i in range(steps):
                trainer.step(data[i % 10])
            result["cpu_1t_ms"] = (time.process_time() - start) * 1e3 / steps
            session = trainer.session
            if not io_binding and not trainer._random:  # the bare run on the step's own feeds (not adopted)
                inner = session.session
                names = session.output_names
                feeds = {**data[0], **session._extra_inputs, **session.state}
                feeds["y"] = np.asarray(feeds["y"], dtype=np.int64)
                start = time.process_time()
                for _ in range(steps):
                    inner.run(names, feeds)
                result["bare_run_1t_ms"] = (time.process_time() - start) * 1e3 / steps
                start = time.process_time()
                for _ in range(steps):
                    inner._sess.run(names, feeds, None)
                result["bare_sess_1t_ms"] = (time.process_time() - start) * 1e3 / steps
        else:
            times = []
            for i in range(steps):
                start = time.perf_counter()
                trainer.step(data[i % 10])
                times.append((time.perf_counter() - start) * 1e3)
            result["wall_2t_ms"] = float(np.median(times))
    report(result)


def in_process(variants: list[str], blocks: int) -> None:
    """Graph variants in ONE process, 1 thread each (no worker threads to interfere), real ``trainer.step``
    calls in blocks of 50, the variants' order shuffled every block; per-block CPU-time ratios to the
    first variant. Steadier than separate processes under the other engineers' load (the step path, the
    ``+ort_run`` patch, is process-wide: not compared here)."""
    import passes.optimizers as optimizers
    import passes.training_step as training_step
    saved = optimizers.OPTIMIZERS["adam"], training_step._finiteness_check
    rng = np.random.default_rng(0)
    data = [{"x": rng.standard_normal((64, 784)).astype(np.float32), "y": rng.integers(0, 10, 64)} for _ in range(10)]
    trainers = {}
    for variant in variants:
        optimizers.OPTIMIZERS["adam"], training_step._finiteness_check = saved
        patch(variant.split("+"))
        trainers[variant] = build("mlp", 1, False)[0]
        for i in range(10):  # the graph is built at the first step: while this variant's patches are on
            trainers[variant].step(data[i])
    optimizers.OPTIMIZERS["adam"], training_step._finiteness_check = saved
    cpu = {v: [] for v in variants}
    for block in range(blocks):
        order = list(variants)
        np.random.default_rng(block).shuffle(order)
        for variant in order:
            start = time.process_time()
            for i in range(50):
                trainers[variant].step(data[i % 10])
            cpu[variant].append((time.process_time() - start) * 1e3 / 50)
    print(f"mlp in one process, 1 thread, {blocks} blocks of 50 steps: CPU ms/step median [min]; per-block "
          f"ratio to {variants[0]}: median [quartiles]")
    for v in variants:
        ratios = [a / b for a, b in zip(cpu[v], cpu[variants[0]])]
        print(f"  {v:24s} {np.median(cpu[v]):.3f} [{min(cpu[v]):.3f}]  {np.median(ratios):.3f} "
              f"[{np.percentile(ratios, 25):.3f}-{np.percentile(ratios, 75):.3f}]")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="mlp")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--profile", action="store_true", help="kernel ms per op type instead (1 thread)")
    parser.add_argument("--top", type=int, default=8, help="with --profile: the op types shown")
    parser.add_argument("--in-process", type=int, default=0, metavar="BLOCKS",
                        help="compare the graph variants in one process instead (see in_process)")
    args = parser.parse_args()
    variants = args.variants.split(",")
    if args.in_process:
        in_process(variants, args.in_process)
        return
    for model in args.models.split(","):
        runs = take_turns(__file__, {v: {"model": model, "variant": v, "steps": args.steps, "profile": args.profile}
                                     for v in variants}, args.rounds)
        print(f"{model}: {args.rounds} rounds, median [min-max]; ratio = per-round ratio to {variants[0]}")
        keys = ["cpu_1t_ms", "wall_2t_ms", "bare_run_1t_ms", "bare_sess_1t_ms"]
        if args.profile:
            keys = ["kernel_ms"] + sorted({k for v in variants for r in runs[v] for k in r if k.startswith("op:")},
                                          key=lambda k: -runs[variants[-1]][0].get(k, 0.0))[:args.top]
        for key in keys:
            print(f"  {key}")
            for v in variants:
                if all(key in r for r in runs[v]):
                    ratio = (spread(round_ratios(runs, v, variants[0], key))
                             if all(key in r for r in runs[variants[0]]) else "")
                    print(f"    {v:24s} {spread(r[key] for r in runs[v]):>22s}  {ratio:>18s}")


if __name__ == "__main__":
    spec = worker_spec(sys.argv[1:])
    worker(spec) if spec is not None else main()
