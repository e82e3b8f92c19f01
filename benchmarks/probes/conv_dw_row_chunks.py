"""Probe: the shifted-Gemm conv weight gradient's Gathers + Gemm in row chunks, one ORT session per chunk count.

    python benchmarks/probes/conv_dw_row_chunks.py [threads] [batch]

From xt (C, H*W, N) and g padded (O, H'+2(k-1), W', N) (the rule's layouts, fed as inputs), the padded
rows r are cut into 1..32 chunks: per chunk one Gather of x's width shifts, one of g's row shifts, one
Gemm(transB=1), then a Sum (``_weight_grad_by_shifted_gemm`` with ``_shifted_row_chunks``). Prints wall and
process CPU ms (median of 100 runs) for LeNet's conv1 and conv2 shapes (batch 64 by default), and the difference
from the unchunked result (float32 summation order only).
"""

import sys
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

ort.set_default_logger_severity(3)
threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
batch = int(sys.argv[2]) if len(sys.argv) > 2 else 64
def case(N, C, O, H, W, k):
    Ho, Wo = H - k + 1, W - k + 1
    rng = np.random.default_rng(0)
    feeds = {"xt": rng.standard_normal((C, H * W, N)).astype(np.float32),
             "gp": rng.standard_normal((O, Ho + 2 * (k - 1), Wo, N)).astype(np.float32)}
    x_index = (np.arange(H)[None, :, None] * W + np.arange(Wo)[None, None, :] + np.arange(k)[:, None, None])  # [k, H, Wo]
    g_index = k - 1 - np.arange(k)[:, None] + np.arange(H)[None, :]  # [k, H]
    def build(chunks):
        nodes, inits, parts = [], [], []
        bounds = np.linspace(0, H, chunks + 1).astype(int)
        for c, (r0, r1) in enumerate(zip(bounds[:-1], bounds[1:])):
            inits += [nh.from_array(x_index[:, r0:r1].astype(np.int64), f"xi{c}"), nh.from_array(g_index[:, r0:r1].astype(np.int64), f"gi{c}")]
            nodes += [h.make_node("Gather", ["xt", f"xi{c}"], [f"xs{c}"], axis=1), h.make_node("Gather", ["gp", f"gi{c}"], [f"gs{c}"], axis=1),
                      h.make_node("Reshape", [f"xs{c}", "sx"], [f"xr{c}"]), h.make_node("Reshape", [f"gs{c}", "sg"], [f"gr{c}"]),
                      h.make_node("Gemm", [f"gr{c}", f"xr{c}"], [f"p{c}"], transB=1)]
            parts.append(f"p{c}")
        nodes.append(h.make_node("Sum", parts, ["y"]))
        inits += [nh.from_array(np.array([C * k, -1], np.int64), "sx"), nh.from_array(np.array([O * k, -1], np.int64), "sg")]
        g = h.make_graph(nodes, "g", [h.make_tensor_value_info(i, T.FLOAT, feeds[i].shape) for i in feeds], [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)]); m.ir_version = 10
        so = ort.SessionOptions(); so.intra_op_num_threads = threads
        return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    ref = None
    for chunks in (1, 2, 4, 8, 16, 32):
        if chunks > H: continue
        s = build(chunks)
        out = s.run(None, feeds)[0]
        ref = out if ref is None else ref
        for _ in range(10): s.run(None, feeds)
        ts, cs = [], []
        for _ in range(100):
            t0, c0 = time.perf_counter(), time.process_time(); s.run(None, feeds); ts.append(time.perf_counter() - t0); cs.append(time.process_time() - c0)
        print(f"  {N,C,O,H,W,k} chunks {chunks:2d}: wall {np.median(ts)*1e3:.3f} cpu {np.median(cs)*1e3:.3f} ms  err {np.abs(out-ref).max():.1e}")
for _ in range(2):
    case(batch, 3, 6, 32, 32, 5)
    case(batch, 6, 16, 14, 14, 5)
