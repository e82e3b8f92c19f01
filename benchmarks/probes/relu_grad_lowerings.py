"""Probe: the cheapest standard-ONNX ReLU gradient on ONNX Runtime CPU (g where y > 0, y = Relu(x) >= 0).

    python benchmarks/probes/relu_grad_lowerings.py [--shape 64,32,32,32] [--repeats 40]

Candidates: Where(Greater(y, 0), g, 0) (graphc's rule); Where(Cast(y, bool), g, 0) (y >= 0, so y != 0 is
y > 0); Mul(g, Sign(y)) (differs on a NaN/inf g at y = 0). Prints the median ms of each.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def session(nodes, shape):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("y", F, shape),
                                           helper.make_tensor_value_info("g", F, shape)],
                              [helper.make_tensor_value_info("dx", F, shape)],
                              initializer=[numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


CANDIDATES = {
    "Where(Greater(y, 0), g, 0)": [helper.make_node("Greater", ["y", "zero"], ["m"]),
                                   helper.make_node("Where", ["m", "g", "zero"], ["dx"])],
    "Where(Cast(y, bool), g, 0)": [helper.make_node("Cast", ["y"], ["m"], to=TensorProto.BOOL),
                                   helper.make_node("Where", ["m", "g", "zero"], ["dx"])],
    "Mul(g, Sign(y))": [helper.make_node("Sign", ["y"], ["s"]), helper.make_node("Mul", ["g", "s"], ["dx"])],
}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="64,32,32,32")
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()
    shape = [int(v) for v in args.shape.split(",")]
    rng = np.random.default_rng(0)
    feeds = {"y": np.maximum(rng.standard_normal(shape), 0).astype(np.float32),
             "g": rng.standard_normal(shape).astype(np.float32)}
    expected = np.where(feeds["y"] > 0, feeds["g"], 0)
    for name, nodes in CANDIDATES.items():
        sess = session(nodes, shape)
        assert np.array_equal(sess.run(None, feeds)[0], expected), name
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            sess.run(None, feeds)
            times.append(time.perf_counter() - start)
        print(f"  {name:30s} {statistics.median(times) * 1e3:7.3f} ms")


if __name__ == "__main__":
    main()
