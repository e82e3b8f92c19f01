"""VJP rule of Resize (nearest and linear), through build-time interpolation matrices.

Resize in modes nearest and linear is separable: along each resized axis the
output is ``A @ x`` for a constant (out, in) matrix ``A`` fixed by the sizes,
the scale and the coordinate mode. The gradient is ``A^T`` applied along
each such axis: a ``MatMul`` with a build-time constant, exact and cheap at
the sizes of the tutorials (an UNet decoder's 2x upsampling of 64x64 maps:
two 128x64 matrices). Where ``A`` only repeats each input ``k`` times
(nearest with an integer scale, PyTorch's ``Upsample(scale_factor=k)``), the
gradient is a reshape to (..., in, k, ...) and a ``ReduceSum`` over the ``k``
axes instead.

The matrices follow ONNX Runtime's arithmetic (float32 coordinates, linear
clamped to the input's edge) so nearest picks the same inputs as the forward.
align_corners maps by the integer output length, (in - 1) / (out - 1) with
out = floor(in * scale), as ONNX Runtime and PyTorch do. onnx's reference
evaluator maps by the fractional in * scale instead (onnx/onnx#2462): for
scales with a fractional in * scale the two forwards differ, and this rule is
the gradient of ONNX Runtime's (the node test
resize_downsample_scales_linear_align_corners, 4 * 0.6 = 2.4, is such a case).
"""

from __future__ import annotations

import math

import numpy as np

from passes.autodiff.helpers import static_dims
from passes.autodiff.registry import VJPContext, register_vjp

_F = np.float32


def _source_coordinate(mode: str, x: int, scale: float, n: int, m: int) -> np.float32:
    """ONNX's coordinate_transformation_mode: where output position ``x`` reads from, in float32."""
    xf, s = _F(x), _F(scale)
    if mode == "half_pixel":
        return (xf + _F(0.5)) / s - _F(0.5)
    if mode == "pytorch_half_pixel":
        return (xf + _F(0.5)) / s - _F(0.5) if m > 1 else _F(0.0)
    if mode == "align_corners":  # m is the integer output length, not in * scale: see the module docstring
        return _F(0.0) if m == 1 else xf * _F(n - 1) / _F(m - 1)
    if mode == "asymmetric":
        return xf / s
    if mode == "half_pixel_symmetric":
        adjustment = _F(m) / (s * _F(n))
        offset = _F(n / 2) * (_F(1.0) - adjustment)
        return offset + (xf + _F(0.5)) / s - _F(0.5)
    raise NotImplementedError(f"the gradient of Resize with coordinate_transformation_mode={mode!r} "
                              f"is not implemented")


def _nearest_index(v: float, nearest_mode: str) -> int:
    if nearest_mode == "round_prefer_floor":
        return math.ceil(v - 0.5)
    if nearest_mode == "round_prefer_ceil":
        return math.floor(v + 0.5)
    if nearest_mode == "floor":
        return math.floor(v)
    if nearest_mode == "ceil":
        return math.ceil(v)
    raise NotImplementedError(f"the gradient of Resize with nearest_mode={nearest_mode!r} is not implemented")


def interpolation_matrix(mode: str, coordinate_mode: str, nearest_mode: str, n: int, m: int,
                         scale: float) -> np.ndarray:
    """The (m, n) float64 matrix of a 1-D Resize from ``n`` to ``m`` positions."""
    matrix = np.zeros((m, n))
    for o in range(m):
        v = float(_source_coordinate(coordinate_mode, o, scale, n, m))
        if mode == "nearest":
            matrix[o, min(max(_nearest_index(v, nearest_mode), 0), n - 1)] = 1.0
            continue
        v = min(max(v, 0.0), n - 1.0)
        low = math.floor(v)
        frac = v - low
        matrix[o, low] += 1.0 - frac
        matrix[o, min(low + 1, n - 1)] += frac
    return matrix


def _repeat_factor(matrix: np.ndarray) -> int | None:
    """k when ``matrix`` repeats each input k times in a row (nearest, integer scale), else None."""
    m, n = matrix.shape
    if m % n:
        return None
    k = m // n
    return k if np.array_equal(matrix, np.kron(np.eye(n), np.ones((k, 1)))) else None


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _const(value):
    """The constant array behind ``value`` (an initializer, a builder constant or a Constant node)."""
    if value is None:
        return None
    if value.const_value is not None:
        return np.asarray(value.const_value.numpy())
    producer = value.producer()
    if producer is not None and producer.op_type == "Constant" and "value" in producer.attributes:
        return np.asarray(producer.attributes["value"].value.numpy())
    raise NotImplementedError("the gradient of Resize needs constant scales or sizes")


def _apply_along(ctx: VJPContext, g, matrix_t: np.ndarray, axis: int, rank: int, dtype):
    """(A^T contracted with g along ``axis``): g's ``axis`` of size m becomes n."""
    a_t = ctx.e.const(matrix_t.astype(dtype))  # (n, m)
    if axis == rank - 2:
        return ctx.op("MatMul", [a_t, g])
    a = ctx.e.const(np.ascontiguousarray(matrix_t.T).astype(dtype))  # (m, n)
    if axis == rank - 1:
        return ctx.op("MatMul", [g, a])
    perm = list(range(rank))
    perm[axis], perm[-1] = perm[-1], perm[axis]
    moved = ctx.op("MatMul", [ctx.op("Transpose", [g], {"perm": perm}), a])
    return ctx.op("Transpose", [moved], {"perm": perm})


def _sum_repeats(ctx: VJPContext, g, repeats: dict[int, int], out_dims: list, in_dims: list):
    """Reshape each repeated axis (n * k) to (n, k) and sum the k axes; None when dims are too symbolic."""
    first = min(repeats)
    target, summed = [], []
    for axis, dim in enumerate(out_dims):
        if axis in repeats:
            target += [in_dims[axis], repeats[axis]]
            summed.append(len(target) - 1)
        elif isinstance(dim, int):
            target.append(dim)
        else:
            target.append(0 if axis < first else -1)  # 0 copies the dim, valid before the first split
    if target.count(-1) > 1:
        return None
    split = ctx.op("Reshape", [g, ctx.e.ints(target)])
    return ctx.op("ReduceSum", [split, ctx.e.ints(summed)], {"keepdims": 0})


@register_vjp("Resize")
def resize_vjp(ctx: VJPContext):
    """Resize(x, roi, scales | sizes; mode nearest|linear, coordinate_transformation_mode, nearest_mode, axes) -> y.

    Separable: y = A_1 x_1 ... A_d x_d with one build-time (out, in) interpolation matrix per resized
    axis (nearest: one 1 per row at the picked input; linear: the two clamped neighbours' weights).
    dx = g contracted with A_i^T along each resized axis (MatMul), or Reshape + ReduceSum where A_i
    repeats each input k times (nearest, integer scale).
    """
    x = ctx.inputs[0]
    mode = _text(ctx.attr("mode", "nearest"))
    coordinate_mode = _text(ctx.attr("coordinate_transformation_mode", "half_pixel"))
    nearest_mode = _text(ctx.attr("nearest_mode", "round_prefer_floor"))
    if mode not in ("nearest", "linear"):
        raise NotImplementedError(f"the gradient of Resize with mode={mode!r} is not implemented (nearest, linear)")
    if ctx.attr("antialias", 0) and mode == "linear":
        raise NotImplementedError("the gradient of Resize with antialias=1 is not implemented")
    in_dims, out_dims = static_dims(x), static_dims(ctx.outputs[0])
    if in_dims is None:
        raise NotImplementedError(f"the gradient of Resize needs the input's rank, got {x.shape}")
    rank = len(in_dims)
    out_dims = out_dims if out_dims is not None else [None] * rank
    axes = [a % rank for a in (ctx.attr("axes") or range(rank))]
    scales = _const(ctx.inputs[2]) if len(ctx.inputs) > 2 and ctx.inputs[2] is not None else None
    sizes = _const(ctx.inputs[3]) if len(ctx.inputs) > 3 and ctx.inputs[3] is not None else None
    if scales is not None and scales.size == 0:
        scales = None
    if sizes is not None and _text(ctx.attr("keep_aspect_ratio_policy", "stretch")) != "stretch":
        raise NotImplementedError("the gradient of Resize with keep_aspect_ratio_policy other than stretch")
    repeats, matrices = {}, {}
    for j, axis in enumerate(axes):
        n = in_dims[axis]
        if scales is not None:
            scale = float(scales[j])
            if scale == 1.0:
                continue
            m = out_dims[axis] if isinstance(out_dims[axis], int) else (
                math.floor(_F(scale) * _F(n)) if isinstance(n, int) else None)
        else:
            m = int(sizes[j])
            if m == n:
                continue
            scale = float(_F(m) / _F(n)) if isinstance(n, int) else None
        if not isinstance(n, int) or not isinstance(m, int):
            raise NotImplementedError(f"the gradient of Resize needs static resized dims, got {x.shape}")
        matrix = interpolation_matrix(mode, coordinate_mode, nearest_mode, n, m, scale)
        if np.array_equal(matrix, np.eye(n)):
            continue
        k = _repeat_factor(matrix)
        if k is not None:
            repeats[axis] = k
        else:
            matrices[axis] = matrix
    dtype = x.dtype.numpy()
    g = ctx.g
    if repeats:
        summed = _sum_repeats(ctx, g, repeats, out_dims, in_dims)
        if summed is None:  # too many symbolic dims to reshape: contract with the matrices instead
            for axis, k in repeats.items():
                matrices[axis] = np.kron(np.eye(in_dims[axis]), np.ones((k, 1)))
        else:
            g = summed
    for axis, matrix in sorted(matrices.items()):
        g = _apply_along(ctx, g, matrix.T, axis, rank, dtype)
    if g is ctx.g:
        g = ctx.op("Identity", [g])
    return [g] + [None] * (len(ctx.inputs) - 1)
