"""VJP rules of Conv, ConvTranspose and BatchNormalization (inference form); pooling is in ``pool.py``.

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
  Small shifted-Gemm layers (LeNet's conv2) take x's patches in the batch-last layout by one Gather and one
  Gemm instead (``_weight_grad_by_batch_last_patches``, recorded for ``passes/conv_from_patches.py``), and
  samples with a 4 KB-multiple stride go batch-last in two Transposes (``_batch_last``): together the LeNet
  step ~0.95x its CPU time at 1 thread (probes/step_ab_interleaved.py, issue 11).
- Conv input gradient: ConvTranspose; a Conv with the flipped kernel is no faster (4.4 vs 4.4 ms on
  32->64 3x3, 1.4 vs 0.6 ms on LeNet's 6->16 5x5; probes/conv_dx_lowerings.py).
"""

from __future__ import annotations

import numpy as np

from passes.autodiff.helpers import static_dims
from passes.autodiff.registry import VJPContext, register_vjp
from passes.autodiff.rules.batch_norm_training import batch_norm_training_vjp
from passes.autodiff.rules.spatial import conv_transpose, no_auto_pad, spatial_attr, static_spatial


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
            if _batch_last_patches_fit(out_c, in_per_group, kernel, padded):
                return _weight_grad_by_batch_last_patches(ctx, x, g, out_c, in_per_group, kernel, pads, padded)
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
    strides = spatial_attr(ctx, "strides", [1] * nd)
    dilations = spatial_attr(ctx, "dilations", [1] * nd)
    pads = spatial_attr(ctx, "pads", [0] * (2 * nd))
    group = ctx.attr("group", 1)
    no_auto_pad(ctx, "Conv")
    x_sp = static_spatial(ctx, x, "Conv")
    out_sp = static_spatial(ctx, ctx.outputs[0], "Conv")
    dx = dw = db = None
    if ctx.needs(0):
        dx = conv_transpose(ctx, g, w, x_sp, out_sp, kernel, strides, dilations, pads, group)
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


def _batch_last(ctx: VJPContext, value):
    """(N, C, H, W) -> (C, H, W, N), the layout whose copies run N floats long.

    ONNX Runtime's Transpose reads the batch axis with a stride of one sample; where that stride is a
    multiple of 4 KB every read of a column lands in the same cache set and the copy runs ~4x slower
    (probes/conv_dw_patch_gather.py: LeNet's input, 3 * 32 * 32 floats, 0.15 ms against 0.035 for a
    sample of 3168 floats). There the transpose goes in two steps that each copy runs of W or N floats.
    """
    dims = static_dims(value)
    sample = int(np.prod(dims[1:])) if dims is not None and all(isinstance(d, int) for d in dims[1:]) else 0
    if not sample or (sample * int(value.dtype.itemsize)) % 4096:
        return ctx.op("Transpose", [value], {"perm": [1, 2, 3, 0]})
    _, channels, height, width = dims
    rows = ctx.op("Transpose", [value], {"perm": [1, 2, 0, 3]})  # (C, H, N, W): runs of W floats
    rows = ctx.op("Reshape", [rows, ctx.e.ints([channels * height, -1, width])])
    swapped = ctx.op("Transpose", [rows], {"perm": [0, 2, 1]})  # one (N, W) -> (W, N) per row, in cache
    return ctx.op("Reshape", [swapped, ctx.e.ints([channels, height, width, -1])])


def _padded_batch_last(ctx: VJPContext, x, pads):
    """x (N, C, H, W) as (C, Hp, Wp, N), zero-padded by the Conv's pads."""
    xt = _batch_last(ctx, x)
    if any(pads):
        xt = ctx.op("Pad", [xt, ctx.e.ints([0, pads[0], pads[1], 0, 0, pads[2], pads[3], 0])])
    return xt


def _batch_last_patches_fit(out_c, channels, kernel, padded) -> bool:
    """Whether ``_weight_grad_by_batch_last_patches`` copies no more values than the shifted Gemm and
    fits one piece (SHIFTED_CHUNK_ABOVE per sample): LeNet's conv2 (C*k*k*H' = 1500 rows of W' against
    (C*kw + O*kh)*Hp = 1540), not its conv1 (2100 against 1440)."""
    kh, kw = kernel
    hp, wp = padded
    patch_rows = channels * kh * kw * (hp - kh + 1)
    return patch_rows <= (channels * kw + out_c * kh) * hp and 4 * patch_rows * (wp - kw + 1) <= SHIFTED_CHUNK_ABOVE


# Where the batch-last patches rule ran for a Conv, it records the patches (C*kh*kw, H'*W'*N) on the forward
# Conv node (``node.meta``, in memory): ``passes/conv_from_patches.py`` then computes that Conv as a Gemm on
# them instead of a second im2col in ONNX Runtime's Conv.
PATCHES_META_KEY = "graphc.conv.batch_last_patches"


def _weight_grad_by_batch_last_patches(ctx: VJPContext, x, g, out_c, channels, kernel, pads, padded):
    """dw of a 2-D stride-1 ungrouped Conv as one Gemm of x's batch-last patches with g.

    xp = x padded, laid out (C, Hp*Wp, N); ONE Gather with indices (p + i)*Wp + q + j makes the patches
    P[(c, i, j), (p, q, n)] = xp[c, p + i, q + j, n] in runs of N floats, and with gt = g as (O, H'*W'*N),
    Gemm(P, gt; transB=1) = [(c, i, j), o] = dw transposed. The exact contraction (N*H'*W' terms, where the
    shifted Gemm sums Hp/H' times as many) and no padded copy of g; it copies C*kh*kw*H'*W' values per
    sample against (C*kw + O*kh)*Hp*W' for the shifted Gemm, so it is taken where that is no more
    (``_batch_last_patches_fit``: LeNet's conv2, 0.58 against 0.61-0.66 ms at 1 thread,
    probes/conv_dw_patch_gather.py; in the whole LeNet step ~0.96x its CPU time at 1 thread,
    probes/step_ab_interleaved.py, issue 11). The patches (the large operand) are Gemm's A, read in place;
    MLAS packs only B, here g's 16 rows.
    """
    kh, kw = kernel
    hp, wp = padded
    out_h, out_w = hp - kh + 1, wp - kw + 1
    i, j = np.divmod(np.arange(kh * kw), kw)
    rows, columns = i[:, None, None] + np.arange(out_h)[None, :, None], j[:, None, None] + np.arange(out_w)[None, None, :]
    index = rows * wp + columns  # [(i, j), p, q] -> (p + i) * Wp + q + j
    xr = ctx.op("Reshape", [_padded_batch_last(ctx, x, pads), ctx.e.ints([channels, hp * wp, -1])])
    patches = ctx.op("Gather", [xr, ctx.e.const(index.astype(np.int64))], {"axis": 1})
    patches = ctx.op("Reshape", [patches, ctx.e.ints([channels * kh * kw, -1])])
    if ctx.node.op_type == "Conv" and x is ctx.inputs[0]:  # the forward Conv may reuse them (see the key)
        ctx.node.meta[PATCHES_META_KEY] = patches
    gt = ctx.op("Reshape", [_batch_last(ctx, g), ctx.e.ints([out_c, -1])])
    product = ctx.op("Gemm", [patches, gt], {"transB": 1})
    # Reshaped to (C, kh, kw, O) before its Transpose: a Transpose right after a Gemm is folded by ONNX
    # Runtime into Gemm(gt, patches), which packs the large patches as B (0.40 against 0.29 ms).
    product = ctx.op("Reshape", [product, ctx.e.ints([channels, kh, kw, out_c])])
    return ctx.op("Transpose", [product], {"perm": [3, 0, 1, 2]})


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
    x_index = (np.arange(hp)[None, :, None] * wp + np.arange(out_w)[None, None, :] + np.arange(kw)[:, None, None])
    xr = ctx.op("Reshape", [_padded_batch_last(ctx, x, pads), ctx.e.ints([channels, hp * wp, -1])])
    gt = _batch_last(ctx, g)
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
    no_auto_pad(ctx, "ConvTranspose")
    strides = spatial_attr(ctx, "strides", [1] * nd)
    dilations = spatial_attr(ctx, "dilations", [1] * nd)
    pads = spatial_attr(ctx, "pads", [0] * (2 * nd))
    group = ctx.attr("group", 1)
    x_sp = static_spatial(ctx, x, "ConvTranspose")
    y_sp = static_spatial(ctx, ctx.outputs[0], "ConvTranspose")
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
