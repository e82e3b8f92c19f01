"""Probe: the LSTM step's pieces in isolated ONNX Runtime sessions (process CPU / wall time, one process).

    python benchmarks/probes/lstm_isolated.py gemm [--threads 1]      # weight-gradient GEMM orientations
    python benchmarks/probes/lstm_isolated.py chain [--threads 1,2]   # element-wise ops per node, by size
    python benchmarks/probes/lstm_isolated.py fused [--threads 1,2]   # ONNX Runtime's own LSTM op, 2 layers

- ``gemm``: dW = dG^T X for the step's shapes (K = T*B rows, M = 4H, N = H or the 28 input features) as
  ``Gemm(dG, X; transA=1)`` (autodiff's form), ``Gemm(X, dG; transA=1)`` (+ Transpose), Transpose + Gemm,
  Transpose + MatMul; best of 3 runs of 200 calls, CPU ms a call.
- ``chain``: 200 Mul / Sigmoid nodes in a chain on (64, H*k) (one step's gate sizes) and 10 on
  (1792, 512) (every step at once), graph optimizations off; best of 5, wall us a node, per thread count.
- ``fused``: the benchmark's 2-layer LSTM forward (batch 64, 28 steps, 28 -> 128 -> 128) as two ONNX
  ``LSTM`` nodes: wall and CPU ms a call, per thread count.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper

F = TensorProto.FLOAT


def _session(nodes, inputs, outputs, threads, initializers=(), optimize=True):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
                              [helper.make_tensor_value_info(o, F, None) for o in outputs], list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _cpu_ms(session, feeds, calls=200):
    for _ in range(10):
        session.run(None, feeds)
    start = time.process_time()
    for _ in range(calls):
        session.run(None, feeds)
    return (time.process_time() - start) / calls * 1e3


def gemm(threads: int) -> None:
    rng = np.random.default_rng(0)
    node = helper.make_node
    forms = {
        "Gemm(dG, X; transA=1)": [node("Gemm", ["dG", "X"], ["y"], transA=1)],
        "Gemm(X, dG; transA=1) + T": [node("Gemm", ["X", "dG"], ["t"], transA=1),
                                      node("Transpose", ["t"], ["y"], perm=[1, 0])],
        "Gemm(X, dG; transA=1)": [node("Gemm", ["X", "dG"], ["y"], transA=1)],
        "Transpose(dG) + Gemm": [node("Transpose", ["dG"], ["t"], perm=[1, 0]), node("Gemm", ["t", "X"], ["y"])],
        "Transpose(dG) + MatMul": [node("Transpose", ["dG"], ["t"], perm=[1, 0]), node("MatMul", ["t", "X"], ["y"])],
    }
    for k, m, n in [(1792, 512, 128), (1728, 512, 128), (1792, 512, 28)]:
        feeds = {"dG": rng.standard_normal((k, m)).astype(np.float32),
                 "X": rng.standard_normal((k, n)).astype(np.float32)}
        shapes = [("dG", [k, m]), ("X", [k, n])]
        for name, nodes in forms.items():
            runs = [_cpu_ms(_session(nodes, shapes, ["y"], threads), feeds) for _ in range(3)]
            print(f"K={k} M={m} N={n} {name:28s} {min(runs):.3f} ms (runs {', '.join(f'{r:.3f}' for r in runs)})")


def _chain_us(op, shape, count, threads):
    nodes, prev = [], "x"
    for i in range(count):
        nodes.append(helper.make_node(op, [prev, "y"] if op == "Mul" else [prev], [f"v{i}"]))
        prev = f"v{i}"
    session = _session(nodes, [("x", shape), ("y", shape)], [prev], threads, optimize=False)
    feeds = {"x": np.random.rand(*shape).astype(np.float32) * 0.5, "y": np.ones(shape, np.float32)}
    for _ in range(5):
        session.run(None, feeds)
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(20):
            session.run(None, feeds)
        best = min(best, (time.perf_counter() - start) / 20 / count * 1e6)
    return best


def chain(threads_list) -> None:
    for threads in threads_list:
        for op in ("Mul", "Sigmoid"):
            for shape in ([64, 128], [64, 384], [64, 512], [1792, 512]):
                count = 200 if shape[0] == 64 else 10
                us = _chain_us(op, shape, count, threads)
                print(f"{threads} thread(s) {op:8s} {str(shape):12s} {us:8.2f} us a node")


def fused(threads_list) -> None:
    batch, steps, features, hidden = 64, 28, 28, 128
    rng = np.random.default_rng(0)
    nodes, inits, x = [], [helper.make_tensor("one", TensorProto.INT64, [1], [1])], "x"
    for layer, width in enumerate([features, hidden]):
        for name, shape in [("W", (1, 4 * hidden, width)), ("R", (1, 4 * hidden, hidden)), ("B", (1, 8 * hidden))]:
            values = (rng.standard_normal(shape) * 0.1).astype(np.float32)
            inits.append(helper.make_tensor(f"{name}{layer}", F, shape, values.ravel()))
        nodes.append(helper.make_node("LSTM", [x, f"W{layer}", f"R{layer}", f"B{layer}"], [f"Y{layer}"],
                                      hidden_size=hidden))
        nodes.append(helper.make_node("Squeeze", [f"Y{layer}", "one"], [f"X{layer + 1}"]))
        x = f"X{layer + 1}"
    feeds = {"x": rng.standard_normal((steps, batch, features)).astype(np.float32)}
    for threads in threads_list:
        session = _session(nodes, [("x", [steps, batch, features])], [x], threads, inits)
        for _ in range(10):
            session.run(None, feeds)
        for _ in range(3):
            cpu, wall = time.process_time(), time.perf_counter()
            for _ in range(100):
                session.run(None, feeds)
            print(f"{threads} thread(s): 2-layer LSTM op forward, wall {(time.perf_counter() - wall) * 10:.2f} ms, "
                  f"CPU {(time.process_time() - cpu) * 10:.2f} ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["gemm", "chain", "fused"])
    parser.add_argument("--threads", default=None)
    args = parser.parse_args()
    threads = [int(t) for t in (args.threads or ("1" if args.what == "gemm" else "1,2")).split(",")]
    if args.what == "gemm":
        gemm(threads[0])
    else:
        (chain if args.what == "chain" else fused)(threads)


if __name__ == "__main__":
    main()
