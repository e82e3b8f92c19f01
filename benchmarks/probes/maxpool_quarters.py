"""Probe: MaxPool 2x2 forward + backward on large maps, Indices + MaxUnpool against a four-quarter form.

    python benchmarks/probes/maxpool_quarters.py [--shapes 64,32,32;64,64,16] [--repeats 20] [--threads 1]

The quarter form: x's four window positions as four (N, C, H/2, W/2) tensors (``SpaceToDepth`` + ``Split``,
or four strided ``Slice``s); y = MaxPool(x) (MLAS, no Indices) or ``Max`` of the quarters; the gradient
goes to the first quarter equal to y (PyTorch's first-maximum rule: a running "not yet taken" cotangent,
``Where`` per quarter), the four results ``Concat``enated and put back by ``DepthToSpace``. Prints wall
and process-CPU ms (median) per candidate on continuous values, and checks each against PyTorch on an input
full of ties.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def consts(**values):
    return [numpy_helper.from_array(np.asarray(v, np.int64 if k.startswith("i_") else np.float32), k)
            for k, v in values.items()]


def session(nodes, inits, n, c, h, threads):
    o = h // 2
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [n, c, h, h]),
                                           helper.make_tensor_value_info("g", F, [n, c, o, o])],
                              [helper.make_tensor_value_info("y", F, [n, c, o, o]),
                               helper.make_tensor_value_info("dx", F, [n, c, h, h])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def unpool(n, c, h, threads):
    """graphc's rule for large maps: MaxPool with Indices (ORT's generic kernel) + MaxUnpool."""
    nodes = [helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Shape", ["x"], ["shape"]),
             helper.make_node("MaxUnpool", ["g", "i", "shape"], ["dx"], kernel_shape=[2, 2], strides=[2, 2])]
    return session(nodes, [], n, c, h, threads)


def _route(nodes):
    """dq0..dq3: g at the first quarter equal to y, by a running cotangent not yet taken."""
    rest = "g"
    for q in range(4):
        nodes.append(helper.make_node("Equal", [f"x{q}", "y"], [f"e{q}"]))
        nodes.append(helper.make_node("Where", [f"e{q}", rest, "zero"], [f"d{q}"]))
        if q < 3:
            nodes.append(helper.make_node("Where", [f"e{q}", "zero", rest], [f"rest{q}"]))
            rest = f"rest{q}"
    nodes += [helper.make_node("Concat", [f"d{q}" for q in range(4)], ["dc"], axis=1),
              helper.make_node("DepthToSpace", ["dc"], ["dx"], blocksize=2, mode="DCR")]
    return nodes


def quarters_s2d(n, c, h, threads, pool_y=True):
    nodes = [helper.make_node("SpaceToDepth", ["x"], ["s"], blocksize=2),
             helper.make_node("Split", ["s"], [f"x{q}" for q in range(4)], axis=1, num_outputs=4)]
    nodes.append(helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2]) if pool_y else
                 helper.make_node("Max", [f"x{q}" for q in range(4)], ["y"]))
    return session(_route(nodes), consts(zero=0.0), n, c, h, threads)


def quarters_slices(n, c, h, threads):
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])]
    inits = consts(zero=0.0, i_axes=[2, 3], i_step=[2, 2], i_end=[h, h])
    for q, (r, s) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        inits += consts(**{f"i_start{q}": [r, s]})
        nodes.append(helper.make_node("Slice", ["x", f"i_start{q}", "i_end", "i_axes", "i_step"], [f"x{q}"]))
    return session(_route(nodes), inits, n, c, h, threads)


_NEAREST = {"mode": "nearest", "nearest_mode": "floor", "coordinate_transformation_mode": "asymmetric"}


def _window_numbers(h, start, step, dtype=np.float32):
    """(1, 1, h, h): start + step * (row-major position in the 2x2 window)."""
    w = np.arange(h)
    return (start + step * ((w[:, None] % 2) * 2 + (w[None, :] % 2))).astype(dtype)[None, None]


def resize_mask_rule(n, c, h, threads):
    """graphc's rule for small maps (pool.py ``_max_pool_mask_vjp``): Where over -position, MaxPool, Equal."""
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Resize", ["y", "", "scales"], ["yu"], **_NEAREST),
             helper.make_node("Equal", ["x", "yu"], ["eq"]),
             helper.make_node("Where", ["eq", "numbers", "low"], ["score"]),
             helper.make_node("MaxPool", ["score"], ["first"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Resize", ["first", "", "scales"], ["firstu"], **_NEAREST),
             helper.make_node("Equal", ["numbers", "firstu"], ["sel"]),
             helper.make_node("Resize", ["g", "", "scales"], ["gu"], **_NEAREST),
             helper.make_node("Where", ["sel", "gu", "zero"], ["dx"])]
    inits = consts(scales=[1, 1, 2, 2], low=-4.0, zero=0.0) + \
        [numpy_helper.from_array(_window_numbers(h, 0, -1), "numbers")]
    return session(nodes, inits, n, c, h, threads)


def resize_mask_arithmetic(n, c, h, threads):
    """The mask by same-shape and leading-axis-broadcast arithmetic only (no Where): weights 8, 4, 2, 1 over
    the window positions where x is a maximum; the window's largest weight marks the first maximum."""
    nodes = [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Resize", ["y", "", "scales"], ["yu"], **_NEAREST),
             helper.make_node("Equal", ["x", "yu"], ["eq"]),
             helper.make_node("Cast", ["eq"], ["eqf"], to=F),
             helper.make_node("Mul", ["eqf", "weights"], ["w"]),
             helper.make_node("MaxPool", ["w"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Resize", ["m", "", "scales"], ["mu"], **_NEAREST),
             helper.make_node("Equal", ["w", "mu"], ["top"]),
             helper.make_node("And", ["top", "eq"], ["sel"]),
             helper.make_node("Cast", ["sel"], ["self"], to=F),
             helper.make_node("Resize", ["g", "", "scales"], ["gu"], **_NEAREST),
             helper.make_node("Mul", ["self", "gu"], ["dx"])]
    inits = consts(scales=[1, 1, 2, 2]) + [numpy_helper.from_array(2.0 ** -_window_numbers(h, -3, 1), "weights")]
    return session(nodes, inits, n, c, h, threads)


def resize_mask_arithmetic_flat(n, c, h, threads, flat_forward=False):
    """``resize_mask_arithmetic`` on a (N*C, 1, H, W) view of x, y and g: one channel keeps ONNX Runtime's
    NCHWc layout transformer off the mask's MaxPool and Resizes (its Reorder copies cost more than the ops);
    ``flat_forward`` pools the forward through the view too."""
    o = h // 2
    nodes = [helper.make_node("Reshape", ["x", "i_flat"], ["xv"])]
    if flat_forward:
        nodes += [helper.make_node("MaxPool", ["xv"], ["yv"], kernel_shape=[2, 2], strides=[2, 2]),
                  helper.make_node("Reshape", ["yv", "i_pooled"], ["y"])]
    else:
        nodes += [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2]),
                  helper.make_node("Reshape", ["y", "i_flat"], ["yv"])]
    nodes += [helper.make_node("Resize", ["yv", "", "scales"], ["yu"], **_NEAREST),
              helper.make_node("Equal", ["xv", "yu"], ["eq"]),
              helper.make_node("Cast", ["eq"], ["eqf"], to=F),
              helper.make_node("Mul", ["eqf", "weights"], ["w"]),
              helper.make_node("MaxPool", ["w"], ["m"], kernel_shape=[2, 2], strides=[2, 2]),
              helper.make_node("Resize", ["m", "", "scales"], ["mu"], **_NEAREST),
              helper.make_node("Equal", ["w", "mu"], ["top"]),
              helper.make_node("And", ["top", "eq"], ["sel"]),
              helper.make_node("Reshape", ["g", "i_flat"], ["gv"]),
              helper.make_node("Resize", ["gv", "", "scales"], ["gu"], **_NEAREST),
              helper.make_node("Where", ["sel", "gu", "zero"], ["dxv"]),
              helper.make_node("Reshape", ["dxv", "i_full"], ["dx"])]
    inits = consts(scales=[1, 1, 2, 2], zero=0.0, i_flat=[-1, 1, 0, 0], i_full=[n, c, h, h], i_pooled=[n, c, o, o])
    inits.append(numpy_helper.from_array(2.0 ** -_window_numbers(h, -3, 1), "weights"))
    return session(nodes, inits, n, c, h, threads)


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
    parser.add_argument("--shapes", default="64,32,32;64,64,16", help="N,C,H;... (square inputs, H even)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch
    candidates = [("Indices + MaxUnpool", unpool), ("S2D + Split, y by MaxPool", quarters_s2d),
                  ("S2D + Split, y by Max", lambda *a: quarters_s2d(*a, pool_y=False)),
                  ("4 strided Slices, y by MaxPool", quarters_slices), ("Resize mask (graphc's small-map rule)",
                  resize_mask_rule), ("Resize mask by arithmetic", resize_mask_arithmetic),
                  ("arithmetic mask, (N*C,1,H,W) view", resize_mask_arithmetic_flat),
                  ("arithmetic mask, view, forward too", lambda *a: resize_mask_arithmetic_flat(*a, flat_forward=True))]
    for shape in args.shapes.split(";"):
        n, c, h = (int(v) for v in shape.split(","))
        rng = np.random.default_rng(0)
        x = np.round(rng.standard_normal((n, c, h, h)) * 0.8).astype(np.float32)  # coarse grid: many ties
        x[0, 0] = 1.0
        g = rng.standard_normal((n, c, h // 2, h // 2)).astype(np.float32)
        tx = torch.from_numpy(x).requires_grad_()
        torch.nn.functional.max_pool2d(tx, 2).backward(torch.from_numpy(g))
        print(f"MaxPool 2x2 forward + backward, x {x.shape}, {args.threads} thread(s): wall ms, CPU ms (medians)")
        for name, build in candidates:
            sess = build(n, c, h, args.threads)
            y, dx = sess.run(["y", "dx"], {"x": x, "g": g})
            ok = np.array_equal(dx, tx.grad.numpy()) and np.array_equal(y, torch.nn.functional.max_pool2d(
                torch.from_numpy(x), 2).numpy())
            # timed on continuous values (a BatchNorm's output): ties make the Indices kernel's branches predictable
            wall, cpu = timed(sess, {"x": rng.standard_normal(x.shape).astype(np.float32), "g": g}, args.repeats)
            print(f"  {name:32s} {wall:7.2f} {cpu:7.2f}  {'matches' if ok else 'DIFFERS from'} PyTorch (ties)")


if __name__ == "__main__":
    main()
