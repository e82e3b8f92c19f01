"""Probe: the weight gradient of a stride-1 Conv as ONE large GEMM over flat-shifted NHWC slices.

    python benchmarks/probes/conv_dw_flat_shift.py [--layers 64,32,64,16,3,1;64,3,32,32,3,1] [--threads 1]

Layers: N,C,O,H,k,pad (square maps and kernels). Candidates:
- patches: graphc's rule (one-hot depthwise Conv = im2col, batched MatMul(patches, g^T), ReduceSum over N);
- transposed batch: Conv of x^T (C, N, H, W) with g^T (O, N, H', W') as the kernel;
- flat shift, one GEMM: x in NHWC, padded (one extra bottom row), flattened per sample; in that flat
  layout tap (i, j) is the offset (i * Wp + j) * C, so its patches are ONE contiguous slice per sample
  over an output grid Wp wide (the Wp - W' extra columns meet zero-padded columns of g); the k*k slices
  are concatenated on the channel axis and dW = g^T (O, N*H'*Wp) @ slices (N*H'*Wp, k*k*C);
- flat shift, k*k GEMMs: the same slices, one GEMM each (no Concat).
Prints wall and CPU ms (medians) and checks each against PyTorch's weight gradient.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def ints(name, values):
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def session(nodes, inits, shapes, threads):
    n, c, o, h, k, p = shapes
    oh = h + 2 * p - k + 1
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [n, c, h, h]),
                                           helper.make_tensor_value_info("g", F, [n, o, oh, oh])],
                              [helper.make_tensor_value_info("dw", F, [o, c, k, k])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def patches(shapes, threads):
    n, c, o, h, k, p = shapes
    taps = k * k
    eye = np.zeros((c * taps, 1, k, k), np.float32)
    for ci in range(c):
        for t in range(taps):
            eye[(ci * taps + t, 0, *np.unravel_index(t, (k, k)))] = 1
    nodes = [helper.make_node("Conv", ["x", "eye"], ["pt"], group=c, kernel_shape=[k, k], pads=[p] * 4),
             helper.make_node("Reshape", ["pt", "s1"], ["pr"]), helper.make_node("Reshape", ["g", "s2"], ["gr"]),
             helper.make_node("Transpose", ["gr"], ["gt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["pr", "gt"], ["m"]),
             helper.make_node("ReduceSum", ["m", "ax0"], ["s"], keepdims=0),
             helper.make_node("Transpose", ["s"], ["st"], perm=[1, 0]),
             helper.make_node("Reshape", ["st", "wshape"], ["dw"])]
    inits = [numpy_helper.from_array(eye, "eye"), ints("s1", [0, c * taps, -1]), ints("s2", [0, o, -1]),
             ints("ax0", [0]), ints("wshape", [o, c, k, k])]
    return session(nodes, inits, shapes, threads)


def transposed_batch(shapes, threads):
    n, c, o, h, k, p = shapes
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2, 3]),
             helper.make_node("Transpose", ["g"], ["gt"], perm=[1, 0, 2, 3]),
             helper.make_node("Conv", ["xt", "gt"], ["full"], pads=[p] * 4),
             helper.make_node("Slice", ["full", "zero2", "kk", "ax23"], ["crop"]),
             helper.make_node("Transpose", ["crop"], ["dw"], perm=[1, 0, 2, 3])]
    inits = [ints("zero2", [0, 0]), ints("kk", [k, k]), ints("ax23", [2, 3])]
    return session(nodes, inits, shapes, threads)


def flat_shift(shapes, threads, one_gemm=True):
    n, c, o, h, k, p = shapes
    oh = h + 2 * p - k + 1
    wp = h + 2 * p
    rows = oh * wp  # output grid rows*Wp per sample
    nodes = [helper.make_node("Transpose", ["x"], ["xn"], perm=[0, 2, 3, 1]),
             # pad H by p on top, p + 1 at the bottom (the last tap's slice runs k - 1 elements past the end)
             helper.make_node("Pad", ["xn", "xpads"], ["xp"]),
             helper.make_node("Reshape", ["xp", "flat"], ["xf"]),
             helper.make_node("Pad", ["g", "gpads"], ["gp"]),  # g's W to Wp: zero columns
             helper.make_node("Transpose", ["gp"], ["gt"], perm=[1, 0, 2, 3]),
             helper.make_node("Reshape", ["gt", "gmat"], ["gm"])]
    inits = [ints("xpads", [0, p, p, 0, 0, p + 1, p, 0]), ints("flat", [n, -1]),
             ints("gpads", [0, 0, 0, 0, 0, 0, 0, wp - oh]), ints("gmat", [o, -1]), ints("ax1", [1]),
             ints("kmat", [-1, c])]
    slices = []
    for i in range(k):
        for j in range(k):
            off = (i * wp + j) * c
            inits += [ints(f"b{i}{j}", [off]), ints(f"e{i}{j}", [off + rows * c])]
            nodes.append(helper.make_node("Slice", ["xf", f"b{i}{j}", f"e{i}{j}", "ax1"], [f"s{i}{j}"]))
            nodes.append(helper.make_node("Reshape", [f"s{i}{j}", "kmat"], [f"r{i}{j}"]))
            slices.append(f"r{i}{j}")
    if one_gemm:
        nodes += [helper.make_node("Concat", slices, ["cat"], axis=1),
                  helper.make_node("MatMul", ["gm", "cat"], ["prod"])]  # (O, k*k*C), [t, c]
    else:
        for s in slices:
            nodes.append(helper.make_node("MatMul", ["gm", s], [f"p{s}"]))
        nodes.append(helper.make_node("Concat", [f"p{s}" for s in slices], ["prod"], axis=1))
    nodes += [helper.make_node("Reshape", ["prod", "okkc"], ["pk"]),
              helper.make_node("Transpose", ["pk"], ["dw"], perm=[0, 3, 1, 2])]
    inits.append(ints("okkc", [o, k, k, c]))
    return session(nodes, inits, shapes, threads)


def timed(sess, feeds, repeats):
    sess.run(None, feeds)
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        sess.run(None, feeds)
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls) * 1e3, statistics.median(cpus) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="64,32,64,16,3,1;64,3,32,32,3,1;64,3,6,32,5,0;64,6,16,14,5,0")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch
    for layer in args.layers.split(";"):
        shapes = tuple(int(v) for v in layer.split(","))
        n, c, o, h, k, p = shapes
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c, h, h)).astype(np.float32)
        oh = h + 2 * p - k + 1
        g = rng.standard_normal((n, o, oh, oh)).astype(np.float32)
        w = torch.zeros((o, c, k, k), requires_grad=True)
        torch.nn.functional.conv2d(torch.from_numpy(x), w, padding=p).backward(torch.from_numpy(g))
        print(f"Conv weight gradient N,C,O,H,k,pad = {layer}, {args.threads} thread(s): wall ms, CPU ms (medians)")
        for name, build in [("patches (graphc's rule)", patches), ("transposed batch", transposed_batch),
                            ("flat shift, one GEMM", flat_shift),
                            ("flat shift, k*k GEMMs", lambda *a: flat_shift(*a, one_gemm=False))]:
            sess = build(shapes, args.threads)
            dw = sess.run(None, {"x": x, "g": g})[0]
            reference = w.grad.numpy()  # sums of ~N*H*W products: compare relative to the largest entry
            ok = np.abs(dw - reference).max() <= 1e-4 * np.abs(reference).max()
            wall, cpu = timed(sess, {"x": x, "g": g}, args.repeats)
            print(f"  {name:28s} {wall:7.2f} {cpu:7.2f}  {'matches' if ok else 'DIFFERS from'} PyTorch")


if __name__ == "__main__":
    main()
