"""VJP rules of the spatial ops: Conv, ConvTranspose, MaxPool, AveragePool, BatchNormalization (inference form).

Lowerings were chosen by measurement on ONNX Runtime CPU, batch 64 (docs/performance.md):
- Conv weight gradient (benchmarks/probes/conv_dw_lowerings.py): patches (a one-hot depthwise Conv,
  i.e. im2col) + batched MatMul(patches, g^T) + ReduceSum over the batch; for the padded CNN's
  3->32 and 32->64 3x3 layers 4.6 and 12 ms, against 10 and 24 ms for MatMul(g, patches^T) (the large
  patches transposed: the layout before issue 11) and 24 and 41 ms for a Conv over the batch-transposed
  input. For ungrouped kernels with more taps than output channels (LeNet's 5x5 layers) the
  batch-transposed Conv, level with or ahead of patches there (whole LeNet step: patches 1.2x its CPU time);
  when such a Conv is 2-D with unit strides and dilations, one Gemm over shifted copies of x and g instead
  (``_weight_grad_by_shifted_gemm``; probes/conv_dw_chunks.py: the whole LeNet step ~0.8x its time with the
  batch-transposed Conv; chunks of the batch for that Conv gained nothing, issue 11); its operands are
  built in row chunks that stay in cache where they are large (LeNet's conv1: the step 1.08x faster).
  Patches larger than PATCHES_CHUNK_ABOVE per sample (the padded CNN's conv2) are made and multiplied per
  chunk of 8 samples (``_patches_batch_chunks``: the dw 0.85x, the whole step ~0.96x at 1 thread, issue 11).
- Conv input gradient: ConvTranspose; a Conv with the flipped kernel is no faster (4.4 vs 4.4 ms on
  32->64 3x3, 1.4 vs 0.6 ms on LeNet's 6->16 5x5; probes/conv_dx_lowerings.py).
- MaxPool: see ``max_pool_vjp`` (probes/maxpool_grad_lowerings.py).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from passes.autodiff.helpers import static_dims, zeros_like
from passes.autodiff.registry import VJPContext, register_vjp
from passes.autodiff.rules.batch_norm_training import batch_norm_training_vjp


def _spatial(ctx: VJPContext, name: str, default):
    value = ctx.attr(name)
    return list(value) if value is not None else list(default)


def _static_spatial(ctx: VJPContext, value, op: str) -> list[int]:
    """The static spatial dims of an (N, C, ...) value; the batch and channel dims may be symbolic."""
    dims = static_dims(value)
    if dims is None or len(dims) < 3 or not all(isinstance(d, int) for d in dims[2:]):
        raise NotImplementedError(f"the gradient of {op} needs static spatial dims, got {value.shape}")
    return list(dims[2:])


def _static_hw(ctx: VJPContext, value, op: str) -> tuple[int, int]:
    dims = _static_spatial(ctx, value, op)
    if len(dims) != 2:
        raise NotImplementedError(f"the gradient of {op} is implemented for 2-D pooling, got {value.shape}")
    return dims[0], dims[1]


def _no_auto_pad(ctx: VJPContext, op: str) -> None:
    if ctx.attr("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        raise NotImplementedError(f"the gradient of {op} with auto_pad is not implemented; use explicit pads")


def _transpose_pads(size, out, kernel, stride, dilation, begin, end) -> tuple[int, int]:
    """Pads for a ConvTranspose that maps ``out`` positions back onto exactly ``size`` inputs.

    The forward may have ignored trailing inputs (stride remainder) or read
    past the end (ceil_mode); the end pad absorbs either difference.
    """
    full = stride * (out - 1) + dilation * (kernel - 1) + 1
    return begin, full - begin - size


def _conv_transpose(ctx: VJPContext, g, weight, x_sp, out_sp, kernel, strides, dilations, pads, group):
    """ConvTranspose of ``g`` landing on the input's spatial size, with extra end pads where needed."""
    nd = len(x_sp)
    t_pads, extra = [], []
    for axis in range(nd):
        begin, end = _transpose_pads(x_sp[axis], out_sp[axis], kernel[axis], strides[axis], dilations[axis],
                                     pads[axis], pads[axis + nd])
        t_pads.append(begin)
        extra.append(end)
    attrs = {"strides": strides, "dilations": dilations, "group": group, "kernel_shape": kernel}
    if min(extra) < 0:  # the forward ignored trailing inputs: pad the result with zeros there
        attrs["pads"] = t_pads + [max(e, 0) for e in extra]
        dx = ctx.op("ConvTranspose", [g, weight], attrs)
        grow = ctx.e.ints([0] * (nd + 2) + [0, 0] + [max(-e, 0) for e in extra])
        return ctx.op("Pad", [dx, grow])
    attrs["pads"] = t_pads + extra
    return ctx.op("ConvTranspose", [g, weight], attrs)


def weight_grad_lowering(out_channels: int, taps: int, group: int) -> str:
    """"transposed_batch" or "patches": the measured choice for a Conv weight gradient (see the module doc)."""
    return "transposed_batch" if group == 1 and taps > out_channels else "patches"


def _conv_weight_grad(ctx: VJPContext, x, g, w, strides, dilations, pads, group):
    """dw of y = Conv(x, w): the sum over the batch of g's correlation with x's patches.

    Patches + MatMul by default (over batch chunks where one sample's patches are large,
    ``_patches_batch_chunks``); for ungrouped kernels with more taps than output channels one Gemm
    over shifted copies where the Conv is 2-D with unit strides and dilations
    (``_weight_grad_by_shifted_gemm``), else a transposed-batch Conv (``_weight_grad_by_transposed_batch``).
    """
    w_dims = static_dims(w)
    out_c, in_per_group, kernel = w_dims[0], w_dims[1], list(w_dims[2:])
    taps = int(np.prod(kernel))
    if weight_grad_lowering(out_c, taps, group) == "transposed_batch":
        padded = _padded_input_size(x, g, kernel, pads)
        if padded is not None and _shifted_gemm_fits(kernel, strides, dilations):
            return _weight_grad_by_shifted_gemm(ctx, x, g, out_c, in_per_group, kernel, pads, padded)
        return _weight_grad_by_transposed_batch(ctx, x, g, kernel, strides, dilations, pads)
    channels = in_per_group * group
    eye = np.zeros((channels * taps, 1, *kernel), dtype=w.dtype.numpy())
    for c in range(channels):
        for t in range(taps):
            eye[(c * taps + t, 0, *np.unravel_index(t, kernel))] = 1
    eye = ctx.e.const(eye)
    # explicit where known: a Reshape with -1 refuses the empty chunks of a small batch
    positions = _patch_positions(x, g, kernel, strides, dilations, pads)
    rows = in_per_group * taps

    def summed_patch_products(xi, gi):
        patches = ctx.op("Conv", [xi, eye], {"strides": strides, "dilations": dilations, "pads": pads,
                                             "group": channels, "kernel_shape": kernel})
        patches = ctx.op("Reshape", [patches, ctx.e.ints([0, group, rows, positions])])
        grads = ctx.op("Reshape", [gi, ctx.e.ints([0, group, out_c // group, positions])])
        # patches @ g^T, not g @ patches^T: only the small operand and the summed result are transposed
        # (probes/conv_dw_lowerings.py, B3 against B1: 4.6 vs 9.6 ms and 12 vs 24 ms on the padded CNN's convs).
        per_sample = ctx.op("MatMul", [patches, ctx.op("Transpose", [grads], {"perm": [0, 1, 3, 2]})])
        return ctx.op("ReduceSum", [per_sample, ctx.e.ints([0])], {"keepdims": 0})

    x_dims = static_dims(x)
    patch_bytes = np.dtype(w.dtype.numpy()).itemsize * channels * taps * positions
    chunks = _patches_batch_chunks(x_dims[0] if x_dims else None, patch_bytes) if positions > 0 else [(0, None)]
    if len(chunks) == 1:
        summed = summed_patch_products(x, g)
    else:
        def part(value, start, end):
            return ctx.op("Slice", [value, ctx.e.ints([start]), ctx.e.ints([end if end is not None else _TO_END]),
                                    ctx.e.ints([0])])
        summed = ctx.op("Sum", [summed_patch_products(part(x, start, end), part(g, start, end))
                                for start, end in chunks])
    summed = ctx.op("Transpose", [summed], {"perm": [0, 2, 1]})
    return ctx.op("Reshape", [summed, ctx.e.ints([out_c, in_per_group, *kernel])])


# Batch chunks of the patches rule (probes/conv_dw_chunks.py, probes/cnn_patch_chunks.py): where one sample's
# patches exceed PATCHES_CHUNK_ABOVE bytes, the batch is cut into chunks of PATCHES_CHUNK_SAMPLES samples, each
# chunk's patches multiplied while they are still in cache. Batch 64, 1 thread, the dw alone: the padded CNN's
# conv2 (295 KB per sample) 11.5 -> 9.8 ms in chunks of 8 (2, 4, 16: 10.9, 10.3, 10.8 ms); its conv1 (110 KB)
# loses in chunks (2.45 -> 2.9-3.1 ms: its per-sample MatMul has K = 1024, the patches are read once anyway),
# so it stays whole. With a symbolic batch (the usual case) PATCHES_CHUNK_COUNT chunks are cut at fixed
# offsets, the last reaching the batch's end: sized for a batch of 64; smaller batches leave trailing chunks
# empty (ONNX Runtime runs them as no-ops), larger ones put the rest into the last chunk.
PATCHES_CHUNK_ABOVE = 192 * 1024
PATCHES_CHUNK_SAMPLES = 8
PATCHES_CHUNK_COUNT = 8
_TO_END = int(np.iinfo(np.int64).max)


def _patch_positions(x, g, kernel, strides, dilations, pads) -> int:
    """Positions per sample of the patches Conv (g's spatial size), from g's or x's static dims; -1 if unknown."""
    nd = len(kernel)
    for value in (g, x):
        dims = static_dims(value)
        if dims is None or len(dims) != nd + 2 or not all(isinstance(d, int) for d in dims[2:]):
            continue
        if value is g:
            return int(np.prod(dims[2:]))
        return int(np.prod([(size + pads[i] + pads[i + nd] - dilations[i] * (kernel[i] - 1) - 1) // strides[i] + 1
                            for i, size in enumerate(dims[2:])]))
    return -1


def _patches_batch_chunks(batch, patch_bytes: int) -> list[tuple[int, int | None]]:
    """[start, end) sample ranges for the patches rule (end None: to the batch's end; one range: no chunking)."""
    if patch_bytes <= PATCHES_CHUNK_ABOVE:
        return [(0, None)]
    step = PATCHES_CHUNK_SAMPLES
    count = -(-batch // step) if isinstance(batch, int) else PATCHES_CHUNK_COUNT
    if count <= 1:
        return [(0, None)]
    return [(i * step, (i + 1) * step) for i in range(count - 1)] + [((count - 1) * step, None)]


@register_vjp("Conv")
def conv_vjp(ctx: VJPContext):
    """Conv(x, w, b; strides, pads, dilations, group) -> y, any number of spatial dims (Conv1d, Conv2d, ...).

    dx = ConvTranspose(g, w) with the same strides/pads/dilations/group;
    dw = sum_n g_n (O, L) @ patches_n (C*prod(k), L)^T per group, patches from a
    one-hot depthwise Conv (im2col in standard ops; large ones per chunk of samples, summed), or, for
    ungrouped kernels with more taps than output channels, one Gemm over shifted copies (2-D, stride 1)
    or a transposed-batch Conv; db = sum of g over N and the spatial dims.
    """
    x, w = ctx.inputs[0], ctx.inputs[1]
    g = ctx.g
    w_dims = static_dims(w)
    kernel = list(w_dims[2:])
    nd = len(kernel)
    strides = _spatial(ctx, "strides", [1] * nd)
    dilations = _spatial(ctx, "dilations", [1] * nd)
    pads = _spatial(ctx, "pads", [0] * (2 * nd))
    group = ctx.attr("group", 1)
    _no_auto_pad(ctx, "Conv")
    x_sp = _static_spatial(ctx, x, "Conv")
    out_sp = _static_spatial(ctx, ctx.outputs[0], "Conv")
    dx = dw = db = None
    if ctx.needs(0):
        dx = _conv_transpose(ctx, g, w, x_sp, out_sp, kernel, strides, dilations, pads, group)
    if ctx.needs(1):
        dw = _conv_weight_grad(ctx, x, g, w, strides, dilations, pads, group)
    if len(ctx.inputs) > 2 and ctx.needs(2):
        db = ctx.op("ReduceSum", [g, ctx.e.ints([0, *range(2, nd + 2)])], {"keepdims": 0})
    return [dx, dw, db]


def _weight_grad_by_transposed_batch(ctx: VJPContext, x, g, kernel, strides, dilations, pads):
    """dw[o, c] = sum_n g[n, o] (*) x[n, c]: a Conv of x^T (C, N, ...) with g^T (O, N, ...) as kernel,
    the forward's dilations as strides and its strides as dilations, cropped to the kernel size.

    Chosen when the kernel has more taps than output channels (LeNet's 5x5 convs with 6 and 16
    channels: 2.6 vs 3.1 ms and 0.86 vs 1.0 ms against patches + MatMul, probes/conv_dw_lowerings.py),
    where the one-hot patches Conv does more work than the product itself.
    """
    nd = len(kernel)
    swap = [1, 0, *range(2, nd + 2)]
    xt = ctx.op("Transpose", [x], {"perm": swap})
    gt = ctx.op("Transpose", [g], {"perm": swap})
    full = ctx.op("Conv", [xt, gt], {"strides": dilations, "dilations": strides, "pads": pads})
    cropped = ctx.op("Slice", [full, ctx.e.ints([0] * nd), ctx.e.ints(kernel), ctx.e.ints(range(2, nd + 2))])
    return ctx.op("Transpose", [cropped], {"perm": swap})


def _shifted_gemm_fits(kernel, strides, dilations) -> bool:
    """Whether ``_weight_grad_by_shifted_gemm`` applies: 2-D, unit strides and dilations."""
    return len(kernel) == 2 and list(strides) == [1, 1] and list(dilations) == [1, 1]


def _padded_input_size(x, g, kernel, pads) -> list[int] | None:
    """(Hp, Wp) of a stride-1 Conv's padded input: from x's static dims, else from g's (Hp = H' + kh - 1)."""
    for value, grow in ((x, [0, 0]), (g, [k - 1 for k in kernel])):
        dims = static_dims(value)
        if dims is not None and len(dims) == 4 and all(isinstance(d, int) for d in dims[2:]):
            if value is x:
                return [dims[2] + pads[0] + pads[2], dims[3] + pads[1] + pads[3]]
            return [dims[2] + grow[0], dims[3] + grow[1]]
    return None


# Row chunks of the shifted Gemm (probes/conv_dw_row_chunks.py, probes/lenet_step_layouts.py): operands
# (gs + xs) above SHIFTED_CHUNK_ABOVE bytes per sample are cut into chunks of at most SHIFTED_CHUNK_BYTES per
# sample, each Gathered and multiplied while it is still in the core's cache (~768 KB at batch 64). LeNet's
# conv1 (161 KB per sample, chunks of 2 rows): 1.29 -> 0.98 ms for its Gathers + Gemm at 1 thread; chunks of
# 1 or 4 rows level with 2; conv2 (62 KB) level in chunks or whole, so it stays whole (fewer nodes). Sized
# for a batch of ~64: the batch dim is often symbolic when the rule runs.
SHIFTED_CHUNK_ABOVE = 128 * 1024
SHIFTED_CHUNK_BYTES = 12 * 1024


def _shifted_row_chunks(rows_per_position: int, hp: int, out_w: int) -> list[tuple[int, int]]:
    """[r0, r1) ranges of the padded rows Hp for ``_weight_grad_by_shifted_gemm`` (one range: no chunking)."""
    row_bytes = 4 * rows_per_position * out_w  # float32 gs + xs values of one padded row, per sample
    if row_bytes * hp <= SHIFTED_CHUNK_ABOVE:
        return [(0, hp)]
    step = max(1, SHIFTED_CHUNK_BYTES // row_bytes)
    return [(r0, min(r0 + step, hp)) for r0 in range(0, hp, step)]


def _weight_grad_by_shifted_gemm(ctx: VJPContext, x, g, out_c, channels, kernel, pads, padded):
    """dw of a 2-D stride-1 ungrouped Conv as ONE Gemm over shifted copies of x and g, no im2col.

    With xp = x padded, laid out (C, Hp, Wp, N), and gp = g laid out (O, H', W', N) with kh-1 zero
    rows on either side (H' = Hp - kh + 1, W' = Wp - kw + 1), one Gather each makes
    xs[c, j, (r, q, n)] = xp[c, r, q + j, n]  (r < Hp, q < W'; indices r*Wp + q + j into (C, Hp*Wp, N)),
    gs[o, i, (r, q, n)] = g[n, o, r - i, q]   (zero outside [0, H'); indices kh-1-i+r into gp's rows),
    and gs @ xs^T = [(o, i), (c, j)] = sum_{n,p,q} g[n, o, p, q] xp[n, c, p + i, q + j] = dw[o, c, i, j].
    The contraction has N*Hp*W' terms, (1 + (kh-1)/H') times the product's own. Chosen where the
    transposed-batch Conv was (LeNet's 5x5 convs): that Conv's im2col writes k*k*C*N*H'*W' values in
    runs of kw floats (its output is the kernel-sized dw) and costs more than its GEMM; these Gathers
    copy runs of N and W'*N floats (probes/conv_dw_chunks.py, 1 thread: 1.9 vs 3.7 ms for LeNet's conv1,
    0.68 vs 1.12 ms for conv2; the padded CNN's 3x3 layers lose to patches). Large operands are built
    and multiplied in chunks of padded rows r (``_shifted_row_chunks``: one pair of Gathers and one Gemm
    per chunk, summed), each chunk still in cache when its Gemm reads it: LeNet's whole step 1.08-1.09x
    faster at 1 thread with conv1's dw in 16 chunks (probes/lenet_step_layouts.py, issue 11).
    """
    kh, kw = kernel
    hp, wp = padded
    out_w = wp - kw + 1
    xt = ctx.op("Transpose", [x], {"perm": [1, 2, 3, 0]})
    if any(pads):
        xt = ctx.op("Pad", [xt, ctx.e.ints([0, pads[0], pads[1], 0, 0, pads[2], pads[3], 0])])
    x_index = (np.arange(hp)[None, :, None] * wp + np.arange(out_w)[None, None, :] + np.arange(kw)[:, None, None])
    xr = ctx.op("Reshape", [xt, ctx.e.ints([channels, hp * wp, -1])])
    gt = ctx.op("Transpose", [g], {"perm": [1, 2, 3, 0]})
    gt = ctx.op("Pad", [gt, ctx.e.ints([0, kh - 1, 0, 0, 0, kh - 1, 0, 0])])
    g_index = kh - 1 - np.arange(kh)[:, None] + np.arange(hp)[None, :]
    products = []
    for r0, r1 in _shifted_row_chunks(out_c * kh + channels * kw, hp, out_w):
        xs = ctx.op("Gather", [xr, ctx.e.const(x_index[:, r0:r1].astype(np.int64))], {"axis": 1})
        gs = ctx.op("Gather", [gt, ctx.e.const(g_index[:, r0:r1].astype(np.int64))], {"axis": 1})
        products.append(ctx.op("Gemm", [ctx.op("Reshape", [gs, ctx.e.ints([out_c * kh, -1])]),
                                        ctx.op("Reshape", [xs, ctx.e.ints([channels * kw, -1])])], {"transB": 1}))
    product = products[0] if len(products) == 1 else ctx.op("Sum", products)
    product = ctx.op("Reshape", [product, ctx.e.ints([out_c, kh, channels, kw])])
    return ctx.op("Transpose", [product], {"perm": [0, 2, 1, 3]})


@register_vjp("ConvTranspose")
def conv_transpose_vjp(ctx: VJPContext):
    """ConvTranspose(x, w, b; strides, pads, dilations, group, output_padding) -> y, w (C, O/group, k...).

    y is the adjoint of z = Conv(y'; w) (same strides/dilations/group), so
    dx = Conv(g, w) with pads (begin, end - output_padding) (a negative end pad crops g: those
    trailing outputs no input reached); dw = the Conv weight gradient with g as the input and x as
    the output cotangent (same lowering as Conv's dw); db = sum of g over N and the spatial dims.
    """
    x, w = ctx.inputs[0], ctx.inputs[1]
    w_dims = static_dims(w)
    kernel = list(w_dims[2:])
    nd = len(kernel)
    if ctx.attr("output_shape") is not None:
        raise NotImplementedError("the gradient of ConvTranspose with output_shape is not implemented; use pads")
    _no_auto_pad(ctx, "ConvTranspose")
    strides = _spatial(ctx, "strides", [1] * nd)
    dilations = _spatial(ctx, "dilations", [1] * nd)
    pads = _spatial(ctx, "pads", [0] * (2 * nd))
    group = ctx.attr("group", 1)
    x_sp = _static_spatial(ctx, x, "ConvTranspose")
    y_sp = _static_spatial(ctx, ctx.outputs[0], "ConvTranspose")
    g = ctx.g
    # The end pad that makes Conv(g) land on exactly x's size (output_padding is inside y's size).
    ends = [strides[i] * (x_sp[i] - 1) + dilations[i] * (kernel[i] - 1) + 1 - pads[i] - y_sp[i] for i in range(nd)]
    if min(ends) < 0:
        keep = [y_sp[i] + min(ends[i], 0) for i in range(nd)]
        g = ctx.op("Slice", [g, ctx.e.ints([0] * nd), ctx.e.ints(keep), ctx.e.ints(range(2, nd + 2))])
    conv_pads = pads[:nd] + [max(e, 0) for e in ends]
    dx = dw = db = None
    if ctx.needs(0):
        dx = ctx.op("Conv", [g, w], {"strides": strides, "dilations": dilations, "pads": conv_pads, "group": group,
                                     "kernel_shape": kernel})
    if ctx.needs(1):
        dw = _conv_weight_grad(ctx, g, x, w, strides, dilations, conv_pads, group)
    if len(ctx.inputs) > 2 and ctx.needs(2):
        db = ctx.op("ReduceSum", [ctx.g, ctx.e.ints([0, *range(2, nd + 2)])], {"keepdims": 0})
    return [dx, dw, db]


def _windows_disjoint(ctx: VJPContext, nd: int) -> bool:
    """Whether no input element lies in two MaxPool windows (stride >= dilated kernel extent, per axis)."""
    kernel = _spatial(ctx, "kernel_shape", [])
    strides = _spatial(ctx, "strides", [1] * nd)
    dilations = _spatial(ctx, "dilations", [1] * nd)
    return all(s >= d * (k - 1) + 1 for k, s, d in zip(kernel, strides, dilations))


def _unpool_fits(ctx: VJPContext, x, nd: int) -> bool:
    """Whether MaxUnpool's default output size, (out - 1) * stride + kernel, is x's static spatial size."""
    sizes, outs = static_dims(x), static_dims(ctx.outputs[0])
    if sizes is None or outs is None or not all(isinstance(d, int) for d in sizes[2:] + outs[2:]):
        return False
    kernel = _spatial(ctx, "kernel_shape", [])
    strides = _spatial(ctx, "strides", [1] * nd)
    return all((o - 1) * s + k == size for o, s, k, size in zip(outs[2:], strides, kernel, sizes[2:]))


# Per-sample input elements up to which the mask lowering beats MaxUnpool (maxpool_grad_lowerings.py, batch 64:
# 6x28x28 and 16x10x10 maps 0.59 vs 0.7-1.3 ms and 0.24 vs 0.47 ms; 32x32x32 and 64x16x16 maps lose, 21-37 vs
# 12-23 ms and 16-20 vs 5.4-12 ms: with Indices the forward MaxPool leaves MLAS's fast kernel, which small
# maps pay for, while the mask's eight passes over x cost more once x outgrows the caches). Measured with the
# Where-based mask; training steps now pool (N*C, 1, H, W) views (passes/pool_channel_view.py), one channel per
# sample, so their tiling pools all take the mask (padded CNN step: 1.11x CPU time without the view).
MASK_MAX_ELEMENTS_PER_SAMPLE = 8192


def _mask_pool_kernel(ctx: VJPContext, x, nd: int) -> list[int] | None:
    """The kernel when the MaxPool's windows tile a small float32 input exactly, else None."""
    kernel = _spatial(ctx, "kernel_shape", [])
    dims = static_dims(x)
    if x.dtype != ir.DataType.FLOAT or dims is None or not all(isinstance(d, int) for d in dims[1:]):
        return None
    if int(np.prod(dims[1:])) > MASK_MAX_ELEMENTS_PER_SAMPLE or _spatial(ctx, "strides", [1] * nd) != kernel:
        return None
    if int(np.prod(kernel)) > 64:  # the window weights 2^(taps - 1 - position) stay far inside float32's range
        return None
    if any(_spatial(ctx, "pads", [0] * (2 * nd))) or any(d != 1 for d in _spatial(ctx, "dilations", [1] * nd)):
        return None
    if ctx.attr("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", "VALID", b"VALID"):
        return None
    return kernel if all(size % k == 0 for size, k in zip(dims[2:], kernel)) else None


def _max_pool_mask_vjp(ctx: VJPContext, x, kernel: list[int]):
    """dx = upsampled g where x is its window's first maximum, for windows that tile x; no Indices needed.

    On a (N*C, 1, *spatial) view of x, y and g: with one channel ONNX Runtime's NCHWc layout transformer
    leaves the mask's MaxPool and Resizes alone (its Reorder copies cost more than the ops themselves).
    weight = 2^(taps - 1 - row-major position in the window) where x == upsampled y, else 0;
    first = upsampled MaxPool(weight): the weight of the window's first maximum (PyTorch's tie rule),
    exact since powers of two are; dx = upsampled g * (weight == first and x == upsampled y), a window
    without a maximum equal to y (NaN) getting no gradient. Arithmetic, not ``Where``: ONNX Runtime's
    CPU ``Where`` costs several times a ``Mul`` over the same elements (probes/maxpool_quarters.py).
    The price: an inf or NaN cotangent spreads NaN over its window's other positions (0 * inf), where
    PyTorch gives 0; a training step with such a cotangent is refused by the finiteness check anyway.
    """
    dims = static_dims(x)
    x_sp = dims[2:]
    out_sp = [size // k for size, k in zip(x_sp, kernel)]  # the windows tile x
    taps = int(np.prod(kernel))
    within = np.ravel_multi_index(np.meshgrid(*[np.arange(size) % k for size, k in zip(x_sp, kernel)],
                                              indexing="ij"), kernel)
    weights = ctx.e.const((2.0 ** (taps - 1 - within)).astype(np.float32)[None, None])
    scales = ctx.e.const(np.asarray([1, 1, *kernel], dtype=np.float32))
    nearest = {"mode": "nearest", "nearest_mode": "floor", "coordinate_transformation_mode": "asymmetric"}

    def upsampled_view(value):
        return ctx.op("Resize", [ctx.op("Reshape", [value, ctx.e.ints([-1, 1, *out_sp])]), None, scales], nearest)
    is_max = ctx.op("Equal", [ctx.op("Reshape", [x, ctx.e.ints([-1, 1, *x_sp])]), upsampled_view(ctx.outputs[0])])
    weight = ctx.op("Mul", [ctx.op("Cast", [is_max], {"to": ir.DataType.FLOAT}), weights])
    first = ctx.op("Resize", [ctx.op("MaxPool", [weight], {"kernel_shape": kernel, "strides": kernel}), None, scales],
                   nearest)
    chosen = ctx.op("And", [ctx.op("Equal", [weight, first]), is_max])
    dx = ctx.op("Mul", [ctx.op("Cast", [chosen], {"to": ir.DataType.FLOAT}), upsampled_view(ctx.g)])
    return ctx.op("Reshape", [dx, ctx.e.ints([-1, *dims[1:]])])


@register_vjp("MaxPool")
def max_pool_vjp(ctx: VJPContext):
    """MaxPool(x) -> (y, indices);  dx = g routed to each window's argmax (the first maximum on ties).

    Three lowerings, by measurement (benchmarks/probes/maxpool_grad_lowerings.py):
    - windows that tile a small float32 input (stride = kernel, <= MASK_MAX_ELEMENTS_PER_SAMPLE
      elements per sample: LeNet's pools): a mask of the first maximum, ``_max_pool_mask_vjp``; the
      forward then needs no Indices output;
    - other disjoint windows (stride >= kernel, float32, no pads, windows reaching x's end exactly):
      dx = MaxUnpool(g, indices) onto x's shape, one op;
    - otherwise dx = zeros(x) scatter-added with g at the indices (two overlapping windows that pick the
      same element add their cotangents, as in PyTorch).
    ONNX Runtime, like PyTorch, picks the first maximum of a window on ties.
    """
    x = ctx.inputs[0]
    if ctx.attr("storage_order", 0):
        raise NotImplementedError("the gradient of MaxPool with storage_order=1 (column-major indices)")
    nd = len(_spatial(ctx, "kernel_shape", []))
    if nd > 2 and any(d != 1 for d in _spatial(ctx, "dilations", [1] * nd)):
        # ONNX's node tests maxpool_3d_dilations give a gradient off by ~0.6 through the Indices: refuse
        # rather than answer wrongly (2-D dilations agree with finite differences).
        raise NotImplementedError("the gradient of MaxPool with dilations in 3 or more spatial dims")
    kernel = _mask_pool_kernel(ctx, x, nd)
    if kernel is not None:
        return [_max_pool_mask_vjp(ctx, x, kernel)]
    if len(ctx.outputs) > 1:
        indices = ctx.outputs[1]
    else:  # an imported model whose MaxPool dropped Indices: pool again, with indices
        attrs = {k: v.value for k, v in ctx.node.attributes.items()}
        indices = ctx.op("MaxPool", [x], attrs, num_outputs=2)[1]
    # MaxUnpool only where its default output size is x's (no pads, no partial or ignored trailing windows):
    # onnx.reference's MaxUnpool (an oracle of the tests) writes out of bounds otherwise, though ONNX
    # Runtime honours output_shape. ONNX Runtime's CPU MaxUnpool is float32 only: other dtypes scatter.
    plain = not any(_spatial(ctx, "pads", [0] * (2 * nd))) and not ctx.attr("ceil_mode", 0) and \
        ctx.attr("auto_pad", "NOTSET") in ("NOTSET", b"NOTSET", "VALID", b"VALID") and _unpool_fits(ctx, x, nd)
    if plain and _windows_disjoint(ctx, nd) and x.dtype == ir.DataType.FLOAT:
        attrs = {"kernel_shape": _spatial(ctx, "kernel_shape", []), "strides": _spatial(ctx, "strides", [1] * nd)}
        return [ctx.op("MaxUnpool", [ctx.g, indices, ctx.op("Shape", [x])], attrs)]
    flat_g = ctx.op("Reshape", [ctx.g, ctx.e.ints([-1])])
    flat_i = ctx.op("Reshape", [indices, ctx.e.ints([-1])])
    zero = ctx.op("Reshape", [zeros_like(ctx, x), ctx.e.ints([-1])])  # not x * 0: inf * 0 is NaN
    dx = ctx.op("ScatterElements", [zero, flat_i, flat_g], {"axis": 0, "reduction": "add"})
    return [ctx.op("Reshape", [dx, ctx.op("Shape", [x])])]


def _avg_divisors(size, out, kernel, stride, pad, count_include_pad) -> np.ndarray:
    """PyTorch's per-window divisor along one axis (windows clipped to the padded input, then to the input)."""
    divisors = []
    for o in range(out):
        start = o * stride - pad
        end = min(start + kernel, size + pad)
        span = end - start
        if not count_include_pad:
            span = min(end, size) - max(start, 0)
        divisors.append(span)
    return np.asarray(divisors, dtype=np.float64)


@register_vjp("AveragePool")
def average_pool_vjp(ctx: VJPContext):
    """AveragePool(x) -> y;  dx = ConvTranspose(g / divisor, ones depthwise kernel).

    The divisor map follows PyTorch's rules for padding, count_include_pad and
    ceil_mode; it is computed at build time from the static spatial dims.
    """
    x = ctx.inputs[0]
    channels = static_dims(x)[1]
    if not isinstance(channels, int):
        raise NotImplementedError("the gradient of AveragePool needs a static channel count")
    kernel = _spatial(ctx, "kernel_shape", [])
    strides = _spatial(ctx, "strides", [1, 1])
    pads = _spatial(ctx, "pads", [0, 0, 0, 0])
    include = ctx.attr("count_include_pad", 0)
    if any(d != 1 for d in _spatial(ctx, "dilations", [1, 1])) or \
            ctx.attr("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        raise NotImplementedError("the gradient of AveragePool with dilations or auto_pad is not implemented")
    x_hw = _static_hw(ctx, x, "AveragePool")
    out_hw = _static_hw(ctx, ctx.outputs[0], "AveragePool")
    rows = _avg_divisors(x_hw[0], out_hw[0], kernel[0], strides[0], pads[0], include)
    cols = _avg_divisors(x_hw[1], out_hw[1], kernel[1], strides[1], pads[1], include)
    inverse = (1.0 / np.outer(rows, cols)).astype(x.dtype.numpy())[None, None]
    scaled = ctx.op("Mul", [ctx.g, ctx.e.const(inverse)])
    ones = ctx.e.const(np.ones((channels, 1, kernel[0], kernel[1]), dtype=x.dtype.numpy()))
    return [_conv_transpose(ctx, scaled, ones, x_hw, out_hw, kernel, strides, [1, 1], pads, channels)]


@register_vjp("BatchNormalization")
def batch_norm_inference_vjp(ctx: VJPContext):
    """BatchNormalization(x, scale, b, mean, var; epsilon) in inference form -> y = (x - mean) * k + b.

    k = scale / sqrt(var + eps);  dx = g * k, dscale = sum(g * (x - mean) / sqrt(var + eps)), db = sum(g);
    the running statistics are constants here. Training mode (batch statistics) has its closed-form
    rule in ``batch_norm_training.py``.
    """
    if ctx.attr("training_mode", 0):
        return batch_norm_training_vjp(ctx)
    x, scale, _, mean, var = ctx.inputs[:5]
    rank = len(x.shape)
    shape = ctx.e.ints([-1] + [1] * (rank - 2))
    axes = ctx.e.ints([0] + list(range(2, rank)))
    inv_std = ctx.op("Reciprocal", [ctx.op("Sqrt", [ctx.op("Add", [var, ctx.const(ctx.attr("epsilon", 1e-5), x)])])])
    inv_std = ctx.op("Reshape", [inv_std, shape])
    dx = ctx.op("Mul", [ctx.g, ctx.op("Mul", [ctx.op("Reshape", [scale, shape]), inv_std])]) if ctx.needs(0) else None
    dscale = db = None
    if ctx.needs(1):
        normalized = ctx.op("Mul", [ctx.op("Sub", [x, ctx.op("Reshape", [mean, shape])]), inv_std])
        dscale = ctx.op("ReduceSum", [ctx.op("Mul", [ctx.g, normalized]), axes], {"keepdims": 0})
    if ctx.needs(2):
        db = ctx.op("ReduceSum", [ctx.g, axes], {"keepdims": 0})
    return [dx, dscale, db, None, None]
