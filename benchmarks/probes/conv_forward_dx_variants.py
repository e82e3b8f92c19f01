"""Probe: LeNet's conv2 forward from batch-last patches, its dX by Col2Im, a Gemm's orientation, Transpose strides.

    python benchmarks/probes/conv_forward_dx_variants.py

One ONNX Runtime session per candidate, 1 thread, median of a few hundred runs (ms), each checked against
PyTorch (float64 for the forward):
1. forward Conv (LeNet's conv2, 64x6x14x14 -> 16 5x5; conv1, 64x3x32x32 -> 6 5x5) against x to (C, H*W, N),
   ONE Gather of the patches, Gemm(W, P) or Gemm(P^T, W^T), a Transpose back (conv1 also in 7 row chunks);
2. conv2's dX: ConvTranspose against MatMul(w^T, g) + ONNX Col2Im (and the MatMul alone);
3. dw^T = P (150, 6400) @ g (16, 6400)^T: with a Transpose after the Gemm (ORT folds it into Gemm(g, P), P
   packed as MLAS's B), without fusion (a Reshape between), or as MatMul;
4. ORT's 2-D Transpose of (64, w) for w around multiples of 1024 floats (4 KB rows: one cache set).
"""

import time

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

ort.set_default_logger_severity(3)


def I(v, n):  # noqa: E743
    return nh.from_array(np.array(v, np.int64), n)


def section_forward():
    def sess(nodes, inits, feeds):
        g = h.make_graph(nodes, "g", [h.make_tensor_value_info(k, T.FLOAT, v.shape) for k, v in feeds.items()], [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)], ir_version=10)
        o = ort.SessionOptions(); o.intra_op_num_threads = 1
        return ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])
    def case(N, C, O, H, k, chunks=1):
        rng = np.random.default_rng(0); Ho = H - k + 1
        feeds = {"x": rng.standard_normal((N,C,H,H)).astype(np.float32), "w": rng.standard_normal((O,C,k,k)).astype(np.float32)}
        ref = torch.nn.functional.conv2d(torch.tensor(feeds["x"], dtype=torch.float64), torch.tensor(feeds["w"], dtype=torch.float64)).numpy()
        ii, jj = np.divmod(np.arange(k*k), k)
        index = (ii[:, None, None] + np.arange(Ho)[None, :, None]) * H + jj[:, None, None] + np.arange(Ho)[None, None, :]
        pre = [h.make_node("Transpose", ["x"], ["xt"], perm=[1,2,3,0]), h.make_node("Reshape", ["xt","s0"], ["xr"]),
               h.make_node("Reshape", ["w","sw"], ["wr"])]
        inits = [I([C, H*H, -1], "s0"), I([O, C*k*k], "sw"), I([C*k*k, -1], "sp"), I([O, Ho, Ho, -1], "so"), I([Ho, Ho, -1, O], "so2")]
        def gathered(nodes, inits, tag, rows):
            inits.append(I(index[:, rows[0]:rows[1]], "xi" + tag))
            nodes += [h.make_node("Gather", ["xr", "xi" + tag], ["p" + tag], axis=1), h.make_node("Reshape", ["p" + tag, "sp"], ["pq" + tag])]
            return "pq" + tag
        c = {"Conv": ([h.make_node("Conv", ["x","w"], ["y"])], [])}
        n1 = list(pre); i1 = list(inits); p = gathered(n1, i1, "", (0, Ho))
        n1 += [h.make_node("Gemm", ["wr", p], ["m"]), h.make_node("Reshape", ["m","so"], ["mr"]), h.make_node("Transpose", ["mr"], ["y"], perm=[3,0,1,2])]
        c["patches W@P"] = (n1, i1)
        n2 = list(pre); i2 = list(inits); p = gathered(n2, i2, "", (0, Ho))
        n2 += [h.make_node("Gemm", [p, "wr"], ["m"], transA=1, transB=1), h.make_node("Reshape", ["m","so2"], ["mr"]), h.make_node("Transpose", ["mr"], ["y"], perm=[2,3,0,1])]
        c["patches P^T@W^T"] = (n2, i2)
        if chunks > 1:
            n3 = list(pre); i3 = list(inits); outs = []
            step = -(-Ho // chunks)
            for t, r0 in enumerate(range(0, Ho, step)):
                p = gathered(n3, i3, str(t), (r0, min(Ho, r0 + step)))
                n3.append(h.make_node("Gemm", ["wr", p], [f"m{t}"])); outs.append(f"m{t}")
            n3 += [h.make_node("Concat", outs, ["m"], axis=1), h.make_node("Reshape", ["m","so"], ["mr"]), h.make_node("Transpose", ["mr"], ["y"], perm=[3,0,1,2])]
            c[f"patches W@P {chunks} chunks"] = (n3, i3)
        for r in range(2):
          for name, (nodes, inits_) in c.items():
            s = sess(nodes, inits_, feeds)
            out = s.run(None, feeds)[0]
            ts = []
            for i in range(200):
                t0 = time.perf_counter(); s.run(None, feeds); ts.append(time.perf_counter() - t0)
            print((N,C,O,H,k), f"{name:24s} {np.median(ts)*1e3:.3f} ms rel err {np.abs(out - ref).max()/np.abs(ref).max():.1e}")
    case(64, 6, 16, 14, 5)
    case(64, 3, 6, 32, 5, chunks=7)


def section_dx():
    def sess(nodes, inits, feeds):
        g = h.make_graph(nodes, "g", [h.make_tensor_value_info(k, T.FLOAT, v.shape) for k, v in feeds.items()], [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)], ir_version=10)
        o = ort.SessionOptions(); o.intra_op_num_threads = 1
        return ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"g": rng.standard_normal((64,16,10,10)).astype(np.float32), "w": rng.standard_normal((16,6,5,5)).astype(np.float32)}
    ref = torch.nn.functional.conv_transpose2d(torch.tensor(feeds["g"]), torch.tensor(feeds["w"])).numpy()
    cands = {
     "ConvTranspose": ([h.make_node("ConvTranspose", ["g","w"], ["y"], kernel_shape=[5,5])], []),
     "MatMul+Col2Im": ([h.make_node("Reshape", ["w","sw"], ["wr"]), h.make_node("Transpose", ["wr"], ["wt"], perm=[1,0]),
                        h.make_node("Reshape", ["g","sg"], ["gr"]), h.make_node("MatMul", ["wt","gr"], ["col"]),
                        h.make_node("Col2Im", ["col","img","blk"], ["y"])],
                       [I([16,150],"sw"), I([0,16,100],"sg"), I([14,14],"img"), I([5,5],"blk")]),
     "MatMul only": ([h.make_node("Reshape", ["w","sw"], ["wr"]), h.make_node("Transpose", ["wr"], ["wt"], perm=[1,0]),
                        h.make_node("Reshape", ["g","sg"], ["gr"]), h.make_node("MatMul", ["wt","gr"], ["y"])],
                       [I([16,150],"sw"), I([0,16,100],"sg")]),
    }
    for r in range(2):
      for name, (nodes, inits) in cands.items():
        try:
            s = sess(nodes, inits, feeds)
        except Exception as e:
            print(name, "fails", str(e)[:200]); continue
        out = s.run(None, feeds)[0]
        ts = []
        for i in range(300):
            t0 = time.perf_counter(); s.run(None, feeds); ts.append(time.perf_counter() - t0)
        err = np.abs(out - ref).max() if out.shape == ref.shape else float("nan")
        print(name, f"{np.median(ts)*1e3:.3f} ms err {err:.1e}")


def section_gemm_orientation():
    def sess(nodes, inits, feeds, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL):
        g = h.make_graph(nodes, "g", [h.make_tensor_value_info(k, T.FLOAT, v.shape) for k, v in feeds.items()], [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)], ir_version=10)
        o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.graph_optimization_level = level
        return ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"p": rng.standard_normal((150, 6400)).astype(np.float32), "g": rng.standard_normal((16, 6400)).astype(np.float32)}
    ref = feeds["g"].astype(np.float64) @ feeds["p"].T.astype(np.float64)
    c = {
     "Gemm(P,g,tB)+T fused": ([h.make_node("Gemm", ["p","g"], ["m"], transB=1), h.make_node("Transpose", ["m"], ["y"], perm=[1,0])], [], ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
     "Gemm(P,g,tB)+T unfused": ([h.make_node("Gemm", ["p","g"], ["m"], transB=1), h.make_node("Transpose", ["m"], ["y"], perm=[1,0])], [], ort.GraphOptimizationLevel.ORT_ENABLE_BASIC),
     "Gemm(g,P,tB)": ([h.make_node("Gemm", ["g","p"], ["y"], transB=1)], [], ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
     "MatMul(P,T(g))+T": ([h.make_node("Transpose", ["g"], ["gt"], perm=[1,0]), h.make_node("MatMul", ["p","gt"], ["m"]), h.make_node("Transpose", ["m"], ["y"], perm=[1,0])], [], ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
     "Gemm(P,g,tB)+Resh+T": ([h.make_node("Gemm", ["p","g"], ["m"], transB=1), h.make_node("Reshape", ["m", "s"], ["mr"]), h.make_node("Transpose", ["mr"], ["y"], perm=[1,0])], [I([150, 16], "s")], ort.GraphOptimizationLevel.ORT_ENABLE_ALL),
    }
    for r in range(3):
      for name, (nodes, inits, lvl) in c.items():
        s = sess(nodes, inits, feeds, lvl)
        out = s.run(None, feeds)[0]
        ts = []
        for i in range(300):
            t0 = time.perf_counter(); s.run(None, feeds); ts.append(time.perf_counter() - t0)
        print(f"{name:26s} {np.median(ts)*1e3:.3f} ms err {np.abs(out-ref).max():.1e}")


def section_transpose_strides():
    def sess(nodes, inits, shape):
        g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, shape)], [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
        m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)], ir_version=10)
        o = ort.SessionOptions(); o.intra_op_num_threads = 1
        return ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])
    for w in [3072, 3080, 3104, 3168, 4096, 4704, 2048, 1024, 6144, 4800]:
        s = sess([h.make_node("Transpose", ["x"], ["y"], perm=[1,0])], [], (64, w))
        x = np.random.rand(64, w).astype(np.float32)
        ts = []
        for i in range(300):
            t0 = time.perf_counter(); s.run(None, {"x": x}); ts.append(time.perf_counter() - t0)
        print(w, f"{np.median(ts)*1e3:.3f} ms  {np.median(ts)*1e9/(64*w):.2f} ns/elem")


if __name__ == "__main__":
    for section in (section_forward, section_dx, section_gemm_orientation, section_transpose_strides):
        print(f"-- {section.__name__}")
        section()
