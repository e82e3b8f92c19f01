"""Probe: the cheapest standard-ONNX lowering of MaxPool(2, 2) forward + backward on ONNX Runtime CPU.

    python benchmarks/probes/maxpool_grad_lowerings.py [--shape N,C,H] [--repeats 30]

Each candidate computes y = MaxPool(x) and dx for a given output gradient g, the tie rule being
PyTorch's (first maximum of the window, row-major). Prints median ms of each and checks every
candidate against PyTorch's gradient on an input full of ties (values rounded to a coarse grid).
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


def floats(name, values):
    return numpy_helper.from_array(np.asarray(values, np.float32), name)


def session(nodes, inits, n, c, h):
    o = h // 2
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [n, c, h, h]),
                                           helper.make_tensor_value_info("g", F, [n, c, o, o])],
                              [helper.make_tensor_value_info("y", F, [n, c, o, o]),
                               helper.make_tensor_value_info("dx", F, [n, c, h, h])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def scatter(n, c, h):
    """Indices output + ScatterElements(add) into zeros (graphc's rule before issue 11)."""
    nodes = [helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("ConstantOfShape", ["shape"], ["z"], value=numpy_helper.from_array(np.zeros(1, np.float32))),
             helper.make_node("Reshape", ["z", "flat"], ["zf"]), helper.make_node("Reshape", ["g", "flat"], ["gf"]),
             helper.make_node("Reshape", ["i", "flat"], ["if"]),
             helper.make_node("ScatterElements", ["zf", "if", "gf"], ["dxf"], axis=0, reduction="add"),
             helper.make_node("Reshape", ["dxf", "shape"], ["dx"])]
    return session(nodes, [ints("flat", [-1])], n, c, h)


def unpool(n, c, h):
    """Indices output + MaxUnpool of g."""
    nodes = [helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("MaxUnpool", ["g", "i", "shape"], ["dx"], kernel_shape=[2, 2], strides=[2, 2])]
    return session(nodes, [], n, c, h)


def tiled_6d(n, c, h):
    """x viewed as (N, C, O, 2, O, 2); min window number where x == y; broadcasting Equal/Where."""
    o = h // 2
    numbers = np.arange(4, dtype=np.float32).reshape(1, 1, 1, 2, 1, 2)
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Reshape", ["x", "tiled"], ["xr"]), helper.make_node("Reshape", ["y", "spread"], ["yr"]),
             helper.make_node("Equal", ["xr", "yr"], ["eq"]),
             helper.make_node("Where", ["eq", "numbers", "four"], ["cand"]),
             helper.make_node("ReduceMin", ["cand", "axes"], ["first"], keepdims=1),
             helper.make_node("Equal", ["numbers", "first"], ["sel"]),
             helper.make_node("Reshape", ["g", "spread"], ["gr"]),
             helper.make_node("Where", ["sel", "gr", "zero"], ["dxr"]),
             helper.make_node("Reshape", ["dxr", "xshape"], ["dx"])]
    inits = [ints("tiled", [0, 0, o, 2, o, 2]), ints("spread", [0, 0, o, 1, o, 1]), ints("axes", [3, 5]),
             floats("numbers", numbers), floats("four", 4), floats("zero", 0), ints("xshape", [0, 0, h, h])]
    return session(nodes, inits, n, c, h)


def space_to_depth_argmax(n, c, h):
    """SpaceToDepth puts the window positions on one axis; ArgMax (first max) + OneHot; DepthToSpace back."""
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("SpaceToDepth", ["x"], ["s"], blocksize=2),
             helper.make_node("Reshape", ["s", "win"], ["sw"]),
             helper.make_node("ArgMax", ["sw"], ["am"], axis=1, keepdims=0),
             helper.make_node("OneHot", ["am", "depth", "offon"], ["oh"], axis=1),
             helper.make_node("Reshape", ["g", "one"], ["gw"]),
             helper.make_node("Mul", ["oh", "gw"], ["dw"]),
             helper.make_node("Reshape", ["dw", "chan"], ["dc"]),
             helper.make_node("DepthToSpace", ["dc"], ["dx"], blocksize=2, mode="DCR")]
    inits = [ints("win", [0, 4, -1]), ints("one", [0, 1, -1]), ints("depth", [4]), floats("offon", [0, 1]),
             ints("chan", [0, 4 * c, h // 2, h // 2])]
    return session(nodes, inits, n, c, h)


def space_to_depth_equal(n, c, h):
    """SpaceToDepth; x == y on (N, 4, L) against (N, 1, L); first max by an exclusive CumSum over the 4."""
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("SpaceToDepth", ["x"], ["s"], blocksize=2),
             helper.make_node("Reshape", ["s", "win"], ["sw"]),
             helper.make_node("Reshape", ["y", "one"], ["yw"]),
             helper.make_node("Equal", ["sw", "yw"], ["eq"]),
             helper.make_node("Cast", ["eq"], ["eqf"], to=F),
             helper.make_node("CumSum", ["eqf", "axis1"], ["before"], exclusive=1),
             helper.make_node("Less", ["before", "half"], ["nonebefore"]),
             helper.make_node("And", ["eq", "nonebefore"], ["sel"]),
             helper.make_node("Reshape", ["g", "one"], ["gw"]),
             helper.make_node("Where", ["sel", "gw", "zero"], ["dw"]),
             helper.make_node("Reshape", ["dw", "chan"], ["dc"]),
             helper.make_node("DepthToSpace", ["dc"], ["dx"], blocksize=2, mode="DCR")]
    inits = [ints("win", [0, 4, -1]), ints("one", [0, 1, -1]), ints("axis1", 1), floats("half", 0.5),
             floats("zero", 0), ints("chan", [0, 4 * c, h // 2, h // 2])]
    return session(nodes, inits, n, c, h)


def resize_mask(n, c, h):
    """MaxPool without Indices; x == nearest-upsampled y; ties: a second MaxPool over -(window number)
    where x is a maximum picks the first one; g upsampled by Resize too."""
    w = np.arange(h)
    numbers = -((w[:, None] % 2) * 2 + (w[None, :] % 2)).astype(np.float32)[None, None]
    resize = dict(mode="nearest", nearest_mode="floor", coordinate_transformation_mode="asymmetric")
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Resize", ["y", "", "scales"], ["yu"], **resize),
             helper.make_node("Equal", ["x", "yu"], ["eq"]),
             helper.make_node("Where", ["eq", "numbers", "low"], ["score"]),
             helper.make_node("MaxPool", ["score"], ["first"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Resize", ["first", "", "scales"], ["firstu"], **resize),
             helper.make_node("Equal", ["score", "firstu"], ["sel"]),
             helper.make_node("Resize", ["g", "", "scales"], ["gu"], **resize),
             helper.make_node("Where", ["sel", "gu", "zero"], ["dx"])]
    inits = [floats("scales", [1, 1, 2, 2]), floats("numbers", numbers), floats("low", -8), floats("zero", 0)]
    return session(nodes, inits, n, c, h)


def resize_mask_no_ties(n, c, h):
    """The cost of the Resize family without the tie rule (NOT exact on ties: every maximum gets g)."""
    resize = dict(mode="nearest", nearest_mode="floor", coordinate_transformation_mode="asymmetric")
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Resize", ["y", "", "scales"], ["yu"], **resize),
             helper.make_node("Equal", ["x", "yu"], ["eq"]),
             helper.make_node("Resize", ["g", "", "scales"], ["gu"], **resize),
             helper.make_node("Where", ["eq", "gu", "zero"], ["dx"])]
    return session(nodes, [floats("scales", [1, 1, 2, 2]), floats("zero", 0)], n, c, h)


def median_ms(sess, feeds, repeats):
    sess.run(None, feeds)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="64,6,28", help="N,C,H (square input, H even)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    n, c, h = (int(v) for v in args.shape.split(","))
    rng = np.random.default_rng(0)
    x = np.round(rng.standard_normal((n, c, h, h)) * 2).astype(np.float32)  # coarse grid: many ties
    g = rng.standard_normal((n, c, h // 2, h // 2)).astype(np.float32)
    import torch
    tx = torch.from_numpy(x).requires_grad_()
    torch.nn.functional.max_pool2d(tx, 2).backward(torch.from_numpy(g))
    reference = tx.grad.numpy()
    print(f"MaxPool 2x2 forward + backward, x {x.shape}")
    for name, build in [("scatter (Indices + ScatterElements)", scatter), ("Indices + MaxUnpool", unpool),
                        ("6-D Equal/Where/ReduceMin", tiled_6d), ("SpaceToDepth + ArgMax + OneHot", space_to_depth_argmax),
                        ("SpaceToDepth + Equal + CumSum", space_to_depth_equal),
                        ("Resize mask, ties by a 2nd MaxPool", resize_mask),
                        ("Resize mask, ties NOT handled", resize_mask_no_ties)]:
        sess = build(n, c, h)
        dx = sess.run(["dx"], {"x": x, "g": g})[0]
        ok = np.array_equal(dx, reference)
        print(f"  {name:38s} {median_ms(sess, {'x': x, 'g': g}, args.repeats):7.3f} ms  "
              f"{'matches' if ok else 'DIFFERS from'} PyTorch (ties)")


if __name__ == "__main__":
    main()
