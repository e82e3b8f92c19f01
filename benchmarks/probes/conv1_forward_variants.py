"""Probe: LeNet's conv1 forward (64x3x32x32 * 6x3x5x5 + bias, ReLU) with its weight a graph input, as in a
training step, and its output channels zero-padded to 8, 16 or 32 (then sliced back to 6).

    python benchmarks/probes/conv1_forward_variants.py [threads]

Prints wall / CPU ms (median of 60 runs) and the node list of ONNX Runtime's optimized model: ORT's NCHWc
transformer blocks a Conv only when its weight is a constant initializer (it pads the output channels to
its block itself then), so a training step's Conv, whose weight is an input, always runs the generic
im2col + GEMM kernel (``FusedConv``), and padding the channels only adds GEMM rows (issue 11).
"""

import os
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
ort.set_default_logger_severity(3)
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 3, 32, 32)).astype(np.float32)
w = rng.standard_normal((6, 3, 5, 5)).astype(np.float32); b = rng.standard_normal(6).astype(np.float32)
def model(pad_to):
    if pad_to == "const":  # the weight and bias as initializers (an inference graph): ORT's NCHWc Conv
        g = h.make_graph([h.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[5, 5]), h.make_node("Relu", ["c"], ["y"])],
                         "g", [h.make_tensor_value_info("x", T.FLOAT, [64, 3, 32, 32])],
                         [h.make_tensor_value_info("y", T.FLOAT, None)], [nh.from_array(w, "w"), nh.from_array(b, "b")])
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)])
        m.ir_version = 10
        return m
    nodes = []
    wn, bn = "w", "b"
    if pad_to != 6:
        nodes += [h.make_node("Pad", ["w", "pw"], ["wp"]), h.make_node("Pad", ["b", "pb"], ["bp"])]; wn, bn = "wp", "bp"
    nodes.append(h.make_node("Conv", ["x", wn, bn], ["c"], kernel_shape=[5, 5]))
    nodes.append(h.make_node("Relu", ["c"], ["r"])); last = "r"
    if pad_to != 6:
        nodes.append(h.make_node("Slice", [last, "s0", "s1", "ax"], ["s"])); last = "s"
    nodes.append(h.make_node("Identity", [last], ["y"]))
    inits = [nh.from_array(np.array([0, 0, 0, 0, pad_to - 6, 0, 0, 0], np.int64), "pw"),
             nh.from_array(np.array([0, pad_to - 6], np.int64), "pb"), nh.from_array(np.array([0], np.int64), "s0"),
             nh.from_array(np.array([6], np.int64), "s1"), nh.from_array(np.array([1], np.int64), "ax")]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [64, 3, 32, 32]),
                                  h.make_tensor_value_info("w", T.FLOAT, [6, 3, 5, 5]), h.make_tensor_value_info("b", T.FLOAT, [6])],
                     [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)]); m.ir_version = 10
    return m
res = {}
for rnd in range(2):
  for pad_to in (6, 8, 16, 32, "const"):
    m = model(pad_to)
    so = ort.SessionOptions(); so.intra_op_num_threads = threads
    so.optimized_model_filepath = os.path.join(tempfile.gettempdir(), f"conv1_fwd_{pad_to}.onnx")
    s = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    feeds = {"x": x} if pad_to == "const" else {"x": x, "w": w, "b": b}
    out = s.run(None, feeds)[0]
    ops = [(n.domain[-5:], n.op_type) for n in onnx.load(so.optimized_model_filepath).graph.node]
    for _ in range(5): s.run(None, feeds)
    ts, cs = [], []
    for _ in range(60):
        t0, c0 = time.perf_counter(), time.process_time(); s.run(None, feeds)
        ts.append(time.perf_counter() - t0); cs.append(time.process_time() - c0)
    print(f"pad {pad_to!s:>5s}: wall {np.median(ts)*1e3:.3f} ms cpu {np.median(cs)*1e3:.3f}  {ops}")
    res[pad_to] = out
print("padded channels bit-exact:", [np.array_equal(res[6], res[p]) for p in (8, 16, 32)],
      f"NCHWc max difference {np.abs(res[6] - res['const']).max():.1e} (another summation order)")
