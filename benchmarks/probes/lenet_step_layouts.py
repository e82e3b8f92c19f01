"""Probe: LeNet's training step with other layouts of the shifted-Gemm weight gradient, each variant in its own process.

    python benchmarks/probes/lenet_step_layouts.py [--models lenet,cnn] [--rounds 4] [--steps 30] [--threads 1]
                                                   [--settings default,dw_batch_first]
    python benchmarks/probes/lenet_step_layouts.py --check        # the variants' dw against PyTorch's, exactly-ish

Settings (combine with ``+``; also every setting of ``cnn_step_variants.py``):
- ``dw_whole``: the shifted Gemm in one piece (``SHIFTED_CHUNK_ABOVE`` off), as before its row chunks.
- ``dw_kb<K>``, ``dw_above_kb<K>``: other chunk sizes / thresholds (``SHIFTED_CHUNK_BYTES`` / ``_ABOVE``, KB
  per sample): ``dw_kb6`` chunks of one row for LeNet's conv1, ``dw_above_kb32`` chunks conv2 too.
- ``dw_batch_first``: ``_weight_grad_by_shifted_gemm`` without the (N-last) Transposes of x and g: the kh
  row shifts of g by one ``Gather`` on its row axis of g padded to (N, O, H'+2(kh-1), Wp) (zero columns
  right of W'), the kw width shifts of x as ``Slice``s of each (n, c) plane flattened (a shift by j of the
  flat plane is x shifted by j within each row; the wrapped values pair with g's zero columns), one
  batched ``MatMul`` (N, O*kh, Hp*Wp) @ (N, Hp*Wp, C*kw) and a ``ReduceSum`` over the batch.
- ``dw_batch_first_gemm``: the same shifts, then both moved to (rows, N, Hp*Wp) by Transposes that copy
  runs of Hp*Wp floats, and ONE Gemm (no batched products).
The variants take turns, a fresh process each (``common.take_turns``); prints the median step ms
[min-max], its ratio to the first setting in the same round, and process CPU ms per step.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cnn_step_variants  # noqa: E402
import step_variants  # noqa: E402
from common import compare_settings, worker_spec  # noqa: E402

_inherited_patch_rules = cnn_step_variants.patch_rules


def _batch_first_shifts(ctx, x, g, out_c, channels, kernel, pads, padded):
    """gs (N, O*kh, Hp*Wp) and xs (N, C*kw, Hp*Wp) with sum_n gs_n xs_n^T = dw as [(o, i), (c, j)]."""
    kh, kw = kernel
    hp, wp = padded
    out_w = wp - kw + 1
    if any(pads):
        x = ctx.op("Pad", [x, ctx.e.ints([0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]])])
    # gs[n, o, i, r, q] = g[n, o, r - i, q]: zero outside [0, H') and for q >= W'
    gp = ctx.op("Pad", [g, ctx.e.ints([0, 0, kh - 1, 0, 0, 0, kh - 1, wp - out_w])])
    g_index = kh - 1 - np.arange(kh)[:, None] + np.arange(hp)[None, :]
    gs = ctx.op("Gather", [gp, ctx.e.const(g_index.astype(np.int64))], {"axis": 2})
    gs = ctx.op("Reshape", [gs, ctx.e.ints([0, out_c * kh, hp * wp])])
    # xs[n, c, j, r*Wp + q] = flat(xp)[n, c, r*Wp + q + j]: x[n, c, r, q + j] for q < W' (no wrap there)
    flat = ctx.op("Reshape", [x, ctx.e.ints([0, channels, 1, hp * wp])])
    flat = ctx.op("Pad", [flat, ctx.e.ints([0, 0, 0, 0, 0, 0, 0, kw - 1])])
    shifts = [ctx.op("Slice", [flat, ctx.e.ints([j]), ctx.e.ints([j + hp * wp]), ctx.e.ints([3])]) for j in range(kw)]
    xs = ctx.op("Reshape", [ctx.op("Concat", shifts, {"axis": 2}), ctx.e.ints([0, channels * kw, hp * wp])])
    return gs, xs


def dw_batch_first(ctx, x, g, out_c, channels, kernel, pads, padded):
    kh, kw = kernel
    gs, xs = _batch_first_shifts(ctx, x, g, out_c, channels, kernel, pads, padded)
    per_sample = ctx.op("MatMul", [gs, ctx.op("Transpose", [xs], {"perm": [0, 2, 1]})])
    summed = ctx.op("ReduceSum", [per_sample, ctx.e.ints([0])], {"keepdims": 0})
    product = ctx.op("Reshape", [summed, ctx.e.ints([out_c, kh, channels, kw])])
    return ctx.op("Transpose", [product], {"perm": [0, 2, 1, 3]})


def dw_batch_first_gemm(ctx, x, g, out_c, channels, kernel, pads, padded):
    kh, kw = kernel
    gs, xs = _batch_first_shifts(ctx, x, g, out_c, channels, kernel, pads, padded)
    gs = ctx.op("Reshape", [ctx.op("Transpose", [gs], {"perm": [1, 0, 2]}), ctx.e.ints([out_c * kh, -1])])
    xs = ctx.op("Reshape", [ctx.op("Transpose", [xs], {"perm": [1, 0, 2]}), ctx.e.ints([channels * kw, -1])])
    product = ctx.op("Reshape", [ctx.op("Gemm", [gs, xs], {"transB": 1}), ctx.e.ints([out_c, kh, channels, kw])])
    return ctx.op("Transpose", [product], {"perm": [0, 2, 1, 3]})


VARIANTS = {"dw_batch_first": dw_batch_first, "dw_batch_first_gemm": dw_batch_first_gemm}


def patch_rules(setting: str) -> None:
    if setting == "dw_whole":  # the shifted Gemm in one piece, as before its row chunks
        import passes.autodiff.rules.conv as conv_rules
        conv_rules.SHIFTED_CHUNK_ABOVE = float("inf")
    elif setting.startswith(("dw_kb", "dw_above_kb")):  # other chunk sizes: dw_kb6, dw_above_kb32
        import passes.autodiff.rules.conv as conv_rules
        name = "SHIFTED_CHUNK_BYTES" if setting.startswith("dw_kb") else "SHIFTED_CHUNK_ABOVE"
        setattr(conv_rules, name, int(setting.rsplit("kb", 1)[1]) * 1024)
    elif setting in VARIANTS:
        import passes.autodiff.rules.conv as conv_rules
        conv_rules._weight_grad_by_shifted_gemm = VARIANTS[setting]
    else:
        _inherited_patch_rules(setting)


def worker(spec: dict) -> None:
    cnn_step_variants.patch_rules = patch_rules
    step_variants.patch_rules = patch_rules
    cnn_step_variants.worker(spec)


def check() -> None:
    """Each variant's conv weight gradients (padded and not, LeNet's shapes) against PyTorch's."""
    import torch

    import graphc as gc
    import graphc.nn.functional as F
    import passes.autodiff.rules.conv as conv_rules
    plain = conv_rules._weight_grad_by_shifted_gemm
    rng = np.random.default_rng(0)
    for name, rule in [("default", plain), *VARIANTS.items()]:
        conv_rules._weight_grad_by_shifted_gemm = rule
        for (n, c, o, h, w, k, pad) in [(4, 3, 6, 32, 32, 5, 0), (3, 6, 16, 14, 14, 5, 0), (2, 2, 5, 9, 11, 5, 2),
                                        (2, 3, 4, 7, 6, (3, 5), (1, 2))]:
            kh, kw = (k, k) if isinstance(k, int) else k
            ph, pw = (pad, pad) if isinstance(pad, int) else pad
            xv = rng.standard_normal((n, c, h, w)).astype(np.float32)
            wv = rng.standard_normal((o, c, kh, kw)).astype(np.float32)
            gv = rng.standard_normal((n, o, h + 2 * ph - kh + 1, w + 2 * pw - kw + 1)).astype(np.float32)
            x = gc.input("x", shape=xv.shape)
            weight = gc.input("w", shape=wv.shape)
            y = F.conv2d(x, weight, padding=(ph, pw))
            loss = (y * gc.constant(gv)).sum()
            (dw,) = gc.grad(loss, [weight])
            got = gc.compile(inputs=[x, weight], outputs={"dw": dw}).run({"x": xv, "w": wv})["dw"]
            xt, wt = torch.tensor(xv, dtype=torch.float64), torch.tensor(wv, dtype=torch.float64, requires_grad=True)
            torch.nn.functional.conv2d(xt, wt, padding=(ph, pw)).backward(torch.tensor(gv, dtype=torch.float64))
            err = np.abs(got - wt.grad.numpy()).max() / np.abs(wt.grad.numpy()).max()
            print(f"{name:22s} {str((n, c, o, h, w, k, pad)):34s} relative max error {err:.2e}")
            assert err < 1e-5, name
    conv_rules._weight_grad_by_shifted_gemm = plain


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="lenet")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--settings", default="default,dw_batch_first")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    if args.check:
        return check()
    compare_settings(__file__, args.models.split(","), args.settings.split(","), args.steps, args.rounds,
                     args.threads, width=24)


if __name__ == "__main__":
    spec = worker_spec(sys.argv[1:])
    worker(spec) if spec is not None else main()
