"""Tensor-level builder ops: one block per op (checks, shape rule, the ONNX it emits).

Gradients need no work here: each op emits ONNX ops that have rules in
``passes/autodiff/rules``.
"""

from __future__ import annotations

from collections import Counter
from itertools import zip_longest
from typing import NamedTuple

import numpy as np
import onnx_ir as ir

from graphc.dtypes import is_floating, to_numpy_dtype
from graphc.errors import shape_error
from graphc.tensor import Dim, SymDim, Tensor, as_tensor, constant, emit
from passes.names import STOP_GRADIENT_KEY

INT64_MAX = np.iinfo(np.int64).max


# ---- shape helpers -----------------------------------------------------
def fmt(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def broadcast_shapes(op: str, a, b) -> tuple:
    """numpy broadcasting over ints and symbolic dims; a symbolic dim meets an int as that int."""
    out = []
    for da, db in zip_longest(reversed(a), reversed(b), fillvalue=1):
        if da == db or db == 1:
            out.append(da)
        elif da == 1:
            out.append(db)
        elif isinstance(da, int) and isinstance(db, int):
            raise shape_error(op, f"shapes {fmt(a)} and {fmt(b)} do not broadcast")
        else:
            out.append(da if isinstance(da, int) else db if isinstance(db, int) else da)
    return tuple(reversed(out))


def norm_axis(op: str, axis: int, rank: int) -> int:
    if not -rank <= axis < max(rank, 1):
        raise shape_error(op, f"dim {axis} is out of range for a tensor of rank {rank}")
    return axis % rank if rank else 0


def _promote(op: str, a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Integer meets float -> the float's dtype (as PyTorch); two different floats are an error."""
    if a.dtype == b.dtype:
        return a, b
    if is_floating(a.dtype) and not is_floating(b.dtype):
        return a, cast(b, a.dtype)
    if is_floating(b.dtype) and not is_floating(a.dtype):
        return cast(a, b.dtype), b
    raise shape_error(op, f"dtypes {a.dtype} and {b.dtype} differ; cast one with .astype()")


def _binary_operands(op: str, a, b) -> tuple[Tensor, Tensor]:
    if not isinstance(a, Tensor) and not isinstance(b, Tensor):
        raise shape_error(op, "needs at least one Tensor")
    like = a if isinstance(a, Tensor) else b
    if isinstance(a, float) or isinstance(b, float):
        if not is_floating(like.dtype):
            like = cast(like, "float32")
            a, b = (like, b) if isinstance(a, Tensor) else (a, like)
    a = as_tensor(a, like, op)
    b = as_tensor(b, like, op)
    return _promote(op, a, b)


def _elementwise(op_type: str, a, b) -> Tensor:
    a, b = _binary_operands(op_type, a, b)
    return emit(op_type, [a, b], shape=broadcast_shapes(op_type, a.shape, b.shape), dtype=a.dtype)


# ---- arithmetic --------------------------------------------------------
def add(a, b) -> Tensor:
    """``a + b`` with broadcasting (ONNX Add).

    >>> import graphc as gc
    >>> (gc.input("x", ("batch", 3)) + gc.input("b", (3,))).shape
    ('batch', 3)
    """
    return _elementwise("Add", a, b)


def sub(a, b) -> Tensor:
    """``a - b`` with broadcasting (ONNX Sub)."""
    return _elementwise("Sub", a, b)


def mul(a, b) -> Tensor:
    """``a * b`` with broadcasting (ONNX Mul)."""
    return _elementwise("Mul", a, b)


def div(a, b) -> Tensor:
    """``a / b`` with broadcasting (ONNX Div); integers are true-divided in float32, as in PyTorch."""
    a, b = _binary_operands("Div", a, b)
    if not is_floating(a.dtype):
        a, b = cast(a, "float32"), cast(b, "float32")
    return emit("Div", [a, b], shape=broadcast_shapes("Div", a.shape, b.shape), dtype=a.dtype)


def power(a, b) -> Tensor:
    """``a ** b`` (ONNX Pow); a Python exponent takes the base's dtype."""
    return _elementwise("Pow", a, b)


def neg(x: Tensor) -> Tensor:
    """``-x`` (ONNX Neg)."""
    return emit("Neg", [x], shape=x.shape, dtype=x.dtype)


def absolute(x: Tensor) -> Tensor:
    """``|x|`` (ONNX Abs)."""
    return emit("Abs", [x], shape=x.shape, dtype=x.dtype)


def unary(op_type: str, x: Tensor) -> Tensor:
    """A float element-wise op that keeps the shape: Exp, Log, Sqrt, Relu, Sigmoid, Tanh, ..."""
    if not is_floating(x.dtype):
        raise shape_error(op_type, f"needs a floating-point tensor, got {x.dtype}")
    return emit(op_type, [x], shape=x.shape, dtype=x.dtype)


def compare(op_type: str, a, b) -> Tensor:
    """``a < b``, ``a == b``, ...: element-wise comparisons giving bool tensors (no gradient)."""
    a, b = _binary_operands(op_type, a, b)
    return emit(op_type, [a, b], shape=broadcast_shapes(op_type, a.shape, b.shape), dtype=np.bool_)


def not_equal(a, b) -> Tensor:
    """``a != b``: element-wise ``Not(Equal(a, b))``, a bool tensor (no gradient).

    >>> import graphc as gc
    >>> x = gc.input("x", ("batch",), dtype="int64")
    >>> (x != 3).dtype
    dtype('bool')
    """
    return logical_not(compare("Equal", a, b))


def logical_not(x: Tensor) -> Tensor:
    """``~x`` / ``gc.logical_not(x)`` on a bool tensor (ONNX Not)."""
    if x.dtype != np.bool_:
        raise shape_error("Not", f"expects a bool tensor, got {x.dtype}")
    return emit("Not", [x], shape=x.shape, dtype=np.bool_)


def cast(x: Tensor, dtype) -> Tensor:
    """``x.astype(dtype)`` (ONNX Cast)."""
    target = to_numpy_dtype(dtype)
    if x.dtype == target:
        return x
    from graphc.dtypes import to_ir_dtype
    return emit("Cast", [x], {"to": to_ir_dtype(target)}, shape=x.shape, dtype=target)


def stop_gradient(x: Tensor) -> Tensor:
    """``x.detach()``: the same values, but autodiff does not flow through (a marked Identity)."""
    out = emit("Identity", [x], shape=x.shape, dtype=x.dtype)
    out.value.producer().metadata_props[STOP_GRADIENT_KEY] = "1"
    return out


def where(condition: Tensor, a, b) -> Tensor:
    """``gc.where(cond, a, b)``: ``a`` where ``cond`` else ``b`` (ONNX Where)."""
    a, b = _binary_operands("Where", a, b)
    if condition.dtype != np.bool_:
        raise shape_error("Where", f"condition must be bool, got {condition.dtype}")
    shape = broadcast_shapes("Where", condition.shape, broadcast_shapes("Where", a.shape, b.shape))
    return emit("Where", [condition, a, b], shape=shape, dtype=a.dtype)


# ---- matrix product ----------------------------------------------------
def matmul(a, b) -> Tensor:
    """``a @ b`` with numpy semantics (1-D promotion, batch broadcasting) (ONNX MatMul).

    >>> import graphc as gc
    >>> (gc.input("x", ("batch", 4)) @ gc.input("w", (4, 2))).shape
    ('batch', 2)
    """
    a, b = _binary_operands("MatMul", a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise shape_error("MatMul", f"operands must be at least 1-D, got {fmt(a.shape)} and {fmt(b.shape)}")
    sa = (1,) + a.shape if a.ndim == 1 else a.shape
    sb = b.shape + (1,) if b.ndim == 1 else b.shape
    k1, k2 = sa[-1], sb[-2]
    if k1 != k2 and isinstance(k1, int) and isinstance(k2, int):
        raise shape_error("MatMul", f"inner dims differ: {fmt(a.shape)} @ {fmt(b.shape)}")
    batch = broadcast_shapes("MatMul", sa[:-2], sb[:-2])
    shape = batch + ((sa[-2],) if a.ndim > 1 else ()) + ((sb[-1],) if b.ndim > 1 else ())
    return emit("MatMul", [a, b], shape=shape, dtype=a.dtype)


# ---- reshapes ----------------------------------------------------------
def _symbolic_size(shape) -> tuple[int, Counter] | None:
    """(product of int dims, multiset of symbolic dims), or None if a dim is unknown."""
    total, symbols = 1, Counter()
    for d in shape:
        if d is None:
            return None
        if isinstance(d, int):
            total *= d
        else:
            symbols[d] += 1
    return total, symbols


def reshape(x: Tensor, *shape) -> Tensor:
    """``x.reshape(*shape)`` / ``x.view``: ints, one ``-1``, or symbolic dims taken from ``x``.

    >>> import graphc as gc
    >>> gc.input("x", ("batch", 1, 28, 28)).view("batch", -1).shape
    ('batch', 784)
    """
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        shape = tuple(shape[0])
    if sum(1 for d in shape if d == -1) > 1:
        raise shape_error("Reshape", f"only one dim may be -1, got {fmt(shape)}")
    in_size = _symbolic_size(x.shape)
    known = _symbolic_size([d for d in shape if d != -1])
    out_shape = []
    for d in shape:
        if d == -1:
            out_shape.append(_infer_minus_one(x.shape, shape, in_size, known))
        elif isinstance(d, (int, np.integer)) and d >= 0:
            out_shape.append(int(d))
        elif isinstance(d, str) and d in x.shape:
            out_shape.append(d)
        else:
            raise shape_error("Reshape", f"bad target dim {d!r} in {fmt(shape)} for input {fmt(x.shape)}")
    if -1 not in shape and in_size is not None and known is not None and in_size != known:
        raise shape_error("Reshape", f"cannot reshape {fmt(x.shape)} into {fmt(shape)}")
    target = _shape_tensor(x, shape)
    return emit("Reshape", [x, target], shape=tuple(out_shape), dtype=x.dtype)


def _infer_minus_one(in_shape, shape, in_size, known) -> Dim:
    if in_size is None or known is None:
        return None
    (ti, si), (tk, sk) = in_size, known
    if sk - si:  # the target names a symbolic dim the input lacks
        return None
    rest = si - sk
    if tk == 0 or ti % tk:
        if not rest:
            raise shape_error("Reshape", f"cannot reshape {fmt(in_shape)} into {fmt(shape)}")
        return None
    quotient = ti // tk
    if not rest:
        return quotient
    if quotient == 1 and sum(rest.values()) == 1:
        return next(iter(rest))
    return None


def _shape_tensor(x: Tensor, shape) -> Tensor:
    """The int64 shape input of Reshape; a symbolic dim becomes 0 (copy) at its own position, else Shape(x)[j]."""
    if all(isinstance(d, (int, np.integer)) for d in shape):
        return constant(np.asarray(shape, dtype=np.int64))
    parts = []
    for i, d in enumerate(shape):
        if isinstance(d, str):
            if i < x.ndim and x.shape[i] == d:
                parts.append(constant(np.asarray([0], dtype=np.int64)))
            else:
                j = x.shape.index(d)
                parts.append(emit("Shape", [x], {"start": j, "end": j + 1}, shape=(1,), dtype=np.int64))
        else:
            parts.append(constant(np.asarray([d], dtype=np.int64)))
    return emit("Concat", parts, {"axis": 0}, shape=(len(shape),), dtype=np.int64)


def flatten(x: Tensor, start_dim: int = 0, end_dim: int = -1) -> Tensor:
    """``x.flatten(start_dim, end_dim)``: merge a run of dims into one (ONNX Reshape with 0 / -1)."""
    rank = x.ndim
    if rank == 0:
        return reshape(x, 1)
    start, end = norm_axis("Flatten", start_dim, rank), norm_axis("Flatten", end_dim, rank)
    if start > end:
        raise shape_error("Flatten", f"start_dim {start_dim} is after end_dim {end_dim}")
    merged = _symbolic_size(x.shape[start:end + 1])
    if merged is not None and not merged[1]:
        merged_dim: Dim = merged[0]
    elif merged is not None and merged[0] == 1 and sum(merged[1].values()) == 1:
        merged_dim = next(iter(merged[1]))
    else:
        merged_dim = None
    out_shape = x.shape[:start] + (merged_dim,) + x.shape[end + 1:]
    spec = [0] * start + [-1] + [0] * (rank - end - 1)
    target = constant(np.asarray(spec, dtype=np.int64))
    return emit("Reshape", [x, target], shape=out_shape, dtype=x.dtype)


def permute(x: Tensor, *dims) -> Tensor:
    """``x.permute(*dims)`` (ONNX Transpose)."""
    if len(dims) == 1 and isinstance(dims[0], (tuple, list)):
        dims = tuple(dims[0])
    perm = [norm_axis("Transpose", d, x.ndim) for d in dims]
    if sorted(perm) != list(range(x.ndim)):
        raise shape_error("Transpose", f"{dims} is not a permutation of the dims of {fmt(x.shape)}")
    return emit("Transpose", [x], {"perm": perm}, shape=tuple(x.shape[p] for p in perm), dtype=x.dtype)


def transpose(x: Tensor, dim0: int, dim1: int) -> Tensor:
    """``x.transpose(dim0, dim1)``: swap two dims (ONNX Transpose)."""
    perm = list(range(x.ndim))
    a, b = norm_axis("Transpose", dim0, x.ndim), norm_axis("Transpose", dim1, x.ndim)
    perm[a], perm[b] = perm[b], perm[a]
    return permute(x, *perm)


def squeeze(x: Tensor, dim=None) -> Tensor:
    """``x.squeeze(dim)``: drop size-1 dims (all of them when ``dim`` is None) (ONNX Squeeze)."""
    if dim is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    else:
        dims = dim if isinstance(dim, (tuple, list)) else (dim,)
        axes = [norm_axis("Squeeze", d, x.ndim) for d in dims]
        axes = [a for a in axes if x.shape[a] == 1 or x.shape[a] is None]  # PyTorch: non-1 dims stay
    if not axes:
        return x
    shape = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return emit("Squeeze", [x, constant(np.asarray(axes, dtype=np.int64))], shape=shape, dtype=x.dtype)


def unsqueeze(x: Tensor, dim: int) -> Tensor:
    """``x.unsqueeze(dim)``: insert a size-1 dim (ONNX Unsqueeze)."""
    axis = norm_axis("Unsqueeze", dim, x.ndim + 1)
    shape = x.shape[:axis] + (1,) + x.shape[axis:]
    return emit("Unsqueeze", [x, constant(np.asarray([axis], dtype=np.int64))], shape=shape, dtype=x.dtype)


def expand(x: Tensor, *sizes) -> Tensor:
    """``x.expand(*sizes)``: broadcast to a larger shape without copying semantics; -1 keeps a dim (ONNX Expand)."""
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    lead = len(sizes) - x.ndim
    if lead < 0:
        raise shape_error("Expand", f"cannot expand {fmt(x.shape)} to fewer dims {fmt(sizes)}")
    target = []
    for i, size in enumerate(sizes):
        own = x.shape[i - lead] if i >= lead else None
        if size == -1:
            if i < lead:
                raise shape_error("Expand", f"-1 is not allowed for the new leading dim {i} in {fmt(sizes)}")
            target.append(own)
        elif own not in (1, None, size) and isinstance(own, int):
            raise shape_error("Expand", f"dim {i} of size {own} cannot expand to {size} ({fmt(x.shape)} -> {fmt(sizes)})")
        else:
            target.append(size)
    spec = []  # Expand broadcasts, so 1 keeps the input's own dim
    for i, size in enumerate(sizes):
        own = x.shape[i - lead] if i >= lead else None
        if size == -1 or (isinstance(size, str) and size == own):
            spec.append(1)
        elif isinstance(size, str):
            raise shape_error("Expand", f"symbolic size {size!r} must be the input's own dim at position {i}")
        else:
            spec.append(int(size))
    shape_input = constant(np.asarray(spec, dtype=np.int64))
    return emit("Expand", [x, shape_input], shape=tuple(target), dtype=x.dtype)


# ---- reductions --------------------------------------------------------
def _reduce_axes(op: str, x: Tensor, dim) -> list[int]:
    if dim is None:
        return list(range(x.ndim))
    dims = dim if isinstance(dim, (tuple, list)) else (dim,)
    return sorted({norm_axis(op, d, x.ndim) for d in dims})


def _reduced_shape(x: Tensor, axes: list[int], keepdim: bool) -> tuple:
    if keepdim:
        return tuple(1 if i in axes else d for i, d in enumerate(x.shape))
    return tuple(d for i, d in enumerate(x.shape) if i not in axes)


def reduce(op_type: str, x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    """``x.sum(dim)``, ``x.mean(dim)``: ReduceSum / ReduceMean over one dim, several, or all."""
    axes = _reduce_axes(op_type, x, dim)
    if op_type == "ReduceMean" and not is_floating(x.dtype):
        raise shape_error(op_type, f"mean needs a floating-point tensor, got {x.dtype}")
    return emit(op_type, [x, constant(np.asarray(axes, dtype=np.int64))], {"keepdims": int(keepdim)},
                shape=_reduced_shape(x, axes, keepdim), dtype=x.dtype)


class ValuesIndices(NamedTuple):
    """What ``x.max(dim)`` returns, as ``torch.return_types.max`` does."""
    values: Tensor
    indices: Tensor


def _extreme(op_type: str, arg_op: str, x: Tensor, dim, keepdim: bool):
    if dim is None:
        return reduce(op_type, x, None, False)
    values = reduce(op_type, x, dim, keepdim)
    axis = norm_axis(op_type, dim, x.ndim)
    indices = emit(arg_op, [x], {"axis": axis, "keepdims": int(keepdim), "select_last_index": 0},
                   shape=_reduced_shape(x, [axis], keepdim), dtype=np.int64)
    return ValuesIndices(values, indices)


def reduce_max(x: Tensor, dim=None, keepdim: bool = False):
    """``x.max()`` (a scalar) or ``x.max(dim)`` -> ``(values, indices)``, as in PyTorch."""
    return _extreme("ReduceMax", "ArgMax", x, dim, keepdim)


def reduce_min(x: Tensor, dim=None, keepdim: bool = False):
    """``x.min()`` (a scalar) or ``x.min(dim)`` -> ``(values, indices)``, as in PyTorch."""
    return _extreme("ReduceMin", "ArgMin", x, dim, keepdim)


def argmax(x: Tensor, dim=None, keepdim: bool = False) -> Tensor:
    """``x.argmax(dim)`` (ONNX ArgMax; int64, no gradient); ``dim=None`` flattens first."""
    if dim is None:
        x, dim = reshape(x, -1), 0
    axis = norm_axis("ArgMax", dim, x.ndim)
    return emit("ArgMax", [x], {"axis": axis, "keepdims": int(keepdim)},
                shape=_reduced_shape(x, [axis], keepdim), dtype=np.int64)


# ---- indexing ----------------------------------------------------------
def getitem(x: Tensor, index) -> Tensor:
    """Basic indexing: ints, slices with positive steps, ``None`` and ``...``; e.g. ``out[:, -1, :]``.

    Emits one Slice for the sliced and indexed dims, then Squeeze for the
    int-indexed ones and Unsqueeze for ``None``.
    """
    items = index if isinstance(index, tuple) else (index,)
    if sum(1 for it in items if it is Ellipsis) > 1:
        raise shape_error("Slice", "an index can have only one '...'")
    n_real = sum(1 for it in items if it is not None and it is not Ellipsis)
    if n_real > x.ndim:
        raise shape_error("Slice", f"too many indices ({n_real}) for a tensor of shape {fmt(x.shape)}")
    expanded = []
    for it in items:
        if it is Ellipsis:
            expanded.extend([slice(None)] * (x.ndim - n_real))
        else:
            expanded.append(it)
    expanded.extend([slice(None)] * (x.ndim - sum(1 for it in expanded if it is not None)))
    starts, ends, axes, steps, squeeze_axes, out_shape, new_axes = [], [], [], [], [], [], []
    dim_i = 0
    for it in expanded:
        if it is None:
            new_axes.append(len(out_shape))
            out_shape.append(1)
            continue
        size = x.shape[dim_i]
        if isinstance(it, (int, np.integer)):
            it = int(it)
            if isinstance(size, int) and not -size <= it < size:
                raise shape_error("Slice", f"index {it} is out of range for dim {dim_i} of size {size}")
            starts.append(it)
            ends.append(it + 1 if it != -1 else INT64_MAX)
            axes.append(dim_i)
            steps.append(1)
            squeeze_axes.append(dim_i)
        elif isinstance(it, slice):
            step = 1 if it.step is None else it.step
            if step <= 0:
                raise shape_error("Slice", f"slice steps must be positive, got {step}")
            if it != slice(None):
                start = 0 if it.start is None else it.start
                stop = INT64_MAX if it.stop is None else it.stop
                starts.append(start), ends.append(stop), axes.append(dim_i), steps.append(step)
                size = len(range(*slice(start, stop, step).indices(size))) if isinstance(size, int) else None
            out_shape.append(size)
        else:
            raise shape_error("Slice", f"unsupported index {it!r}; use ints, slices, None or ...")
        dim_i += 1
    out = x
    if axes:
        sliced_shape = list(x.shape)
        for a, s, e, st in zip(axes, starts, ends, steps):
            if isinstance(sliced_shape[a], int):
                sliced_shape[a] = len(range(*slice(s, e, st).indices(sliced_shape[a])))
            else:
                sliced_shape[a] = None
        ints = [constant(np.asarray(v, dtype=np.int64)) for v in (starts, ends, axes, steps)]
        out = emit("Slice", [x, *ints], shape=tuple(sliced_shape), dtype=x.dtype)
    if squeeze_axes:
        shape = tuple(d for i, d in enumerate(out.shape) if i not in squeeze_axes)
        out = emit("Squeeze", [out, constant(np.asarray(squeeze_axes, dtype=np.int64))], shape=shape,
                   dtype=x.dtype)
    if new_axes:
        out = emit("Unsqueeze", [out, constant(np.asarray(new_axes, dtype=np.int64))], shape=tuple(out_shape),
                   dtype=x.dtype)
    return out


# ---- joining -----------------------------------------------------------
def concat(tensors, dim: int = 0) -> Tensor:
    """``gc.concat([a, b], dim)`` (``torch.cat``) (ONNX Concat)."""
    tensors = list(tensors)
    if not tensors:
        raise shape_error("Concat", "needs at least one tensor")
    first = tensors[0]
    axis = norm_axis("Concat", dim, first.ndim)
    total: Dim = 0
    for t in tensors:
        if t.ndim != first.ndim or t.dtype != first.dtype or any(
                i != axis and isinstance(a, int) and isinstance(b, int) and a != b
                for i, (a, b) in enumerate(zip(t.shape, first.shape))):
            raise shape_error("Concat", f"cannot join {fmt(first.shape)} {first.dtype} and "
                                        f"{fmt(t.shape)} {t.dtype} along dim {dim}")
        total = total + t.shape[axis] if isinstance(total, int) and isinstance(t.shape[axis], int) else None
    shape = first.shape[:axis] + (total,) + first.shape[axis + 1:]
    return emit("Concat", tensors, {"axis": axis}, shape=shape, dtype=first.dtype)


def stack(tensors, dim: int = 0) -> Tensor:
    """``gc.stack([a, b], dim)``: join along a new dim (Unsqueeze + Concat)."""
    tensors = list(tensors)
    return concat([unsqueeze(t, dim) for t in tensors], dim)


def cat(tensors, dim: int = 0) -> Tensor:
    """``gc.cat``: ``torch.cat``'s name for :func:`concat`."""
    return concat(tensors, dim)


def clip(x: Tensor, min=None, max=None) -> Tensor:  # noqa: A002 (torch.clamp's names)
    """``gc.clip(x, min, max)`` / ``x.clamp(min, max)`` (``torch.clamp``); at least one bound.

    Number bounds emit one ONNX Clip (gradient passes inside the bounds); a
    Tensor bound broadcasts and emits Max / Min, as ``torch.clamp`` with tensors.
    When ``min > max`` every element becomes ``max``, as in PyTorch.

    >>> import graphc as gc
    >>> gc.input("x", ("batch", 3)).clamp(min=0.0).shape
    ('batch', 3)
    """
    if min is None and max is None:
        raise shape_error("Clip", "at least one of min and max must be given (both are None)")
    for name, bound in (("min", min), ("max", max)):
        if bound is not None and not isinstance(bound, (Tensor, int, float, np.number)) or isinstance(bound, bool):
            raise shape_error("Clip", f"{name} must be a number or a Tensor, got {type(bound).__name__}")
    if isinstance(min, Tensor) or isinstance(max, Tensor):
        out = x if min is None else _elementwise("Max", x, min)
        return out if max is None else _elementwise("Min", out, max)
    lo = constant(min, dtype=x.dtype) if min is not None else None
    hi = constant(max, dtype=x.dtype) if max is not None else None
    return emit("Clip", [x, lo, hi], shape=x.shape, dtype=x.dtype)


def cumsum(x: Tensor, dim: int, dtype=None) -> Tensor:
    """``gc.cumsum(x, dim)`` / ``x.cumsum(dim)``: running sums along ``dim`` (ONNX CumSum).

    As ``torch.cumsum``: bool and integer inputs sum in int64 unless ``dtype`` is given.
    The gradient is the reverse running sum of the output gradient.

    >>> import graphc as gc
    >>> gc.cumsum(gc.input("x", ("batch", 5)), dim=1).shape
    ('batch', 5)
    """
    if not isinstance(x, Tensor):
        raise shape_error("CumSum", f"expected a Tensor, got {type(x).__name__}")
    if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool):
        raise shape_error("CumSum", f"dim must be an int, got {dim!r}")
    if x.ndim == 0:
        raise shape_error("CumSum", "needs a tensor of rank >= 1, got a 0-d tensor")
    axis = norm_axis("CumSum", int(dim), x.ndim)
    if dtype is not None:
        x = cast(x, dtype)
    elif not is_floating(x.dtype):
        x = cast(x, "int64")
    if x.dtype not in (np.float32, np.float64, np.int32, np.int64):  # ONNX Runtime's CumSum kernels
        raise shape_error("CumSum", f"unsupported dtype {x.dtype}; use float32, float64, int32 or int64")
    return emit("CumSum", [x, constant(np.asarray(axis, dtype=np.int64))], shape=x.shape, dtype=x.dtype)


# ---- sizes and constants sized by symbolic dims -------------------------
def _dim_piece(dim: SymDim) -> Tensor:
    """Shape(tensor)[axis:axis+1]: the run-time size of a symbolic dim, as a 1-element int64 tensor."""
    return emit("Shape", [dim.tensor], {"start": dim.axis, "end": dim.axis + 1}, shape=(1,), dtype=np.int64)


def dim_size(dim: SymDim) -> Tensor:
    """The run-time size of ``x.size(i)`` as a 0-d int64 Tensor (``t / x.size(0)`` uses it)."""
    return emit("Squeeze", [_dim_piece(dim), constant(np.asarray([0], dtype=np.int64))], shape=(), dtype=np.int64)


def numel(x: Tensor):
    """``x.numel()``: an int for a static shape; a 0-d int64 Tensor (ReduceProd of Shape) when a dim is symbolic."""
    if all(isinstance(d, int) for d in x.shape):
        return int(np.prod(x.shape, dtype=np.int64))
    shape = emit("Shape", [x], shape=(x.ndim,), dtype=np.int64)
    return emit("ReduceProd", [shape], {"keepdims": 0}, shape=(), dtype=np.int64)


def _size_arg(op: str, size) -> tuple:
    """``f(2, 3)``, ``f((2, 3))`` or ``f([2, x.size(0)])``: each dim an int >= 0 or a SymDim."""
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    for d in size:
        if isinstance(d, SymDim):
            continue
        if isinstance(d, str):
            raise shape_error(op, f"size {fmt(size)}: the symbolic dim {d!r} is a plain name; read it from a "
                                  f"tensor (x.size(0) or x.shape[0]) so its run-time size is known")
        if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 0:
            what = "unknown at build time" if d is None else f"{type(d).__name__} {d!r}"
            raise shape_error(op, f"size {fmt(size)}: each dim must be an int >= 0 or a symbolic dim such as "
                                  f"x.size(0), got {what}")
    return tuple(d if isinstance(d, SymDim) else int(d) for d in size)


def _filled(op: str, size: tuple, fill_value, dtype) -> Tensor:
    """A constant when every dim is an int; else ConstantOfShape over Concat(ints, Shape(x)[axis] ...)."""
    if all(isinstance(d, int) for d in size):
        return constant(np.full(size, fill_value, dtype=dtype), dtype=dtype)
    pieces = [_dim_piece(d) if isinstance(d, SymDim) else constant(np.asarray([d], dtype=np.int64)) for d in size]
    target = pieces[0] if len(pieces) == 1 else emit("Concat", pieces, {"axis": 0}, shape=(len(size),),
                                                     dtype=np.int64)
    value = ir.Tensor(np.full((1,), fill_value, dtype=dtype))  # one element of the output dtype
    return emit("ConstantOfShape", [target], {"value": value}, shape=size, dtype=dtype)


def _fill_dtype(op: str, fill_value, dtype) -> np.dtype:
    if isinstance(fill_value, Tensor) or not isinstance(fill_value, (bool, int, float, np.number)):
        raise shape_error(op, f"fill_value must be a Python number, got {type(fill_value).__name__}")
    if dtype is not None:
        return to_numpy_dtype(dtype)
    # torch.full's inference: bool -> bool, int -> int64, float -> float32 (the default float dtype)
    if isinstance(fill_value, (bool, np.bool_)):
        return np.dtype(np.bool_)
    if isinstance(fill_value, (int, np.integer)):
        return np.dtype(np.int64)
    return np.dtype(np.float32)


def full(size, fill_value, dtype=None) -> Tensor:
    """``gc.full(size, fill_value)`` (``torch.full``): dims may be symbolic, read from a tensor.

    >>> import graphc as gc
    >>> x = gc.input("x", ("batch", 28, 28))
    >>> gc.full((2, x.size(0), 16), 0.5).shape
    (2, 'batch', 16)
    """
    if not isinstance(size, (tuple, list)):
        raise shape_error("full", f"size must be a tuple or list of dims, got {type(size).__name__}")
    return _filled("full", _size_arg("full", tuple(size)), fill_value, _fill_dtype("full", fill_value, dtype))


def zeros(*size, dtype="float32") -> Tensor:
    """``gc.zeros(2, x.size(0), 16)`` or ``gc.zeros((2, x.size(0), 16))`` (``torch.zeros``).

    Static sizes give a Constant; a symbolic dim (``x.size(0)``, ``x.shape[0]``)
    is read from ``Shape(x)`` at run time and feeds ONNX ConstantOfShape.

    >>> import graphc as gc
    >>> x = gc.input("x", ("batch", 28, 28))
    >>> gc.zeros(2, x.size(0), 16).shape
    (2, 'batch', 16)
    """
    return _filled("zeros", _size_arg("zeros", size), 0, to_numpy_dtype(dtype))


def ones(*size, dtype="float32") -> Tensor:
    """``gc.ones(*size)`` (``torch.ones``): as :func:`zeros`, filled with ones."""
    return _filled("ones", _size_arg("ones", size), 1, to_numpy_dtype(dtype))


def _like(op: str, x: Tensor, fill_value, dtype) -> Tensor:
    if not isinstance(x, Tensor):
        raise shape_error(op, f"expected a Tensor, got {type(x).__name__}")
    if all(isinstance(d, int) for d in x.shape):
        return constant(np.full(x.shape, fill_value, dtype=dtype), dtype=dtype)
    value = ir.Tensor(np.full((1,), fill_value, dtype=dtype))  # symbolic or unknown dims: x's run-time shape
    return emit("ConstantOfShape", [emit("Shape", [x], shape=(x.ndim,), dtype=np.int64)], {"value": value},
                shape=x.shape, dtype=dtype)


def zeros_like(x: Tensor, dtype=None) -> Tensor:
    """``gc.zeros_like(x)``: zeros of x's shape (symbolic dims included) and dtype (or ``dtype``)."""
    return _like("zeros_like", x, 0, to_numpy_dtype(dtype) if dtype is not None else x.dtype)


def ones_like(x: Tensor, dtype=None) -> Tensor:
    """``gc.ones_like(x)``: ones of x's shape and dtype (or ``dtype``)."""
    return _like("ones_like", x, 1, to_numpy_dtype(dtype) if dtype is not None else x.dtype)


def full_like(x: Tensor, fill_value, dtype=None) -> Tensor:
    """``gc.full_like(x, v)``: ``v`` everywhere, x's shape; dtype x's unless given (as ``torch.full_like``)."""
    dtype = to_numpy_dtype(dtype) if dtype is not None else x.dtype if isinstance(x, Tensor) else None
    _fill_dtype("full_like", fill_value, dtype)
    return _like("full_like", x, fill_value, dtype)
