"""Probe: a stride-1 convolution's input gradient on ONNX Runtime CPU: ConvTranspose, or a Conv with the
flipped, transposed kernel (pads k - 1 - p).

    python benchmarks/probes/conv_dx_lowerings.py [--shape N,C,O,H,K,P] [--repeats 30]

Default: the padded CNN's second layer (32->64, 3x3, pad 1, 16x16 maps, batch 64). Prints the median ms
of each and checks both against PyTorch's input gradient.
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


def session(nodes, inits, n, c, o, h, k, p):
    oh = h + 2 * p - k + 1
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("g", F, [n, o, oh, oh]),
                                           helper.make_tensor_value_info("w", F, [o, c, k, k])],
                              [helper.make_tensor_value_info("dx", F, [n, c, h, h])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def conv_transpose(n, c, o, h, k, p):
    return session([helper.make_node("ConvTranspose", ["g", "w"], ["dx"], pads=[p] * 4)], [], n, c, o, h, k, p)


def flipped_conv(n, c, o, h, k, p):
    nodes = [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0, 2, 3]),
             helper.make_node("Slice", ["wt", "starts", "ends", "axes", "steps"], ["wf"]),
             helper.make_node("Conv", ["g", "wf"], ["dx"], pads=[k - 1 - p] * 4)]
    inits = [ints("starts", [-1, -1]), ints("ends", [-(k + 1), -(k + 1)]), ints("axes", [2, 3]), ints("steps", [-1, -1])]
    return session(nodes, inits, n, c, o, h, k, p)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="64,32,64,16,3,1")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    n, c, o, h, k, p = (int(v) for v in args.shape.split(","))
    rng = np.random.default_rng(0)
    oh = h + 2 * p - k + 1
    feeds = {"g": rng.standard_normal((n, o, oh, oh)).astype(np.float32),
             "w": rng.standard_normal((o, c, k, k)).astype(np.float32)}
    import torch
    x = torch.zeros((n, c, h, h), requires_grad=True)
    torch.nn.functional.conv2d(x, torch.from_numpy(feeds["w"]), padding=p).backward(torch.from_numpy(feeds["g"]))
    print(f"N={n} C={c} O={o} H={h} K={k} P={p}")
    for name, build in (("ConvTranspose", conv_transpose), ("Conv, flipped kernel", flipped_conv)):
        sess = build(n, c, o, h, k, p)
        np.testing.assert_allclose(sess.run(None, feeds)[0], x.grad.numpy(), rtol=1e-3, atol=1e-3, err_msg=name)
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            sess.run(None, feeds)
            times.append(time.perf_counter() - start)
        print(f"  {name:24s} {statistics.median(times) * 1e3:7.3f} ms")


if __name__ == "__main__":
    main()
