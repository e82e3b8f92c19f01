"""Probe: a convolution's weight gradient over chunks of the batch, against the unchunked lowerings.

    python benchmarks/probes/conv_dw_chunks.py [--layers 64,3,6,32,5,0] [--variants tb,tb_split8,...]
                                               [--rounds 4] [--repeats 30] [--threads 1]
    python benchmarks/probes/conv_dw_chunks.py --step lenet [--settings default,no_shifted] [--steps 30]

Layers: N,C,O,H,k,pad (square maps and kernels, stride 1); the default is LeNet's conv1 and conv2.
Variants (``B`` = samples per chunk):
- ``tb``: graphc's transposed-batch rule, Conv of x^T (C, N, H, W) with g^T (O, N, H', W') as the kernel;
  its GEMM is M = O, N = k*k, K = N*H'*W' (LeNet's conv1: 6 x 25 x 50176), an im2col far larger than cache;
- ``tb_splitB``: x^T and g^T split along their batch axis (1) into N/B chunks, one Conv each, one ``Sum``;
- ``tb_preB``: x and g split along axis 0 first (contiguous), each chunk transposed, one Conv each, ``Sum``;
- ``patches``: graphc's patches rule (one-hot depthwise Conv, MatMul(patches, g^T), ReduceSum over N);
- ``patches_chunkB``: the patches rule per chunk of B samples, the chunk sums added by one ``Sum``.
- ``shifted_gemm``: ONE Gemm over kw width-shifted copies of x^T and kh row-shifted copies of g^T, made
  by ``Slice``s + ``Concat``;
- ``shifted_gather``: the same Gemm, each shifted stack made by one ``Gather`` on an (., ., N)-last layout
  (the rule's ``_weight_grad_by_shifted_gemm``).
With ``--step MODEL`` the whole training step instead (``cnn_step_variants.py``'s workers), settings
``default`` and ``no_shifted`` (the transposed-batch Conv where the shifted Gemm now applies) plus theirs.
Each variant runs in its own process, the variants taking turns round after round (``common.take_turns``);
prints median wall ms and process CPU ms per call over rounds [min-max] and the ratio to the first
variant in the same round. Every variant is checked against PyTorch's weight gradient first.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import report, round_ratios, spread, take_turns, worker_spec  # noqa: E402


def ints(name, values):
    from onnx import numpy_helper
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _session(nodes, inits, shapes, threads):
    import onnxruntime as ort
    from onnx import TensorProto, helper
    n, c, o, h, k, p = shapes
    oh = h + 2 * p - k + 1
    f = TensorProto.FLOAT
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f, [n, c, h, h]),
                                           helper.make_tensor_value_info("g", f, [n, o, oh, oh])],
                              [helper.make_tensor_value_info("dw", f, [o, c, k, k])], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _tail(nodes, inits, summed, k):
    """Crop the (C, O, ...) correlation to the kernel size and transpose it to (O, C, k, k)."""
    from onnx import helper
    nodes += [helper.make_node("Slice", [summed, "zero2", "kk", "ax23"], ["crop"]),
              helper.make_node("Transpose", ["crop"], ["dw"], perm=[1, 0, 2, 3])]
    inits += [ints("zero2", [0, 0]), ints("kk", [k, k]), ints("ax23", [2, 3])]


def transposed_batch(shapes, chunk=None, pre=False):
    from onnx import helper
    n, c, o, h, k, p = shapes
    nodes, inits = [], []
    if chunk is None:
        nodes += [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2, 3]),
                  helper.make_node("Transpose", ["g"], ["gt"], perm=[1, 0, 2, 3]),
                  helper.make_node("Conv", ["xt", "gt"], ["full"], pads=[p] * 4)]
        _tail(nodes, inits, "full", k)
        return nodes, inits
    pieces = n // chunk
    inits.append(ints("sizes", [chunk] * pieces))
    xs, gs = [f"xs{i}" for i in range(pieces)], [f"gs{i}" for i in range(pieces)]
    if pre:  # contiguous split of the batch, then a small transpose per chunk
        nodes += [helper.make_node("Split", ["x", "sizes"], xs, axis=0),
                  helper.make_node("Split", ["g", "sizes"], gs, axis=0)]
        for i in range(pieces):
            nodes += [helper.make_node("Transpose", [xs[i]], [f"xt{i}"], perm=[1, 0, 2, 3]),
                      helper.make_node("Transpose", [gs[i]], [f"gt{i}"], perm=[1, 0, 2, 3])]
        xts, gts = [f"xt{i}" for i in range(pieces)], [f"gt{i}" for i in range(pieces)]
    else:
        nodes += [helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2, 3]),
                  helper.make_node("Transpose", ["g"], ["gt"], perm=[1, 0, 2, 3]),
                  helper.make_node("Split", ["xt", "sizes"], xs, axis=1),
                  helper.make_node("Split", ["gt", "sizes"], gs, axis=1)]
        xts, gts = xs, gs
    for i in range(pieces):
        nodes.append(helper.make_node("Conv", [xts[i], gts[i]], [f"part{i}"], pads=[p] * 4))
    nodes.append(helper.make_node("Sum", [f"part{i}" for i in range(pieces)], ["full"]))
    _tail(nodes, inits, "full", k)
    return nodes, inits


def patches(shapes, chunk=None):
    from onnx import helper, numpy_helper
    n, c, o, h, k, p = shapes
    taps = k * k
    eye = np.zeros((c * taps, 1, k, k), np.float32)
    for ci in range(c):
        for t in range(taps):
            eye[(ci * taps + t, 0, *np.unravel_index(t, (k, k)))] = 1
    inits = [numpy_helper.from_array(eye, "eye"), ints("s1", [0, c * taps, -1]), ints("s2", [0, o, -1]),
             ints("ax0", [0]), ints("wshape", [o, c, k, k])]
    pieces = 1 if chunk is None else n // chunk
    nodes = []
    if pieces > 1:
        inits.append(ints("sizes", [chunk] * pieces))
        nodes += [helper.make_node("Split", ["x", "sizes"], [f"x{i}" for i in range(pieces)], axis=0),
                  helper.make_node("Split", ["g", "sizes"], [f"g{i}" for i in range(pieces)], axis=0)]
        names = [(f"x{i}", f"g{i}") for i in range(pieces)]
    else:
        names = [("x", "g")]
    sums = []
    for i, (xi, gi) in enumerate(names):
        nodes += [helper.make_node("Conv", [xi, "eye"], [f"pt{i}"], group=c, kernel_shape=[k, k], pads=[p] * 4),
                  helper.make_node("Reshape", [f"pt{i}", "s1"], [f"pr{i}"]),
                  helper.make_node("Reshape", [gi, "s2"], [f"gr{i}"]),
                  helper.make_node("Transpose", [f"gr{i}"], [f"gtr{i}"], perm=[0, 2, 1]),
                  helper.make_node("MatMul", [f"pr{i}", f"gtr{i}"], [f"m{i}"]),
                  helper.make_node("ReduceSum", [f"m{i}", "ax0"], [f"sum{i}"], keepdims=0)]
        sums.append(f"sum{i}")
    if pieces > 1:
        nodes.append(helper.make_node("Sum", sums, ["s"]))
    else:
        nodes.append(helper.make_node("Identity", sums, ["s"]))
    nodes += [helper.make_node("Transpose", ["s"], ["st"], perm=[1, 0]),
              helper.make_node("Reshape", ["st", "wshape"], ["dw"])]
    return nodes, inits


def shifted_gemm(shapes):
    """dw as ONE Gemm with no im2col: the width taps are kw Slices of x^T, the height taps kh Slices of a
    row-padded g^T (g shifted down by i rows), so the contraction runs over (n, row, col) of x's rows.

    xs[(j, c), (n, r, q)] = x[n, c, r, q + j] (r < H, q < W'); gs[(i, o), (n, r, q)] = g[n, o, r - i, q]
    (zero outside); gs @ xs^T = [(i, o), (j, c)] = sum_n,p,q g[n, o, p, q] x[n, c, p + i, q + j].
    """
    from onnx import helper
    n, c, o, h, k, p = shapes
    h += 2 * p
    oh = h - k + 1
    nodes = [helper.make_node("Transpose", ["x"], ["xu"], perm=[1, 0, 2, 3]),
             helper.make_node("Pad", ["xu", "xpads"], ["xt"]),
             helper.make_node("Transpose", ["g"], ["gt"], perm=[1, 0, 2, 3]),
             helper.make_node("Pad", ["gt", "gpads"], ["gp"])]
    inits = [ints("gpads", [0, 0, k - 1, 0, 0, 0, k - 1, 0]), ints("ax2", [2]), ints("ax3", [3]),
             ints("xpads", [0, 0, p, p, 0, 0, p, p]),
             ints("xmat", [k * c, -1]), ints("gmat", [k * o, -1]), ints("wshape", [k, o, k, c])]
    for j in range(k):
        inits += [ints(f"xb{j}", [j]), ints(f"xe{j}", [j + oh]), ints(f"gb{j}", [k - 1 - j]),
                  ints(f"ge{j}", [k - 1 - j + h])]
        nodes += [helper.make_node("Slice", ["xt", f"xb{j}", f"xe{j}", "ax3"], [f"xs{j}"]),
                  helper.make_node("Slice", ["gp", f"gb{j}", f"ge{j}", "ax2"], [f"gs{j}"])]
    nodes += [helper.make_node("Concat", [f"xs{j}" for j in range(k)], ["xc"], axis=0),
              helper.make_node("Concat", [f"gs{i}" for i in range(k)], ["gc"], axis=0),
              helper.make_node("Reshape", ["xc", "xmat"], ["xm"]),
              helper.make_node("Reshape", ["gc", "gmat"], ["gm"]),
              helper.make_node("Gemm", ["gm", "xm"], ["prod"], transB=1),
              helper.make_node("Reshape", ["prod", "wshape"], ["pw"]),
              helper.make_node("Transpose", ["pw"], ["dw"], perm=[1, 3, 0, 2])]
    return nodes, inits


def shifted_gather(shapes):
    """The shifted Gemm with each shifted stack made by ONE Gather (no Slice + Concat double copy).

    x as (C, Hp*Wp, N) gathered at r*Wp + q + j -> (C, kw, Hp, W', N); g as (O, H' + 2(kh-1), W', N)
    gathered at rows kh-1-i+r -> (O, kh, Hp, W', N); both contract over (r, q, n).
    """
    from onnx import helper
    n, c, o, h, k, p = shapes
    hp = h + 2 * p
    ow = hp - k + 1
    xidx = (np.arange(hp)[None, :, None] * hp + np.arange(ow)[None, None, :] + np.arange(k)[:, None, None])
    gidx = k - 1 - np.arange(k)[:, None] + np.arange(hp)[None, :]
    nodes = [helper.make_node("Transpose", ["x"], ["xu"], perm=[1, 2, 3, 0]),
             helper.make_node("Pad", ["xu", "xpads"], ["xp"]),
             helper.make_node("Reshape", ["xp", "xflat"], ["xf"]),
             helper.make_node("Gather", ["xf", "xidx"], ["xs"], axis=1),
             helper.make_node("Reshape", ["xs", "xmat"], ["xm"]),
             helper.make_node("Transpose", ["g"], ["gt"], perm=[1, 2, 3, 0]),
             helper.make_node("Pad", ["gt", "gpads"], ["gp"]),
             helper.make_node("Gather", ["gp", "gidx"], ["gs"], axis=1),
             helper.make_node("Reshape", ["gs", "gmat"], ["gm"]),
             helper.make_node("Gemm", ["gm", "xm"], ["prod"], transB=1),
             helper.make_node("Reshape", ["prod", "wshape"], ["pw"]),
             helper.make_node("Transpose", ["pw"], ["dw"], perm=[0, 2, 1, 3])]
    inits = [ints("xpads", [0, p, p, 0, 0, p, p, 0]), ints("xflat", [c, hp * hp, -1]), ints("xidx", xidx),
             ints("xmat", [c * k, -1]), ints("gpads", [0, k - 1, 0, 0, 0, k - 1, 0, 0]), ints("gidx", gidx),
             ints("gmat", [o * k, -1]), ints("wshape", [o, k, c, k])]
    return nodes, inits


def build(name: str, shapes):
    if name == "shifted_gather":
        return shifted_gather(shapes)
    if name == "shifted_gemm":
        return shifted_gemm(shapes)
    if name == "tb":
        return transposed_batch(shapes)
    if name.startswith("tb_split"):
        return transposed_batch(shapes, chunk=int(name[len("tb_split"):]))
    if name.startswith("tb_pre"):
        return transposed_batch(shapes, chunk=int(name[len("tb_pre"):]), pre=True)
    if name == "patches":
        return patches(shapes)
    if name.startswith("patches_chunk"):
        return patches(shapes, chunk=int(name[len("patches_chunk"):]))
    raise ValueError(name)


def feeds(shapes):
    n, c, o, h, k, p = shapes
    rng = np.random.default_rng(0)
    oh = h + 2 * p - k + 1
    return {"x": rng.standard_normal((n, c, h, h)).astype(np.float32),
            "g": rng.standard_normal((n, o, oh, oh)).astype(np.float32)}


def _step_rules(setting: str) -> None:
    if setting == "no_shifted":
        import passes.autodiff.rules.conv as conv_rules
        conv_rules._shifted_gemm_fits = lambda kernel, strides, dilations: False
    else:
        _cnn_rules(setting)


def worker(spec: dict) -> None:
    if "model" in spec:  # a whole training step, as cnn_step_variants.py measures it
        global _cnn_rules
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import cnn_step_variants
        _cnn_rules = cnn_step_variants._inherited_patch_rules
        cnn_step_variants._inherited_patch_rules = _step_rules
        cnn_step_variants.worker(spec)
        return
    shapes = tuple(spec["shapes"])
    sess = _session(*build(spec["variant"], shapes), shapes, spec["threads"])
    data = feeds(shapes)
    for _ in range(5):
        sess.run(None, data)
    walls = []
    cpu = time.process_time()
    for _ in range(spec["repeats"]):
        start = time.perf_counter()
        sess.run(None, data)
        walls.append((time.perf_counter() - start) * 1e3)
    cpu_ms = (time.process_time() - cpu) * 1e3 / spec["repeats"]
    report({"median_ms": statistics.median(walls), "cpu_ms": cpu_ms})


def check(variants, shapes) -> None:
    import torch
    n, c, o, h, k, p = shapes
    data = feeds(shapes)
    w = torch.zeros((o, c, k, k), dtype=torch.float64, requires_grad=True)
    torch.nn.functional.conv2d(torch.from_numpy(data["x"]).double(), w, padding=p).backward(
        torch.from_numpy(data["g"]).double())
    reference = w.grad.numpy()
    for name in variants:
        dw = _session(*build(name, shapes), shapes, 1).run(None, data)[0]
        error = np.abs(dw - reference).max() / np.abs(reference).max()
        if error > 1e-5:
            raise AssertionError(f"{name} differs from PyTorch's weight gradient: relative error {error:.2e}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", default="64,3,6,32,5,0;64,6,16,14,5,0")
    parser.add_argument("--variants", default="tb,tb_split8,tb_pre8,tb_split16,tb_pre16,patches,patches_chunk8")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--step", default=None, help="a model (lenet, cnn): time its whole training step")
    parser.add_argument("--settings", default="default,no_shifted")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    if args.step:
        settings = args.settings.split(",")
        specs = {s: {"model": args.step, "setting": s, "steps": args.steps, "threads": args.threads} for s in settings}
        runs = take_turns(__file__, specs, args.rounds)
        print(f"{args.step} step, {args.threads or 'default'} thread(s), {args.rounds} rounds [min-max]: median ms, "
              f"ratio to {settings[0]}; CPU ms per step, ratio")
        for s in settings:
            print(f"  {s:18s} {spread(r['median_ms'] for r in runs[s]):>22s}  "
                  f"{spread(round_ratios(runs, s, settings[0])):>18s}  {spread(r['cpu_ms'] for r in runs[s]):>22s}  "
                  f"{spread(round_ratios(runs, s, settings[0], 'cpu_ms')):>18s}")
        return
    variants = args.variants.split(",")
    for layer in args.layers.split(";"):
        shapes = [int(v) for v in layer.split(",")]
        check(variants, shapes)
        specs = {v: {"variant": v, "shapes": shapes, "repeats": args.repeats, "threads": args.threads}
                 for v in variants}
        runs = take_turns(__file__, specs, args.rounds)
        print(f"N,C,O,H,k,pad = {layer}, {args.threads or 'default'} thread(s), {args.rounds} rounds [min-max]: "
              f"wall ms, ratio to {variants[0]}; CPU ms per call, ratio (all variants match PyTorch)")
        for v in variants:
            print(f"  {v:18s} {spread(r['median_ms'] for r in runs[v]):>22s}  "
                  f"{spread(round_ratios(runs, v, variants[0])):>18s}  {spread(r['cpu_ms'] for r in runs[v]):>22s}  "
                  f"{spread(round_ratios(runs, v, variants[0], 'cpu_ms')):>18s}")


if __name__ == "__main__":
    spec = worker_spec(sys.argv[1:])
    worker(spec) if spec is not None else main()
