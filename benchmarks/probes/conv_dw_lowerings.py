"""Probe: the cheapest standard-ONNX lowering of a convolution's weight gradient on ONNX Runtime CPU.

    python benchmarks/probes/conv_dw_lowerings.py [--shape N,C,O,H,K,P]

One 32->64 3x3 pad-1 layer on 16x16 maps, batch 64 (the padded CIFAR CNN's second conv).
Candidates: (A) a Conv over the batch-transposed input with the output gradient as kernel;
(B1) patches by a one-hot depthwise Conv, then batched MatMul and a ReduceSum over the batch;
(B2) the same patches laid out for one big Gemm. Prints median ms of each and checks they agree
with PyTorch's weight gradient when torch is installed.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

N, C, O, H, K, P = 64, 32, 64, 16, 3, 1  # batch, in/out channels, input size, kernel, padding
F = TensorProto.FLOAT


def set_shape(text: str) -> None:
    """``--shape N,C,O,H,K,P``: probe another layer (stride 1)."""
    global N, C, O, H, K, P, OH
    N, C, O, H, K, P = (int(v) for v in text.split(","))
    OH = H + 2 * P - K + 1


OH = H + 2 * P - K + 1


def model(nodes, inits, out_shape):
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [N, C, H, H]),
                                           helper.make_tensor_value_info("g", F, [N, O, OH, OH])],
                              [helper.make_tensor_value_info("dw", F, out_shape)], initializer=inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])


def ints(name, values):
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def transposed_batch():
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2, 3]),
             helper.make_node("Transpose", ["g"], ["gt"], perm=[1, 0, 2, 3]),
             helper.make_node("Conv", ["xt", "gt"], ["cw"], pads=[P] * 4),
             helper.make_node("Transpose", ["cw"], ["dw"], perm=[1, 0, 2, 3])]
    return model(nodes, [], [O, C, K, K])


def onehot_kernel():
    eye = np.zeros((C * K * K, 1, K, K), np.float32)
    for c in range(C):
        for i in range(K * K):
            eye[c * K * K + i, 0, i // K, i % K] = 1
    return numpy_helper.from_array(eye, "eye")


def patches_batched_matmul():
    L = OH * OH
    nodes = [helper.make_node("Conv", ["x", "eye"], ["pt"], pads=[P] * 4, group=C),
             helper.make_node("Reshape", ["pt", "s1"], ["p3"]),
             helper.make_node("Reshape", ["g", "s2"], ["g3"]),
             helper.make_node("Transpose", ["p3"], ["p3t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["g3", "p3t"], ["prod"]),
             helper.make_node("ReduceSum", ["prod", "ax"], ["sum"], keepdims=0),
             helper.make_node("Reshape", ["sum", "s3"], ["dw"])]
    inits = [onehot_kernel(), ints("s1", [N, C * K * K, L]), ints("s2", [N, O, L]), ints("ax", [0]),
             ints("s3", [O, C, K, K])]
    return model(nodes, inits, [O, C, K, K])


def patches_gemm():
    L = OH * OH
    nodes = [helper.make_node("Conv", ["x", "eye"], ["pt"], pads=[P] * 4, group=C),
             helper.make_node("Reshape", ["pt", "s1"], ["p3"]),
             helper.make_node("Transpose", ["p3"], ["p3t"], perm=[1, 0, 2]),
             helper.make_node("Reshape", ["p3t", "s4"], ["p2"]),
             helper.make_node("Transpose", ["g"], ["gt"], perm=[1, 0, 2, 3]),
             helper.make_node("Reshape", ["gt", "s5"], ["g2"]),
             helper.make_node("Gemm", ["g2", "p2"], ["w2"], transB=1),
             helper.make_node("Reshape", ["w2", "s3"], ["dw"])]
    inits = [onehot_kernel(), ints("s1", [N, C * K * K, L]), ints("s4", [C * K * K, N * L]),
             ints("s5", [O, N * L]), ints("s3", [O, C, K, K])]
    return model(nodes, inits, [O, C, K, K])


def patches_small_transpose():
    """B3: the one-hot patches, but MatMul(patches, g^T): only g and the (C*k*k, O) result are transposed."""
    L = OH * OH
    nodes = [helper.make_node("Conv", ["x", "eye"], ["pt"], pads=[P] * 4, group=C),
             helper.make_node("Reshape", ["pt", "s1"], ["p3"]),
             helper.make_node("Reshape", ["g", "s2"], ["g3"]),
             helper.make_node("Transpose", ["g3"], ["g3t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["p3", "g3t"], ["prod"]),
             helper.make_node("ReduceSum", ["prod", "ax"], ["sum"], keepdims=0),
             helper.make_node("Transpose", ["sum"], ["sumt"], perm=[1, 0]),
             helper.make_node("Reshape", ["sumt", "s3"], ["dw"])]
    inits = [onehot_kernel(), ints("s1", [N, C * K * K, L]), ints("s2", [N, O, L]), ints("ax", [0]),
             ints("s3", [O, C, K, K])]
    return model(nodes, inits, [O, C, K, K])


def gather_indices():
    """(K*K, OH*OW) positions in the flattened padded input that each tap reads at each output position."""
    hp = H + 2 * P
    taps = []
    for kh in range(K):
        for kw in range(K):
            taps.append(((np.arange(OH)[:, None] + kh) * hp + np.arange(OH)[None, :] + kw).reshape(-1))
    return np.stack(taps)


def gather_patches(einsum=False):
    """G: im2col as one Gather (build-time index table) on the padded, spatially flattened input."""
    L = OH * OH
    nodes = [helper.make_node("Pad", ["x", "pads"], ["xp"]),
             helper.make_node("Reshape", ["xp", "s0"], ["xf"]),
             helper.make_node("Gather", ["xf", "idx"], ["p4"], axis=2),
             helper.make_node("Reshape", ["p4", "s1"], ["p3"]),
             helper.make_node("Reshape", ["g", "s2"], ["g3"]),
             helper.make_node("Transpose", ["g3"], ["g3t"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["p3", "g3t"], ["prod"]),
             helper.make_node("ReduceSum", ["prod", "ax"], ["sum"], keepdims=0),
             helper.make_node("Transpose", ["sum"], ["sumt"], perm=[1, 0]),
             helper.make_node("Reshape", ["sumt", "s3"], ["dw"])]
    inits = [ints("pads", [0, 0, P, P, 0, 0, P, P]), ints("s0", [N, C, -1]), ints("idx", gather_indices()),
             ints("s1", [N, C * K * K, L]), ints("s2", [N, O, L]), ints("ax", [0]), ints("s3", [O, C, K, K])]
    return model(nodes, inits, [O, C, K, K])


def slice_patches():
    """S: im2col as K*K Slices of the padded input, concatenated on a new tap axis."""
    L = OH * OH
    nodes = [helper.make_node("Pad", ["x", "pads"], ["xp"])]
    inits = [ints("pads", [0, 0, P, P, 0, 0, P, P]), ints("axes", [2, 3]), ints("s5", [N, C, 1, L])]
    parts = []
    for kh in range(K):
        for kw in range(K):
            t = f"{kh}_{kw}"
            inits += [ints(f"b{t}", [kh, kw]), ints(f"e{t}", [kh + OH, kw + OH])]
            nodes += [helper.make_node("Slice", ["xp", f"b{t}", f"e{t}", "axes"], [f"sl{t}"]),
                      helper.make_node("Reshape", [f"sl{t}", "s5"], [f"r{t}"])]
            parts.append(f"r{t}")
    nodes += [helper.make_node("Concat", parts, ["p4"], axis=2),
              helper.make_node("Reshape", ["p4", "s1"], ["p3"]),
              helper.make_node("Reshape", ["g", "s2"], ["g3"]),
              helper.make_node("Transpose", ["g3"], ["g3t"], perm=[0, 2, 1]),
              helper.make_node("MatMul", ["p3", "g3t"], ["prod"]),
              helper.make_node("ReduceSum", ["prod", "ax"], ["sum"], keepdims=0),
              helper.make_node("Transpose", ["sum"], ["sumt"], perm=[1, 0]),
              helper.make_node("Reshape", ["sumt", "s3"], ["dw"])]
    inits += [ints("s1", [N, C * K * K, L]), ints("s2", [N, O, L]), ints("ax", [0]), ints("s3", [O, C, K, K])]
    return model(nodes, inits, [O, C, K, K])


def median_ms(session, feeds, repeats=30):
    session.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    import sys
    if len(sys.argv) == 3 and sys.argv[1] == "--shape":
        set_shape(sys.argv[2])
    print(f"N={N} C={C} O={O} H={H} K={K} P={P}")
    rng = np.random.default_rng(0)
    feeds = {"x": rng.standard_normal((N, C, H, H)).astype(np.float32),
             "g": rng.standard_normal((N, O, OH, OH)).astype(np.float32)}
    results = {}
    for name, build in [("A transposed-batch Conv", transposed_batch), ("B1 patches + batched MatMul",
                        patches_batched_matmul), ("B2 patches + one Gemm", patches_gemm),
                        ("B3 patches, small transposes", patches_small_transpose),
                        ("G Gather patches + MatMul", gather_patches), ("S Slice patches + MatMul", slice_patches)]:
        session = build()
        results[name] = session.run(None, feeds)[0]
        print(f"{name:32s} {median_ms(session, feeds):7.2f} ms")
    try:
        import torch
        x = torch.from_numpy(feeds["x"])
        w = torch.zeros((O, C, K, K), requires_grad=True)
        torch.nn.functional.conv2d(x, w, padding=P).backward(torch.from_numpy(feeds["g"]))
        reference = w.grad.numpy()
        start = time.perf_counter()
        for _ in range(30):
            w.grad = None
            torch.nn.functional.conv2d(x, w, padding=P).backward(torch.from_numpy(feeds["g"]))
        print(f"{'PyTorch conv forward + backward':32s} {(time.perf_counter() - start) / 30 * 1e3:7.2f} ms")
        for name, value in results.items():
            np.testing.assert_allclose(value, reference, rtol=1e-3, atol=1e-2, err_msg=name)
        print("all lowerings match PyTorch's weight gradient")
    except ImportError:
        pass


if __name__ == "__main__":
    main()
