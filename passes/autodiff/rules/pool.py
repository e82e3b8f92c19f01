"""VJP rules of MaxPool and AveragePool (split from ``conv.py``; they share its spatial-attribute helpers).

MaxPool's lowerings were chosen by measurement on ONNX Runtime CPU, batch 64 (docs/performance.md, "The
CNN steps' pooling"; benchmarks/probes/maxpool_grad_lowerings.py): see ``max_pool_vjp``.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from passes.autodiff.helpers import static_dims, zeros_like
from passes.autodiff.registry import VJPContext, register_vjp
from passes.names import THEN_ALWAYS_RIGHT_KEY
from passes.autodiff.rules.spatial import conv_transpose, spatial_attr, static_hw
from passes.autodiff.rules.scan import name_body_values
from passes.emitter import Emitter


def _windows_disjoint(ctx: VJPContext, nd: int) -> bool:
    """Whether no input element lies in two MaxPool windows (stride >= dilated kernel extent, per axis)."""
    kernel = spatial_attr(ctx, "kernel_shape", [])
    strides = spatial_attr(ctx, "strides", [1] * nd)
    dilations = spatial_attr(ctx, "dilations", [1] * nd)
    return all(s >= d * (k - 1) + 1 for k, s, d in zip(kernel, strides, dilations))


def _unpool_fits(ctx: VJPContext, x, nd: int) -> bool:
    """Whether MaxUnpool's default output size, (out - 1) * stride + kernel, is x's static spatial size."""
    sizes, outs = static_dims(x), static_dims(ctx.outputs[0])
    if sizes is None or outs is None or not all(isinstance(d, int) for d in sizes[2:] + outs[2:]):
        return False
    kernel = spatial_attr(ctx, "kernel_shape", [])
    strides = spatial_attr(ctx, "strides", [1] * nd)
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
    kernel = spatial_attr(ctx, "kernel_shape", [])
    dims = static_dims(x)
    if x.dtype != ir.DataType.FLOAT or dims is None or not all(isinstance(d, int) for d in dims[1:]):
        return None
    if int(np.prod(dims[1:])) > MASK_MAX_ELEMENTS_PER_SAMPLE or spatial_attr(ctx, "strides", [1] * nd) != kernel:
        return None
    if int(np.prod(kernel)) > 64:  # the window weights 2^(taps - 1 - position) stay far inside float32's range
        return None
    if any(spatial_attr(ctx, "pads", [0] * (2 * nd))) or any(d != 1 for d in spatial_attr(ctx, "dilations", [1] * nd)):
        return None
    if ctx.attr("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET", "VALID", b"VALID"):
        return None
    return kernel if all(size % k == 0 for size, k in zip(dims[2:], kernel)) else None


def _max_pool_mask_vjp(ctx: VJPContext, x, kernel: list[int]):
    """dx = upsampled g where x is its window's first maximum, for windows that tile x; no Indices needed.

    On a (N*C, 1, *spatial) view of x, y and g: with one channel ONNX Runtime's NCHWc layout transformer
    leaves the mask's MaxPool and Resizes alone (its Reorder copies cost more than the ops themselves).
    maxima = (x == upsampled y) as 0/1. Where no window holds two maxima (``_has_tied_windows``), maxima
    is the mask; otherwise an ``If`` builds it with PyTorch's first-maximum rule
    (``_first_maximum_only``). Both give the same mask whenever the cheap one applies, so the choice is
    exact; on continuous activations (the usual case: the CNN steps pool before the ReLU) it saves four
    passes over the activation (the mask 0.66-0.70x its CPU time, probes/bn_pool_pass_variants.py). The
    branches read enclosing values (``passes/traversal.py``'s ``node_reads`` follows them). dx = mask *
    upsampled g; a window without a maximum equal to y (NaN) gets no gradient.
    Arithmetic, not ``Where``: ONNX Runtime's CPU ``Where`` costs several times a ``Mul`` over the same
    elements (probes/maxpool_quarters.py). The price: an inf or NaN cotangent spreads NaN over its
    window's other positions (0 * inf), where PyTorch gives 0; a training step with such a cotangent is
    refused by the finiteness check anyway.
    """
    dims = static_dims(x)
    x_sp = dims[2:]
    out_sp = [size // k for size, k in zip(x_sp, kernel)]  # the windows tile x
    scales = ctx.e.const(np.asarray([1, 1, *kernel], dtype=np.float32))

    def upsampled(value):
        return ctx.op("Resize", [value, None, scales], _NEAREST)
    y_view = ctx.op("Reshape", [ctx.outputs[0], ctx.e.ints([-1, 1, *out_sp])])
    is_max = ctx.op("Equal", [ctx.op("Reshape", [x, ctx.e.ints([-1, 1, *x_sp])]), upsampled(y_view)])
    maxima = ctx.op("Cast", [is_max], {"to": ir.DataType.FLOAT})
    first_only = _branch(f"{ctx.node.name}/first_maximum",
                         lambda e: _first_maximum_only(e, is_max, maxima, _window_weights(x_sp, kernel), kernel,
                                                       scales))
    # Cast again, not Identity(maxima): optimizers drop Identities, and a branch may not return an
    # outer value directly (ONNX Runtime refuses the model).
    as_is = _branch(f"{ctx.node.name}/no_ties", lambda e: e.op("Cast", [is_max], {"to": ir.DataType.FLOAT}))
    mask = ctx.op("If", [_has_tied_windows(ctx, maxima, kernel)],
                  {"then_branch": first_only, "else_branch": as_is}, dtype=ir.DataType.FLOAT)
    # The first-maximum mask is right with or without ties: on a device, where an If's condition is read
    # on the host (a copy and a stream sync per step), the session runs it unconditionally instead.
    mask.producer().metadata_props[THEN_ALWAYS_RIGHT_KEY] = "1"
    dx = ctx.op("Mul", [mask, upsampled(ctx.op("Reshape", [ctx.g, ctx.e.ints([-1, 1, *out_sp])]))])
    return ctx.op("Reshape", [dx, ctx.e.ints([-1, *dims[1:]])])


_NEAREST = {"mode": "nearest", "nearest_mode": "floor", "coordinate_transformation_mode": "asymmetric"}


def _window_weights(x_sp, kernel) -> np.ndarray:
    """2^(taps - 1 - row-major position in the window), tiled over a (1, 1, *x_sp) map."""
    within = np.ravel_multi_index(np.meshgrid(*[np.arange(size) % k for size, k in zip(x_sp, kernel)],
                                              indexing="ij"), kernel)
    return (2.0 ** (int(np.prod(kernel)) - 1 - within)).astype(np.float32)[None, None]


def _first_maximum_only(e: Emitter, is_max, maxima, weights: np.ndarray, kernel: list[int], scales):
    """0/1 at each window's first maximum: weight = maxima * 2^(taps - 1 - position), first = the window's
    largest weight (exact: powers of two), chosen = (weight == upsampled first) and is_max."""
    weight = e.op("Mul", [maxima, e.const(weights)])
    first = e.op("Resize", [e.op("MaxPool", [weight], {"kernel_shape": kernel, "strides": kernel}), None, scales],
                 _NEAREST)
    return e.op("Cast", [e.op("And", [e.op("Equal", [weight, first]), is_max])], {"to": ir.DataType.FLOAT})


def _has_tied_windows(ctx: VJPContext, maxima, kernel: list[int]):
    """Whether a window holds two or more maxima, as a bool scalar. Per row of the view, sum(maxima) counts
    every window's maxima and sum(MaxPool(maxima)) the windows that have one: they differ exactly where a
    window has two or more. Whatever y is where a window has no maximum equal to it (NaN; an all -inf or
    all-NaN window, which ONNX Runtime's 1-D and 3-D kernels pool to the lowest float), that window counts
    0 in both sums and cannot hide a tie elsewhere. Sums of 0/1 per row (at most
    MASK_MAX_ELEMENTS_PER_SAMPLE) are exact in float32. (An AveragePool per window measured 3.5x slower
    than MaxPool here.)"""
    axes = ctx.e.ints(list(range(2, 2 + len(kernel))))
    per_row = ctx.op("ReduceSum", [maxima, axes], {"keepdims": 0})
    windows = ctx.op("MaxPool", [maxima], {"kernel_shape": kernel, "strides": kernel})
    with_a_maximum = ctx.op("ReduceSum", [windows, axes], {"keepdims": 0})
    extra = ctx.op("ReduceMax", [ctx.op("Sub", [per_row, with_a_maximum])], {"keepdims": 0})
    return ctx.op("Greater", [extra, ctx.e.const(np.float32(0))])


def _branch(name: str, build) -> ir.Graph:
    """A one-output ``If`` branch of ``build(emitter)``'s nodes (they may read the enclosing graph's values),
    its values named apart from every other graph's (ONNX forbids a subgraph to reuse an enclosing name)."""
    e = Emitter(name)
    out = build(e)
    out.type = ir.TensorType(ir.DataType.FLOAT)
    graph = ir.Graph([], [out], nodes=e.nodes, name=name.replace("/", "_"))
    name_body_values(graph, f"{name}/")
    return graph


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
    nd = len(spatial_attr(ctx, "kernel_shape", []))
    if nd > 2 and any(d != 1 for d in spatial_attr(ctx, "dilations", [1] * nd)):
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
    plain = not any(spatial_attr(ctx, "pads", [0] * (2 * nd))) and not ctx.attr("ceil_mode", 0) and \
        ctx.attr("auto_pad", "NOTSET") in ("NOTSET", b"NOTSET", "VALID", b"VALID") and _unpool_fits(ctx, x, nd)
    if plain and _windows_disjoint(ctx, nd) and x.dtype == ir.DataType.FLOAT:
        attrs = {"kernel_shape": spatial_attr(ctx, "kernel_shape", []), "strides": spatial_attr(ctx, "strides", [1] * nd)}
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
    kernel = spatial_attr(ctx, "kernel_shape", [])
    strides = spatial_attr(ctx, "strides", [1, 1])
    pads = spatial_attr(ctx, "pads", [0, 0, 0, 0])
    include = ctx.attr("count_include_pad", 0)
    if any(d != 1 for d in spatial_attr(ctx, "dilations", [1, 1])) or \
            ctx.attr("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        raise NotImplementedError("the gradient of AveragePool with dilations or auto_pad is not implemented")
    x_hw = static_hw(ctx, x, "AveragePool")
    out_hw = static_hw(ctx, ctx.outputs[0], "AveragePool")
    rows = _avg_divisors(x_hw[0], out_hw[0], kernel[0], strides[0], pads[0], include)
    cols = _avg_divisors(x_hw[1], out_hw[1], kernel[1], strides[1], pads[1], include)
    inverse = (1.0 / np.outer(rows, cols)).astype(x.dtype.numpy())[None, None]
    scaled = ctx.op("Mul", [ctx.g, ctx.e.const(inverse)])
    ones = ctx.e.const(np.ones((channels, 1, kernel[0], kernel[1]), dtype=x.dtype.numpy()))
    return [conv_transpose(ctx, scaled, ones, x_hw, out_hw, kernel, strides, [1, 1], pads, channels)]
