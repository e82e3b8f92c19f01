"""Probe: BatchNorm's training forward and backward, and the MaxPool mask, as small ONNX graphs (1 thread).

    python benchmarks/probes/bn_pool_pass_variants.py [--rounds 9] [--calls 20]

On the padded CNN's shapes (batch 64: 32x32x32 and 64x16x16 activations; their pools' (N*C, 1, H, W)
views), each candidate one ONNX Runtime session, the candidates taking turns round after round; prints the
median process-CPU ms per call and the largest difference from the first candidate (the lowering before).
- forward: ``bn_train+stats`` (the node with momentum 0.9, the statistics recomputed by ReduceMean, Sub,
  Mul, ReduceMean), ``bn_train_momentum0`` (the statistics read from the node's outputs, c by one Sub),
  ``stats+bn_eval`` (the primitives' statistics and an inference-mode node), ``stats_rss+bn_eval`` (the
  variance by ReduceSumSquare);
- backward, given g and c: dx = k·g - (c·slope + shift) by ``mul_mul_add_sub``, ``mul_bn_affine_sub``
  (an inference-mode node with mean 0, var 1, epsilon 0 for the affine map), ``bn_affine_g_mul_sub``, and
  ``matmul_sum_gc`` (Σg·c as a batched MatMul);
- pool mask, given x and the pooled g: ``first_max_always`` (the first-maximum weights everywhere),
  ``if_dx`` (an ``If`` on the tie test returning dx), ``if_mask`` (the ``If`` returning the mask, as kept),
  on continuous inputs (the cheap branch) and on inputs with ties (the first-maximum branch).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT
N = helper.make_node
NEAREST = {"mode": "nearest", "nearest_mode": "floor", "coordinate_transformation_mode": "asymmetric"}


def session(nodes, inits, inputs, outputs):
    tensors = [numpy_helper.from_array(np.asarray(v, np.int64 if k.startswith("i_") else np.float32), k)
               for k, v in inits.items()]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, F, s) for n, s in inputs],
                              [helper.make_tensor_value_info(n, F, None) for n in outputs], initializer=tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level = 1, 1, 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def forward_candidates(n, c, h):
    count = float(n * h * h)
    inits = dict(s=np.linspace(0.5, 1.5, c), b=np.linspace(-1, 1, c), i_ax=[0, 2, 3], i_z3=[0, 0, 0],
                 i_o3=[1, 1, 1], zero1=[0.0], one1=[1.0], i_flat=[-1], i_cs=[-1, 1, 1], invn=[1 / count])
    scratch = [N("Slice", ["x", "i_z3", "i_o3", "i_ax"], ["sl"]), N("Reshape", ["sl", "i_flat"], ["sl1"]),
               N("Mul", ["sl1", "zero1"], ["rm0"]), N("Add", ["rm0", "one1"], ["rv0"])]
    stats = [N("ReduceMean", ["x", "i_ax"], ["mean"]), N("Sub", ["x", "mean"], ["cc"])]
    var_rm = [N("Mul", ["cc", "cc"], ["sq"]), N("ReduceMean", ["sq", "i_ax"], ["var4"])]
    var_rss = [N("ReduceSumSquare", ["cc", "i_ax"], ["ss"]), N("Mul", ["ss", "invn"], ["var4"])]
    flat = [N("Reshape", ["mean", "i_flat"], ["mean1"]), N("Reshape", ["var4", "i_flat"], ["var"])]
    bn_eval = [N("BatchNormalization", ["x", "s", "b", "mean1", "var"], ["y"], epsilon=1e-5)]
    candidates = {
        "bn_train+stats": scratch + stats + var_rm + flat[1:] + [
            N("BatchNormalization", ["x", "s", "b", "rm0", "rv0"], ["y", "o1", "o2"], epsilon=1e-5, momentum=0.9,
              training_mode=1)],
        "bn_train_momentum0": scratch + [
            N("BatchNormalization", ["x", "s", "b", "rm0", "rv0"], ["y", "m1", "var"], epsilon=1e-5, momentum=0.0,
              training_mode=1), N("Reshape", ["m1", "i_cs"], ["m4"]), N("Sub", ["x", "m4"], ["cc"])],
        "stats+bn_eval": stats + var_rm + flat + bn_eval,
        "stats_rss+bn_eval": stats + var_rss + flat + bn_eval,
    }
    return {k: session(v, inits, [("x", [n, c, h, h])], ["y", "cc", "var"]) for k, v in candidates.items()}


def backward_candidates(n, c, h):
    count = float(n * h * h)
    inits = dict(s=np.linspace(0.5, 1.5, c), i_ax=[0, 2, 3], invn=[1 / count], zero=np.zeros(c), one=np.ones(c),
                 i_cs=[-1, 1, 1], i_flat=[-1], i_nc1hw=[n * c, 1, 1, h * h], i_nchw1=[n * c, 1, h * h, 1],
                 i_nc=[n, c, 1, 1])
    sums = [N("ReduceSum", ["g", "i_ax"], ["sg"]), N("Mul", ["g", "cc"], ["gcp"]), N("ReduceSum", ["gcp", "i_ax"], ["sgc"])]
    sums_mm = [N("ReduceSum", ["g", "i_ax"], ["sg"]), N("Reshape", ["g", "i_nc1hw"], ["g3"]),
               N("Reshape", ["cc", "i_nchw1"], ["c3"]), N("MatMul", ["g3", "c3"], ["gcm"]),
               N("Reshape", ["gcm", "i_nc"], ["gcm4"]), N("ReduceSum", ["gcm4", "i_ax"], ["sgc"])]
    coef = [N("Reshape", ["s", "i_cs"], ["k"]), N("Mul", ["k", "sg"], ["t1"]), N("Mul", ["t1", "invn"], ["shift"]),
            N("Mul", ["k", "sgc"], ["t2"]), N("Mul", ["t2", "invn"], ["slope"]), N("Reshape", ["shift", "i_flat"], ["shift1"]),
            N("Reshape", ["slope", "i_flat"], ["slope1"]), N("Reshape", ["k", "i_flat"], ["k1"]),
            N("Neg", ["shift1"], ["nshift1"])]
    four = [N("Mul", ["g", "k"], ["gk"]), N("Mul", ["cc", "slope"], ["cs"]), N("Add", ["cs", "shift"], ["csb"]),
            N("Sub", ["gk", "csb"], ["dx"])]
    affine_c = [N("Mul", ["g", "k"], ["gk"]),
                N("BatchNormalization", ["cc", "slope1", "shift1", "zero", "one"], ["csb"], epsilon=0.0),
                N("Sub", ["gk", "csb"], ["dx"])]
    affine_g = [N("BatchNormalization", ["g", "k1", "nshift1", "zero", "one"], ["gks"], epsilon=0.0),
                N("Mul", ["cc", "slope"], ["cs"]), N("Sub", ["gks", "cs"], ["dx"])]
    candidates = {"mul_mul_add_sub": sums + coef + four, "mul_bn_affine_sub": sums + coef + affine_c,
                  "bn_affine_g_mul_sub": sums + coef + affine_g, "matmul_sum_gc": sums_mm + coef + four}
    shape = [n, c, h, h]
    return {k: session(v, inits, [("g", shape), ("cc", shape)], ["dx", "sgc", "sg"]) for k, v in candidates.items()}


def mask_candidates(rows, h):
    within = (np.arange(h) % 2)[:, None] * 2 + (np.arange(h) % 2)[None, :]
    weights = (2.0 ** (3 - within))[None, None].astype(np.float32)
    inits = dict(w=weights, sc=[1, 1, 2, 2], zero=[0.0], i_ax=[2, 3])
    common = [N("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2]), N("Resize", ["y", "", "sc"], ["uy"], **NEAREST),
              N("Equal", ["x", "uy"], ["ismax"]), N("Cast", ["ismax"], ["m"], to=F),
              N("Resize", ["g", "", "sc"], ["ug"], **NEAREST)]

    def first(weights_name):
        return [N("Mul", ["m", weights_name], ["wt"]), N("MaxPool", ["wt"], ["fp"], kernel_shape=[2, 2], strides=[2, 2]),
                N("Resize", ["fp", "", "sc"], ["first"], **NEAREST), N("Equal", ["wt", "first"], ["e2"]),
                N("And", ["e2", "ismax"], ["ch"]), N("Cast", ["ch"], ["chf"], to=F)]
    ties = [N("ReduceSum", ["m", "i_ax"], ["rm"]), N("Equal", ["y", "y"], ["yok"]), N("Cast", ["yok"], ["yokf"], to=F),
            N("ReduceSum", ["yokf", "i_ax"], ["ry"]), N("Sub", ["rm", "ry"], ["extra"]),
            N("ReduceMax", ["extra"], ["emax"], keepdims=0), N("Greater", ["emax", "zero"], ["ties"])]

    def branch(nodes, out):
        return helper.make_graph(nodes, out, [], [helper.make_tensor_value_info(out, F, None)])
    if_dx = N("If", ["ties"], ["dx"], then_branch=branch(first("w") + [N("Mul", ["chf", "ug"], ["dx_t"])], "dx_t"),
              else_branch=branch([N("Mul", ["m", "ug"], ["dx_e"])], "dx_e"))
    local_w = N("Constant", [], ["w_local"], value=numpy_helper.from_array(weights))
    if_mask = N("If", ["ties"], ["mask"], then_branch=branch([local_w] + first("w_local"), "chf"),
                else_branch=branch([N("Cast", ["ismax"], ["m_out"], to=F)], "m_out"))
    candidates = {"first_max_always": common + first("w") + [N("Mul", ["chf", "ug"], ["dx"])],
                  "if_dx": common + ties + [if_dx], "if_mask": common + ties + [if_mask, N("Mul", ["mask", "ug"], ["dx"])]}
    return {k: session(v, inits, [("x", [rows, 1, h, h]), ("g", [rows, 1, h // 2, h // 2])], ["dx"])
            for k, v in candidates.items()}


def cpu_ms(sess, feeds, calls):
    start = time.process_time()
    for _ in range(calls):
        sess.run(None, feeds)
    return (time.process_time() - start) / calls * 1e3


def compare(title, sessions, feeds, rounds, calls):
    first = next(iter(sessions.values())).run(None, feeds)[0]
    diffs = {k: float(np.nanmax(np.abs(s.run(None, feeds)[0] - first))) for k, s in sessions.items()}
    times = {k: [] for k in sessions}
    for _ in range(rounds):
        for k, s in sessions.items():
            times[k].append(cpu_ms(s, feeds, calls))
    base = times[next(iter(sessions))]
    print(title)
    for k, t in times.items():
        ratio = statistics.median(a / b for a, b in zip(t, base))
        print(f"  {k:22s} {statistics.median(t):7.3f} ms  ratio {ratio:5.2f}  max |diff| {diffs[k]:.2g}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for n, c, h in [(64, 32, 32), (64, 64, 16)]:
        x = (rng.standard_normal((n, c, h, h)) * 2 + 1).astype(np.float32)
        g = rng.standard_normal(x.shape).astype(np.float32)
        compare(f"BatchNorm forward {n}x{c}x{h}x{h}", forward_candidates(n, c, h), {"x": x}, args.rounds, args.calls)
        centered = (x - x.mean((0, 2, 3), keepdims=True)).astype(np.float32)
        compare(f"BatchNorm dx {n}x{c}x{h}x{h}", backward_candidates(n, c, h), {"g": g, "cc": centered},
                args.rounds, args.calls)
        rows = n * c
        xv = x.reshape(rows, 1, h, h)
        gv = rng.standard_normal((rows, 1, h // 2, h // 2)).astype(np.float32)
        masks = mask_candidates(rows, h)
        compare(f"pool mask {rows}x1x{h}x{h}, continuous", masks, {"x": xv, "g": gv}, args.rounds, args.calls)
        compare(f"pool mask {rows}x1x{h}x{h}, ties", masks, {"x": np.round(xv * 2) / 2, "g": gv}, args.rounds, args.calls)


if __name__ == "__main__":
    main()
