"""Tensor-level builder ops: one block per op (checks, shape rule, the ONNX it emits).

Gradients need no work here: each op emits ONNX ops that have rules in
``passes/autodiff/rules``.
"""

from __future__ import annotations

from collections import Counter
from itertools import zip_longest
from typing import NamedTuple

import numpy as np

from graphc.dtypes import is_floating, to_numpy_dtype
from graphc.errors import shape_error
from graphc.tensor import Dim, Tensor, as_tensor, constant, emit

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
    out.value.producer().metadata_props["graphc.stop_gradient"] = "1"
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


def clip(x: Tensor, min=None, max=None) -> Tensor:  # noqa: A002 (torch.clamp's names)
    """``gc.clip(x, min, max)`` (``torch.clamp``) (ONNX Clip; gradient passes inside the bounds)."""
    lo = constant(min, dtype=x.dtype) if min is not None else None
    hi = constant(max, dtype=x.dtype) if max is not None else None
    return emit("Clip", [x, lo, hi], shape=x.shape, dtype=x.dtype)
