"""Probe: LeNet's conv1 forward as ONE Gemm over width-shifted copies of x, against ONNX Runtime's Conv.

    python benchmarks/probes/conv1_forward_shifted.py [threads]

The weight gradient's layout (``_weight_grad_by_shifted_gemm``) turned around: x to (C, H, W, N), its kw
width shifts by one Gather (15 x 57344), Z = W[(o, i), (c, j)] @ xs (30 x 57344), then
y[o, p, q, n] = sum_i Z[o, i, p + i, q, n] (kh Slices and a Sum), plus the bias, back to NCHW. Prints
process CPU ms (median of 100 runs) for the Conv, the whole rewrite, and its pieces up to the Gemm and up
to the Gather (which a step could share with the weight gradient). Issue 11: not pursued, see
docs/performance.md.
"""
import sys, time, numpy as np, onnx, onnxruntime as ort
from onnx import helper as h, TensorProto as T, numpy_helper as nh
ort.set_default_logger_severity(3)
threads = int(sys.argv[1])
N, C, O, H, W, k = 64, 3, 6, 32, 32, 5
Hp, Wo = H - k + 1, W - k + 1
rng = np.random.default_rng(0)
x = rng.standard_normal((N, C, H, W)).astype(np.float32); w = rng.standard_normal((O, C, k, k)).astype(np.float32); b = rng.standard_normal(O).astype(np.float32)
I = lambda a, n: nh.from_array(np.asarray(a, np.int64), n)
def sess(nodes, inits, outs=("y",)):
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, x.shape), h.make_tensor_value_info("w", T.FLOAT, w.shape), h.make_tensor_value_info("b", T.FLOAT, b.shape)],
                     [h.make_tensor_value_info(o, T.FLOAT, None) for o in outs], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 21)]); m.ir_version = 10
    so = ort.SessionOptions(); so.intra_op_num_threads = threads
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
def bench(name, s):
    f = {"x": x, "w": w, "b": b}
    out = s.run(None, f)
    for _ in range(10): s.run(None, f)
    ts = []
    for _ in range(100):
        t0 = time.process_time(); s.run(None, f); ts.append(time.process_time() - t0)
    print(f"{name:30s} {np.median(ts)*1e3:.3f} ms"); return out
ref = bench("Conv", sess([h.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[k, k])], []))[0]
# shifted forward: xt (C, H, W, N); xs[(c,j), (r, q, n)] = xt[c, r, q+j, n]
xi = (np.arange(H)[None, :, None] * W + np.arange(Wo)[None, None, :] + np.arange(k)[:, None, None])
nodes = [h.make_node("Transpose", ["x"], ["xt"], perm=[1, 2, 3, 0]), h.make_node("Reshape", ["xt", "s1"], ["xr"]),
         h.make_node("Gather", ["xr", "xi"], ["xs0"], axis=1), h.make_node("Reshape", ["xs0", "s2"], ["xs"]),
         # Wm[(o,i),(c,j)] = w[o,c,i,j]
         h.make_node("Transpose", ["w"], ["wt"], perm=[0, 2, 1, 3]), h.make_node("Reshape", ["wt", "s3"], ["wm"]),
         h.make_node("Gemm", ["wm", "xs"], ["z"]), h.make_node("Reshape", ["z", "s4"], ["z4"])]
parts = []
for i in range(k):
    nodes.append(h.make_node("Slice", ["z4", f"st{i}", f"en{i}", "ax"], [f"p{i}"])); parts.append(f"p{i}")
nodes += [h.make_node("Sum", parts, ["ysum"]), h.make_node("Reshape", ["ysum", "s5"], ["y4"]),
          h.make_node("Add", ["y4", "bb"], ["yb"]), h.make_node("Transpose", ["yb"], ["y"], perm=[3, 0, 1, 2])]
inits = [I([C, H * W, -1], "s1"), nh.from_array(xi.astype(np.int64), "xi"), I([C * k, -1], "s2"), I([O * k, C * k], "s3"),
         I([O, k, H, -1], "s4"), I([O, Hp, Wo, N], "s5"), I([1], "ax"), I([O, Hp * 0 + 1, 1, 1], "bbs")]
for i in range(k):
    inits += [I([0, i, i, 0], f"st{i}"), I([O, i + 1, i + Hp, Wo * N], f"en{i}")]
inits[-2*k-1:-2*k] = []
nodes.insert(0, h.make_node("Reshape", ["b", "bbs2"], ["bb"])); inits.append(I([O, 1, 1, 1], "bbs2"))
inits = [t for t in inits if t.name != "ax"] + [I([0, 1, 2, 3], "ax")]
s = sess(nodes, inits)
got = bench("shifted fwd (Transpose..)", s)[0]
print("max err", np.abs(got - ref).max())
# pieces
s = sess(nodes[:9], inits, outs=("z",)); bench("  up to Gemm", s)
s = sess(nodes[:4], inits, outs=("xs0",)); bench("  up to Gather", s)
