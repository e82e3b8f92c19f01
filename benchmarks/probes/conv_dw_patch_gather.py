"""Probe: a stride-1 conv weight gradient from NCHW x and g, shifted Gemm against batch-last patches by one Gather.

    python benchmarks/probes/conv_dw_patch_gather.py [threads] [batch] [repeats]

Candidates, each one ORT session from x (N, C, H, W) and g (N, O, H', W') to dw (O, C, k, k), unpadded:
- ``shifted``: the rule as it is (``_weight_grad_by_shifted_gemm``: x and g to (C|O, ..., N), g padded by
  k-1 rows, the kw width shifts of x and the kh row shifts of g by one Gather each, one Gemm(transB=1) of
  (O*kh, Hp*W'*N) with (C*kw, Hp*W'*N); contraction Hp/H' times the product's own);
- ``patches_a``: xt (C, H*W, N), ONE Gather with indices [(i, j), p, q] = (p+i)*W + q + j: batch-last
  patches (C*k*k, H'*W'*N) in runs of N floats; Gemm(patches, gt (O, H'*W'*N), transB=1) = dw^T
  (C*k*k, O), then a Transpose of that small result (the large operand as Gemm's A, read in place);
- ``patches_b``: the same patches, Gemm(gt, patches, transB=1) = dw directly (the patches packed as B).
No k - 1 pad of g, the exact contraction (H'*W'*N terms), and C*k*k*H'*W' copied values per sample
against (C*kw + O*kh)*Hp*W' for the shifted form. Prints wall and process CPU ms (median of the runs)
for LeNet's conv1 and conv2 and their max difference from numpy's float64 dw.
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
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 200


def session(nodes, inits, feeds, threads):
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info(i, T.FLOAT, feeds[i].shape) for i in feeds],
                         [h.make_tensor_value_info("dw", T.FLOAT, None)], inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 21)], ir_version=10)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def ints(name, values):
    return nh.from_array(np.asarray(values, np.int64), name)


def shifted(N, C, O, H, W, k, chunks):
    Ho, Wo = H - k + 1, W - k + 1
    x_index = np.arange(H)[None, :, None] * W + np.arange(Wo)[None, None, :] + np.arange(k)[:, None, None]
    g_index = k - 1 - np.arange(k)[:, None] + np.arange(H)[None, :]
    nodes = [h.make_node("Transpose", ["x"], ["xt"], perm=[1, 2, 3, 0]), h.make_node("Reshape", ["xt", "sx0"], ["xr"]),
             h.make_node("Transpose", ["g"], ["gt"], perm=[1, 2, 3, 0]), h.make_node("Pad", ["gt", "gpad"], ["gp"])]
    inits = [ints("sx0", [C, H * W, -1]), ints("gpad", [0, k - 1, 0, 0, 0, k - 1, 0, 0]), ints("sx", [C * k, -1]),
             ints("sg", [O * k, -1]), ints("so", [O, k, C, k])]
    step = -(-H // chunks)
    parts = []
    for c, r0 in enumerate(range(0, H, step)):
        r1 = min(r0 + step, H)
        inits += [ints(f"xi{c}", x_index[:, r0:r1]), ints(f"gi{c}", g_index[:, r0:r1])]
        nodes += [h.make_node("Gather", ["xr", f"xi{c}"], [f"xs{c}"], axis=1),
                  h.make_node("Gather", ["gp", f"gi{c}"], [f"gs{c}"], axis=1),
                  h.make_node("Reshape", [f"xs{c}", "sx"], [f"xq{c}"]), h.make_node("Reshape", [f"gs{c}", "sg"], [f"gq{c}"]),
                  h.make_node("Gemm", [f"gq{c}", f"xq{c}"], [f"p{c}"], transB=1)]
        parts.append(f"p{c}")
    nodes += [h.make_node("Sum", parts, ["s"]) if len(parts) > 1 else h.make_node("Identity", parts, ["s"]),
              h.make_node("Reshape", ["s", "so"], ["sr"]), h.make_node("Transpose", ["sr"], ["dw"], perm=[0, 2, 1, 3])]
    return nodes, inits


def patches(N, C, O, H, W, k, a_side):
    Ho, Wo = H - k + 1, W - k + 1
    ii, jj = np.divmod(np.arange(k * k), k)
    index = (ii[:, None, None] + np.arange(Ho)[None, :, None]) * W + jj[:, None, None] + np.arange(Wo)[None, None, :]
    nodes = [h.make_node("Transpose", ["x"], ["xt"], perm=[1, 2, 3, 0]), h.make_node("Reshape", ["xt", "sx0"], ["xr"]),
             h.make_node("Gather", ["xr", "xi"], ["ps"], axis=1), h.make_node("Reshape", ["ps", "sp"], ["pq"]),
             h.make_node("Transpose", ["g"], ["gt"], perm=[1, 2, 3, 0]), h.make_node("Reshape", ["gt", "sg"], ["gq"])]
    inits = [ints("sx0", [C, H * W, -1]), ints("xi", index), ints("sp", [C * k * k, -1]), ints("sg", [O, -1]),
             ints("sw", [O, C, k, k]), ints("swt", [C * k * k, O])]
    if a_side:
        nodes += [h.make_node("Gemm", ["pq", "gq"], ["m"], transB=1), h.make_node("Transpose", ["m"], ["mt"], perm=[1, 0]),
                  h.make_node("Reshape", ["mt", "sw"], ["dw"])]
    else:
        nodes += [h.make_node("Gemm", ["gq", "pq"], ["m"], transB=1), h.make_node("Reshape", ["m", "sw"], ["dw"])]
    return nodes, inits


def case(N, C, O, H, W, k):
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((N, C, H, W)).astype(np.float32),
             "g": rng.standard_normal((N, O, H - k + 1, W - k + 1)).astype(np.float32)}
    xs = np.lib.stride_tricks.sliding_window_view(feeds["x"].astype(np.float64), (k, k), axis=(2, 3))
    ref = np.einsum("nopq,ncpqij->ocij", feeds["g"].astype(np.float64), xs)
    candidates = {"shifted": shifted(N, C, O, H, W, k, 1), "patches_a": patches(N, C, O, H, W, k, True),
                  "patches_b": patches(N, C, O, H, W, k, False)}
    if H > 16:
        candidates["shifted_16chunks"] = shifted(N, C, O, H, W, k, 16)
        candidates["patches_a_16chunks"] = None
    for name, built in candidates.items():
        if built is None:
            continue
        s = session(*built, feeds, threads)
        out = s.run(None, feeds)[0]
        for _ in range(10):
            s.run(None, feeds)
        ts, cs = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            s.run(None, feeds)
            ts.append(time.perf_counter() - t0)
            cs.append(time.process_time() - c0)
        err = np.abs(out - ref).max() / np.abs(ref).max()
        print(f"  {(N, C, O, H, W, k)} {name:18s} wall {np.median(ts) * 1e3:.3f} cpu {np.median(cs) * 1e3:.3f} ms"
              f"  rel err {err:.1e}")


if __name__ == "__main__":
  for _ in range(2):
    case(batch, 6, 16, 14, 14, 5)
    case(batch, 3, 6, 32, 32, 5)
