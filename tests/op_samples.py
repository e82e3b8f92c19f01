"""The op table: one row per op configuration, used by ``tests/test_ops.py``.

A row (:class:`Sample`) says how to build a small graph from symbolic inputs
(``build``, which returns one float Tensor), how to draw each input
(:class:`In`: concrete shape, declared shape that may be symbolic, dtype and a
draw function), and an independent reference (``ref``: numpy, or
``torch.nn.functional`` in float64 for the losses) computing the same output
from the drawn numpy arrays.

Draws keep finite differences honest: values away from 0 for Log/Div/Sqrt,
away from kinks and ties for Relu/Abs/Clip/Max/Min, valid class indices for
targets. Ops that no builder emits are built with ``graphc.tensor.emit``.

Adding an op means adding a row here; ``test_ops.py`` fails when an op with a
registered gradient rule appears in no row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

import graphc as gc
import graphc.nn.functional as F
from graphc.tensor import emit

Draw = Callable[[np.random.Generator, tuple], np.ndarray]


# ---- draws --------------------------------------------------------------
def normal(scale: float = 1.0) -> Draw:
    return lambda rng, shape: rng.normal(0.0, scale, shape)


def uniform(lo: float, hi: float) -> Draw:
    return lambda rng, shape: rng.uniform(lo, hi, shape)


def away_from_zero(lo: float = 0.3, hi: float = 2.0) -> Draw:
    """Magnitudes in [lo, hi], random signs: for Div, Reciprocal, Abs, Relu."""
    return lambda rng, shape: rng.choice([-1.0, 1.0], shape) * rng.uniform(lo, hi, shape)


def lattice(spacing: float = 0.5, offset: float = 0.0, jitter: float = 0.1) -> Draw:
    """Points near ``k * spacing + offset``: two lattices with different offsets never come closer
    than ``|offset difference| - 2 * jitter`` (no ties or kinks between two inputs)."""
    return lambda rng, shape: (rng.integers(-4, 5, shape) * spacing + offset
                               + rng.uniform(-jitter, jitter, shape))


def distinct(spacing: float = 0.25) -> Draw:
    """Pairwise distinct values (at least ``spacing / 2`` apart): no ties for ReduceMax/ReduceMin."""
    def draw(rng, shape):
        n = int(np.prod(shape, dtype=np.int64))
        values = (rng.permutation(n) - n / 2) * spacing + rng.uniform(-spacing / 4, spacing / 4, n)
        return values.reshape(shape)
    return draw


def avoiding(points, margin: float = 0.1, base: Draw = normal()) -> Draw:
    """``base`` draws, redrawn wherever a value lies within ``margin`` of one of ``points``."""
    def draw(rng, shape):
        values = np.asarray(base(rng, shape), dtype=np.float64)
        for _ in range(100):
            bad = np.zeros(values.shape, dtype=bool)
            for p in points:
                bad |= np.abs(values - p) < margin
            if not bad.any():
                return values
            values = np.where(bad, base(rng, shape), values)
        raise RuntimeError("could not draw values away from the given points")
    return draw


def classes(n_classes: int, ignore: int | None = None, ignored_at=()) -> Draw:
    """Valid class indices in [0, n_classes); ``ignore`` is written at the flat positions ``ignored_at``."""
    def draw(rng, shape):
        values = rng.integers(0, n_classes, shape)
        if ignore is not None:
            flat = values.reshape(-1)
            flat[list(ignored_at)] = ignore
        return values
    return draw


def fixed(values) -> Draw:
    return lambda rng, shape: np.asarray(values).reshape(shape)


def booleans() -> Draw:
    return lambda rng, shape: rng.random(shape) < 0.5


def simplex(axis: int = 1) -> Draw:
    """Class probabilities along ``axis`` (a softmax of normal draws): probability targets."""
    return lambda rng, shape: _np_softmax(rng.normal(0.0, 1.0, shape), axis)


# ---- the row type -------------------------------------------------------
@dataclass(frozen=True)
class In:
    """One graph input: concrete shape (what is fed), declared shape (may hold symbolic dims)."""

    name: str
    shape: tuple
    draw: Draw = normal()
    dtype: str = "float64"
    decl: tuple | None = None
    diff: bool | None = None  # None: differentiate when floating point

    @property
    def declared(self) -> tuple:
        return self.shape if self.decl is None else self.decl

    @property
    def differentiable(self) -> bool:
        return np.issubdtype(np.dtype(self.dtype), np.floating) if self.diff is None else self.diff


@dataclass(frozen=True)
class Sample:
    """One row of the op table."""

    id: str
    build: Callable[..., gc.Tensor]
    inputs: tuple[In, ...]
    ref: Callable[..., np.ndarray]
    ops: tuple[str, ...] = ()  # op types the forward graph must contain
    grad_gap: str | None = None  # a known gradient gap: regex the NotImplementedError must match
    ort_float64: bool = True  # False: ONNX Runtime's CPU kernels lack double; ORT runs a float32 build
    xfail: str | None = None  # a known bug: the tests named in xfail_in are strict xfails with this reason
    xfail_in: tuple[str, ...] = ("forward", "gradient", "exports")
    fd_eps: float = 1e-6
    rtol: float = 1e-5
    atol: float = 1e-7
    note: str = field(default="", compare=False)


SAMPLES: list[Sample] = []


def row(id, build, inputs, ref, ops=(), **kw) -> None:
    SAMPLES.append(Sample(id, build, tuple(inputs), ref, tuple(ops), **kw))


# ---- numpy / torch references -------------------------------------------
def _np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _np_log_softmax(x, axis):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _np_slice(x, key):
    return np.asarray(x[key])


@dataclass(frozen=True)
class Arg:
    """A keyword argument of a torch reference taken from input number ``index``."""

    index: int


def torch_loss(name: str, *tensor_args: int, **kwargs):
    """A reference calling ``torch.nn.functional.<name>`` in float64.

    ``tensor_args`` are the indices of the inputs passed positionally; a
    keyword whose value is an :class:`Arg` gets that input as a tensor.
    """
    def ref(*arrays):
        import pytest
        torch = pytest.importorskip("torch")
        fn = getattr(torch.nn.functional, name)
        positional = [torch.from_numpy(np.ascontiguousarray(arrays[i])) for i in tensor_args]
        keywords = {k: torch.from_numpy(np.ascontiguousarray(arrays[v.index])) if isinstance(v, Arg) else v
                    for k, v in kwargs.items()}
        return fn(*positional, **keywords).numpy()
    return ref


def torch_ref(fn):
    """A reference ``fn(torch.nn.functional, *tensors)`` evaluated by torch in float64."""
    def ref(*arrays):
        import pytest
        torch = pytest.importorskip("torch")
        return fn(torch.nn.functional, *[torch.from_numpy(np.ascontiguousarray(a)) for a in arrays]).numpy()
    return ref


# ---- element-wise binary ops with broadcasting ---------------------------
for op_type, fn, npfn in (("Add", lambda a, b: a + b, np.add), ("Sub", lambda a, b: a - b, np.subtract),
                          ("Mul", lambda a, b: a * b, np.multiply)):
    name = op_type.lower()
    row(f"{name}_same", fn, [In("a", (2, 3)), In("b", (2, 3))], npfn, [op_type])
    row(f"{name}_scalar_tensor", fn, [In("a", (2, 3)), In("s", ())], npfn, [op_type])
    row(f"{name}_row_vector", fn, [In("a", (2, 3)), In("b", (3,))], npfn, [op_type])
    row(f"{name}_leading_dims", fn, [In("a", (4, 2, 3)), In("b", (2, 1))], npfn, [op_type])
    row(f"{name}_both_broadcast", fn, [In("a", (2, 1, 3)), In("b", (4, 1))], npfn, [op_type])
    row(f"{name}_symbolic_batch", fn, [In("a", (2, 3), decl=("batch", 3)), In("b", (1, 3))], npfn, [op_type])
    row(f"{name}_python_number_right", lambda a, fn=fn: fn(a, 1.5), [In("a", (2, 3))],
        lambda a, npfn=npfn: npfn(a, 1.5), [op_type])
    row(f"{name}_python_number_left", lambda a, fn=fn: fn(-2.0, a), [In("a", (3,))],
        lambda a, npfn=npfn: npfn(-2.0, a), [op_type])

row("mul_self", lambda a: a * a, [In("a", (2, 3))], lambda a: a * a, ["Mul"])
row("mul_int_input_promotes", lambda a, k: a * k, [In("a", (2, 3)), In("k", (2, 3), uniform(-3, 3), "int64")],
    lambda a, k: a * k, ["Mul", "Cast"],
    note="the int64 input is cast to float64 (Cast on a non-differentiable path)")
row("div_same", lambda a, b: a / b, [In("a", (2, 3)), In("b", (2, 3), away_from_zero())], np.divide, ["Div"])
row("div_row_vector", lambda a, b: a / b, [In("a", (2, 3)), In("b", (3,), away_from_zero())], np.divide, ["Div"])
row("div_scalar_tensor", lambda a, b: a / b, [In("a", (2, 3)), In("s", (), away_from_zero())], np.divide,
    ["Div"])
row("div_leading_dims", lambda a, b: a / b, [In("a", (2, 1), away_from_zero()), In("b", (3, 2, 4), away_from_zero())],
    np.divide, ["Div"])
row("div_python_number_left", lambda a: 1.0 / a, [In("a", (2, 3), away_from_zero())], lambda a: 1.0 / a, ["Div"])
row("div_python_number_right", lambda a: a / 4.0, [In("a", (2, 3))], lambda a: a / 4.0, ["Div"])
row("pow_python_exponent", lambda a: a ** 3.0, [In("a", (2, 3))], lambda a: a ** 3.0, ["Pow"])
row("pow_fractional_exponent", lambda a: a ** 2.5, [In("a", (2, 3), uniform(0.5, 2.0))], lambda a: a ** 2.5,
    ["Pow"])
row("pow_tensor_exponent", lambda a, b: a ** b, [In("a", (2, 3), uniform(0.5, 2.0)), In("b", (3,))],
    np.power, ["Pow"])
row("pow_python_base", lambda a: 2.0 ** a, [In("a", (2, 3))], lambda a: 2.0 ** a, ["Pow"])
row("pow_int_exponent_input", lambda a, k: a ** k, [In("a", (2, 3)), In("k", (2, 3), uniform(0, 4), "int64")],
    lambda a, k: a ** k.astype(np.float64), ["Pow", "Cast"])

# ---- element-wise unary ops ---------------------------------------------
row("neg", lambda a: -a, [In("a", (2, 3))], np.negative, ["Neg"])
row("abs", lambda a: abs(a), [In("a", (2, 3), away_from_zero(0.1))], np.abs, ["Abs"])
row("abs_method", lambda a: a.abs(), [In("a", (4,), away_from_zero(0.1))], np.abs, ["Abs"])
row("exp", lambda a: a.exp(), [In("a", (2, 3))], np.exp, ["Exp"])
row("log", lambda a: a.log(), [In("a", (2, 3), uniform(0.3, 3.0))], np.log, ["Log"])
row("sqrt", lambda a: a.sqrt(), [In("a", (2, 3), uniform(0.3, 3.0))], np.sqrt, ["Sqrt"])
row("reciprocal", lambda a: emit("Reciprocal", [a], shape=a.shape, dtype=a.dtype),
    [In("a", (2, 3), away_from_zero())], np.reciprocal, ["Reciprocal"])
row("relu", F.relu, [In("a", (3, 4), away_from_zero(0.1))], lambda a: np.maximum(a, 0.0), ["Relu"])
row("relu_method", lambda a: a.relu(), [In("a", (5,), away_from_zero(0.1))], lambda a: np.maximum(a, 0.0),
    ["Relu"])
row("sigmoid", F.sigmoid, [In("a", (2, 3), normal(2.0))], lambda a: 1.0 / (1.0 + np.exp(-a)), ["Sigmoid"])
row("tanh", F.tanh, [In("a", (2, 3))], np.tanh, ["Tanh"])
row("identity", lambda a: emit("Identity", [a], shape=a.shape, dtype=a.dtype) * 1.0, [In("a", (2, 3))],
    lambda a: a, ["Identity"])
row("cast_float32_round_trip", lambda a: a.astype("float32").astype("float64") * 3.0, [In("a", (2, 3))],
    lambda a: a.astype(np.float32).astype(np.float64) * 3.0, ["Cast"],
    fd_eps=1e-2, rtol=1e-4, atol=1e-5,
    note="float32 rounding: a large step keeps the rounding error small against it")
row("clip_both", lambda a: gc.clip(a, -0.5, 0.5), [In("a", (3, 4), avoiding([-0.5, 0.5], 0.05))],
    lambda a: np.clip(a, -0.5, 0.5), ["Clip"])
row("clip_min_only", lambda a: gc.clip(a, min=0.2), [In("a", (3, 4), avoiding([0.2], 0.05))],
    lambda a: np.maximum(a, 0.2), ["Clip"])
row("clip_max_only", lambda a: gc.clip(a, max=-0.1), [In("a", (3, 4), avoiding([-0.1], 0.05))],
    lambda a: np.minimum(a, -0.1), ["Clip"])
row("where_on_input", lambda a: gc.where(a > 0, a, a * a), [In("a", (3, 4), away_from_zero(0.1))],
    lambda a: np.where(a > 0, a, a * a), ["Where", "Greater"])
row("where_broadcast", lambda c, a, b: gc.where(c, a, b),
    [In("c", (2, 3), booleans(), "bool"), In("a", (3,)), In("b", (2, 1))], np.where, ["Where"])
row("where_python_number", lambda c, a: gc.where(c, a, 0.0), [In("c", (2, 3), booleans(), "bool"), In("a", (2, 3))],
    lambda c, a: np.where(c, a, 0.0), ["Where"])
row("max_two_broadcast", lambda a, b: emit("Max", [a, b], shape=(2, 3), dtype=a.dtype),
    [In("a", (2, 3), lattice(0.5, 0.0)), In("b", (3,), lattice(0.5, 0.25))], np.maximum, ["Max"])
row("max_three", lambda a, b, c: emit("Max", [a, b, c], shape=(2, 3), dtype=a.dtype),
    [In("a", (2, 3), lattice(0.6, 0.0)), In("b", (2, 3), lattice(0.6, 0.2)), In("c", (2, 1), lattice(0.6, 0.4))],
    lambda a, b, c: np.maximum(np.maximum(a, b), c), ["Max"])
row("min_two_broadcast", lambda a, b: emit("Min", [a, b], shape=(4, 2, 3), dtype=a.dtype),
    [In("a", (2, 3), lattice(0.5, 0.0)), In("b", (4, 1, 3), lattice(0.5, 0.25))], np.minimum, ["Min"])
row("min_single", lambda a: emit("Min", [a], shape=a.shape, dtype=a.dtype) * 2.0, [In("a", (2, 3))],
    lambda a: a * 2.0, ["Min"])
row("sum_variadic_broadcast", lambda a, b, c: emit("Sum", [a, b, c], shape=(2, 3), dtype=a.dtype),
    [In("a", (2, 3)), In("b", (3,)), In("c", (2, 1))], lambda a, b, c: a + b + c, ["Sum"])
row("sum_variadic_repeated", lambda a: emit("Sum", [a, a, a], shape=a.shape, dtype=a.dtype), [In("a", (2, 3))],
    lambda a: 3 * a, ["Sum"])
row("expand_leading", lambda a: emit("Expand", [a, gc.constant(np.array([2, 3, 4], np.int64))],
                                     shape=(2, 3, 4), dtype=a.dtype),
    [In("a", (3, 1))], lambda a: np.broadcast_to(a, (2, 3, 4)), ["Expand"])
row("expand_size_one_dims", lambda a: emit("Expand", [a, gc.constant(np.array([1, 3], np.int64))],
                                           shape=(2, 3), dtype=a.dtype),
    [In("a", (2, 1))], lambda a: np.broadcast_to(a, (2, 3)), ["Expand"])
row("expand_method", lambda a: a.expand(2, -1, 4), [In("a", (3, 1))], lambda a: np.broadcast_to(a, (2, 3, 4)),
    ["Expand"])
row("expand_method_symbolic", lambda a: a.expand("batch", 3), [In("a", (2, 1), decl=("batch", 1))],
    lambda a: np.broadcast_to(a, (2, 3)), ["Expand"])
row("expand_symbolic_input", lambda a: emit("Expand", [a, gc.constant(np.array([4, 1, 1], np.int64))],
                                            shape=(4, "batch", 3), dtype=a.dtype),
    [In("a", (2, 3), decl=("batch", 3))], lambda a: np.broadcast_to(a, (4, 2, 3)), ["Expand"])

# ---- reductions ---------------------------------------------------------
for op_type, method, npfn in (("ReduceSum", "sum", np.sum), ("ReduceMean", "mean", np.mean)):
    row(f"{method}_all", lambda a, m=method: getattr(a, m)(), [In("a", (2, 3, 4))], npfn, [op_type])
    row(f"{method}_dim1", lambda a, m=method: getattr(a, m)(1), [In("a", (2, 3, 4))],
        lambda a, f=npfn: f(a, axis=1), [op_type])
    row(f"{method}_dim_negative_keepdim", lambda a, m=method: getattr(a, m)(-1, keepdim=True),
        [In("a", (2, 3, 4))], lambda a, f=npfn: f(a, axis=-1, keepdims=True), [op_type])
    row(f"{method}_two_dims_keepdim", lambda a, m=method: getattr(a, m)((0, 2), keepdim=True),
        [In("a", (2, 3, 4))], lambda a, f=npfn: f(a, axis=(0, 2), keepdims=True), [op_type])
    row(f"{method}_two_dims", lambda a, m=method: getattr(a, m)((2, 0)), [In("a", (2, 3, 4))],
        lambda a, f=npfn: f(a, axis=(0, 2)), [op_type])
    row(f"{method}_symbolic_dim", lambda a, m=method: getattr(a, m)(0), [In("a", (3, 4), decl=("batch", 4))],
        lambda a, f=npfn: f(a, axis=0), [op_type])
    row(f"{method}_all_symbolic", lambda a, m=method: getattr(a, m)(), [In("a", (3, 2), decl=("batch", 2))],
        npfn, [op_type])

for op_type, method, npfn in (("ReduceMax", "max", np.max), ("ReduceMin", "min", np.min)):
    row(f"{method}_all", lambda a, m=method: getattr(a, m)(), [In("a", (2, 3, 4), distinct())], npfn, [op_type])
    row(f"{method}_dim1_values", lambda a, m=method: getattr(a, m)(1).values, [In("a", (2, 3, 4), distinct())],
        lambda a, f=npfn: f(a, axis=1), [op_type])
    row(f"{method}_dim_keepdim_values", lambda a, m=method: getattr(a, m)(-1, keepdim=True)[0],
        [In("a", (3, 4), distinct())], lambda a, f=npfn: f(a, axis=-1, keepdims=True), [op_type])
    row(f"{method}_symbolic_dim", lambda a, m=method: getattr(a, m)(0).values,
        [In("a", (3, 4), distinct(), decl=("batch", 4))], lambda a, f=npfn: f(a, axis=0), [op_type])
    row(f"{method}_two_axes_emitted",
        lambda a, op=op_type: emit(op, [a, gc.constant(np.array([0, 2], np.int64))], {"keepdims": 0},
                                   shape=(3,), dtype=a.dtype),
        [In("a", (2, 3, 4), distinct())], lambda a, f=npfn: f(a, axis=(0, 2)), [op_type])

# ---- matrix products ----------------------------------------------------
for name, sa, sb in (("2d", (2, 3), (3, 4)), ("batched", (2, 2, 3), (2, 3, 4)),
                     ("broadcast_batch_right", (2, 2, 3), (3, 4)), ("broadcast_batch_left", (3, 4), (2, 4, 2)),
                     ("broadcast_batch_both", (2, 1, 2, 3), (3, 3, 4)), ("1d_2d", (3,), (3, 4)),
                     ("2d_1d", (2, 3), (3,)), ("1d_1d", (3,), (3,)), ("1d_3d", (3,), (2, 3, 4)),
                     ("3d_1d", (2, 4, 3), (3,))):
    row(f"matmul_{name}", lambda a, b: a @ b, [In("a", sa), In("b", sb)], np.matmul, ["MatMul"])
row("matmul_symbolic_batch", lambda a, b: a @ b, [In("a", (3, 4), decl=("batch", 4)), In("b", (4, 2))],
    np.matmul, ["MatMul"])
row("matmul_symbolic_batch_3d", lambda a, b: a @ b, [In("a", (2, 3, 4), decl=("batch", 3, 4)), In("b", (4, 2))],
    np.matmul, ["MatMul"])
row("linear_bias", F.linear, [In("x", (2, 3)), In("w", (4, 3)), In("b", (4,))],
    lambda x, w, b: x @ w.T + b, ["Gemm"])
row("linear_no_bias", F.linear, [In("x", (2, 3)), In("w", (4, 3))], lambda x, w: x @ w.T, ["Gemm"])
row("linear_symbolic_batch", F.linear, [In("x", (5, 3), decl=("batch", 3)), In("w", (2, 3)), In("b", (2,))],
    lambda x, w, b: x @ w.T + b, ["Gemm"])
row("linear_3d_input", F.linear, [In("x", (2, 5, 3)), In("w", (4, 3)), In("b", (4,))],
    lambda x, w, b: x @ w.T + b, ["MatMul", "Transpose", "Add"])


def _gemm(ta: int, tb: int, alpha: float = 1.0, beta: float = 1.0, with_c: bool = True):
    attrs = {"transA": ta, "transB": tb, "alpha": alpha, "beta": beta}

    def build(a, b, c=None):
        m = a.shape[1] if ta else a.shape[0]
        n = b.shape[0] if tb else b.shape[1]
        return emit("Gemm", [a, b] + ([c] if c is not None else []), attrs, shape=(m, n), dtype=a.dtype)

    def ref(a, b, c=None):
        out = alpha * ((a.T if ta else a) @ (b.T if tb else b))
        return out if c is None else out + beta * c
    return build, ref


for ta in (0, 1):
    for tb in (0, 1):
        build, ref = _gemm(ta, tb)
        row(f"gemm_transA{ta}_transB{tb}", build,
            [In("a", (3, 2) if ta else (2, 3)), In("b", (4, 3) if tb else (3, 4)), In("c", (2, 4))], ref, ["Gemm"])
        build, ref = _gemm(ta, tb, alpha=0.5, beta=-2.0)
        row(f"gemm_transA{ta}_transB{tb}_alpha_beta_row_c", build,
            [In("a", (3, 2) if ta else (2, 3)), In("b", (4, 3) if tb else (3, 4)), In("c", (4,))], ref, ["Gemm"])
build, ref = _gemm(0, 0, alpha=1.5)
row("gemm_alpha_no_c", build, [In("a", (2, 3)), In("b", (3, 4))], ref, ["Gemm"])
build, ref = _gemm(1, 0, beta=0.25)
row("gemm_column_c", build, [In("a", (3, 2)), In("b", (3, 4)), In("c", (2, 1))], ref, ["Gemm"])
build, ref = _gemm(0, 1, alpha=2.0, beta=3.0)
row("gemm_scalar_c", build, [In("a", (2, 3)), In("b", (4, 3)), In("c", ())], ref, ["Gemm"])

# ---- layout: transpose, reshape, squeeze, concat, slice, gather ------------
row("transpose_swap", lambda a: a.transpose(0, 2), [In("a", (2, 3, 4))], lambda a: a.transpose(2, 1, 0),
    ["Transpose"])
row("permute", lambda a: a.permute(2, 0, 1), [In("a", (2, 3, 4))], lambda a: a.transpose(2, 0, 1), ["Transpose"])
row("transpose_T", lambda a: a.T, [In("a", (2, 3))], lambda a: a.T, ["Transpose"])
row("transpose_symbolic", lambda a: a.transpose(0, 1), [In("a", (3, 2), decl=("batch", 2))], lambda a: a.T,
    ["Transpose"])
row("reshape_ints", lambda a: a.reshape(6, 4), [In("a", (2, 3, 4))], lambda a: a.reshape(6, 4), ["Reshape"])
row("reshape_minus_one", lambda a: a.reshape(-1), [In("a", (2, 3, 4))], lambda a: a.reshape(-1), ["Reshape"])
row("view_tuple", lambda a: a.view((4, -1, 2)), [In("a", (2, 3, 4))], lambda a: a.reshape(4, 3, 2), ["Reshape"])
row("view_symbolic", lambda a: a.view("batch", -1), [In("a", (2, 3, 4), decl=("batch", 3, 4))],
    lambda a: a.reshape(2, -1), ["Reshape"])
row("reshape_symbolic_moved", lambda a: a.reshape(3, "batch"), [In("a", (2, 3), decl=("batch", 3))],
    lambda a: a.reshape(3, 2), ["Reshape", "Shape"])
row("flatten_all", lambda a: a.flatten(), [In("a", (2, 3, 4))], lambda a: a.reshape(-1), ["Reshape"])
row("flatten_from_1", lambda a: a.flatten(1), [In("a", (2, 3, 4), decl=("batch", 3, 4))],
    lambda a: a.reshape(2, -1), ["Reshape"])
row("flatten_op_axis2", lambda a: emit("Flatten", [a], {"axis": 2}, shape=(6, 4), dtype=a.dtype),
    [In("a", (2, 3, 4))], lambda a: a.reshape(6, 4), ["Flatten"])
row("flatten_op_axis0", lambda a: emit("Flatten", [a], {"axis": 0}, shape=(1, 24), dtype=a.dtype),
    [In("a", (2, 3, 4))], lambda a: a.reshape(1, 24), ["Flatten"])
row("squeeze_all", lambda a: a.squeeze(), [In("a", (2, 1, 3, 1))], lambda a: a.squeeze(), ["Squeeze"])
row("squeeze_dim", lambda a: a.squeeze(1), [In("a", (2, 1, 3, 1))], lambda a: a.squeeze(1), ["Squeeze"])
row("unsqueeze_front", lambda a: a.unsqueeze(0), [In("a", (2, 3))], lambda a: a[None], ["Unsqueeze"])
row("unsqueeze_negative", lambda a: a.unsqueeze(-1), [In("a", (2, 3), decl=("batch", 3))], lambda a: a[..., None],
    ["Unsqueeze"])
row("index_none", lambda a: a[:, None], [In("a", (2, 3))], lambda a: a[:, None], ["Unsqueeze"])
row("concat_dim1", lambda a, b: gc.concat([a, b], 1), [In("a", (2, 3)), In("b", (2, 1))],
    lambda a, b: np.concatenate([a, b], 1), ["Concat"])
row("concat_three_dim0", lambda a, b, c: gc.concat([a, b, c], 0), [In("a", (2, 3)), In("b", (1, 3)), In("c", (3, 3))],
    lambda a, b, c: np.concatenate([a, b, c], 0), ["Concat"])
row("concat_negative_dim", lambda a, b: gc.concat([a, b], -1), [In("a", (2, 2, 1)), In("b", (2, 2, 3))],
    lambda a, b: np.concatenate([a, b], -1), ["Concat"])
row("concat_symbolic_other_dim", lambda a, b: gc.concat([a, b], 1),
    [In("a", (3, 2), decl=("batch", 2)), In("b", (3, 4), decl=("batch", 4))],
    lambda a, b: np.concatenate([a, b], 1), ["Concat"])
row("concat_symbolic_axis", lambda a, b: gc.concat([a, b], 0),
    [In("a", (3, 2), decl=("n", 2)), In("b", (2, 2), decl=("m", 2))],
    lambda a, b: np.concatenate([a, b], 0), ["Concat"])
row("concat_same_input_twice", lambda a: gc.concat([a, a * 2.0], 0), [In("a", (2, 3))],
    lambda a: np.concatenate([a, a * 2.0], 0), ["Concat"])
row("stack", lambda a, b: gc.stack([a, b], 1), [In("a", (2, 3)), In("b", (2, 3))],
    lambda a, b: np.stack([a, b], 1), ["Concat", "Unsqueeze"])
row("cat_alias", lambda a, b: gc.cat((a, b), dim=0), [In("a", (1, 3)), In("b", (2, 3))],
    lambda a, b: np.concatenate([a, b], 0), ["Concat"])

# ---- running sums and constants sized by symbolic dims -------------------
row("cumsum_dim1", lambda a: gc.cumsum(a, 1), [In("a", (2, 4, 3))], lambda a: np.cumsum(a, 1), ["CumSum"])
row("cumsum_method_negative_dim_symbolic", lambda a: a.cumsum(-1) * a,
    [In("a", (3, 5), decl=("batch", 5))], lambda a: np.cumsum(a, -1) * a, ["CumSum"])
row("cumsum_exclusive_reverse",
    lambda a: emit("CumSum", [a, gc.constant(np.int64(0))], {"exclusive": 1, "reverse": 1},
                   shape=a.shape, dtype=a.dtype),
    [In("a", (4, 2))], lambda a: np.flip(np.cumsum(np.flip(a, 0), 0), 0) - a, ["CumSum"])
row("cumsum_exclusive", lambda a: emit("CumSum", [a, gc.constant(np.int64(1))], {"exclusive": 1},
                                       shape=a.shape, dtype=a.dtype),
    [In("a", (2, 4))], lambda a: np.cumsum(a, 1) - a, ["CumSum"])
row("clamp_method_tensor_bounds", lambda a, lo, hi: a.clamp(lo, hi),
    [In("a", (3, 4), lattice(0.5, 0.0, 0.03)), In("lo", (4,), lattice(0.5, 0.15, 0.03)),
     In("hi", (3, 1), lattice(0.5, 0.3, 0.03))],
    lambda a, lo, hi: np.minimum(np.maximum(a, lo), hi), ["Max", "Min"])
row("clamp_min_method", lambda a: a.clamp_min(0.1), [In("a", (2, 3), avoiding([0.1], 0.05))],
    lambda a: np.maximum(a, 0.1), ["Clip"])
row("zeros_sized_by_batch", lambda a: gc.concat([a, gc.zeros((a.size(0), 2), dtype="float64")], 1),
    [In("a", (3, 2), decl=("batch", 2))], lambda a: np.concatenate([a, np.zeros((3, 2))], 1),
    ["ConstantOfShape", "Shape", "Concat"])
row("full_like_symbolic", lambda a: a * gc.full_like(a, 2.5) + gc.ones_like(a),
    [In("a", (3, 2), decl=("batch", 2))], lambda a: a * 2.5 + 1.0, ["ConstantOfShape"])

for name, key, shape, decl in (
        ("slice_range", np.s_[1:3], (4, 3), None),
        ("slice_int_negative", np.s_[:, -1], (2, 3, 4), None),
        ("slice_tail_negative", np.s_[:, -2:], (2, 5), None),
        ("slice_negative_both", np.s_[-3:-1, 1:], (4, 3), None),
        ("slice_ellipsis_int", np.s_[..., 1], (2, 3, 4), None),
        ("slice_int_first", np.s_[1], (3, 4), None),
        ("slice_int_minus_one", np.s_[-1], (3, 4), None),
        ("slice_out_of_range_stop", np.s_[1:100], (4, 2), None),
        ("slice_symbolic_inner", np.s_[:, 1:-1], (2, 5), ("batch", 5)),
        ("slice_on_symbolic_dim", np.s_[1:], (4, 2), ("batch", 2)),
        ("slice_on_symbolic_dim_negative", np.s_[-3:-1], (5, 2), ("batch", 2)),
        ("slice_int_on_symbolic_dim", np.s_[-1], (3, 2), ("batch", 2)),
        ("slice_rnn_last_step", np.s_[:, -1, :], (2, 4, 3), ("batch", "time", 3)),
):
    row(name, lambda a, key=key: a[key], [In("a", shape, decl=decl)], lambda a, key=key: _np_slice(a, key),
        ["Slice"])
row("slice_step_two", lambda a: a[:, ::2], [In("a", (2, 5))], lambda a: a[:, ::2], ["Slice"])
row("slice_steps_mixed", lambda a: a[1::3, -5:-1:2], [In("a", (7, 9))], lambda a: a[1::3, -5:-1:2], ["Slice"])
row("slice_step_on_symbolic_batch", lambda a: a[:, ::2, 1], [In("a", (2, 5, 3), decl=("batch", 5, 3))],
    lambda a: a[:, ::2, 1], ["Slice", "Squeeze"])


def _gather(axis: int, out_shape):
    def build(x, idx):
        return emit("Gather", [x, idx], {"axis": axis}, shape=out_shape, dtype=x.dtype)
    return build


row("gather_rows_repeated_negative", _gather(0, (5, 3)),
    [In("x", (4, 3)), In("idx", (5,), fixed([0, 2, 2, -1, 1]), "int64")], lambda x, i: x[i], ["Gather"])
row("gather_rows_2d_indices", _gather(0, (2, 2, 3)),
    [In("x", (4, 3)), In("idx", (2, 2), fixed([[3, 0], [3, 3]]), "int64")], lambda x, i: x[i], ["Gather"])
row("gather_symbolic_rows", _gather(0, (3, 2)),
    [In("x", (5, 2), decl=("vocab", 2)), In("idx", (3,), fixed([4, 0, 4]), "int64")], lambda x, i: x[i],
    ["Gather"])
row("gather_axis1", _gather(1, (2, 2)), [In("x", (2, 3)), In("idx", (2,), fixed([2, 0]), "int64")],
    lambda x, i: x[:, i], ["Gather"])

# ---- softmaxes ----------------------------------------------------------
row("softmax_last", F.softmax, [In("x", (2, 5))], lambda x: _np_softmax(x, -1), ["Softmax"])
row("softmax_dim0", lambda x: F.softmax(x, 0), [In("x", (3, 4))], lambda x: _np_softmax(x, 0), ["Softmax"])
row("softmax_3d_dim1", lambda x: F.softmax(x, 1), [In("x", (2, 3, 4))], lambda x: _np_softmax(x, 1), ["Softmax"])
row("log_softmax_last", F.log_softmax, [In("x", (2, 5))], lambda x: _np_log_softmax(x, -1), ["LogSoftmax"])
row("log_softmax_3d_dim1", lambda x: F.log_softmax(x, 1), [In("x", (2, 3, 4))], lambda x: _np_log_softmax(x, 1),
    ["LogSoftmax"])
row("log_softmax_dim0_symbolic", lambda x: F.log_softmax(x, 0), [In("x", (3, 2), decl=("batch", 2))],
    lambda x: _np_log_softmax(x, 0), ["LogSoftmax"])

# ---- losses (references: torch.nn.functional in float64) -------------------
_T = In("t", (4,), classes(3), "int64")
_T_IGNORED = In("t", (4,), classes(3, ignore=-100, ignored_at=[2]), "int64")
_W = In("w", (3,), uniform(0.5, 2.0), diff=False)  # class weights: no gradient (as in PyTorch)

for reduction in ("mean", "sum", "none"):
    row(f"nll_loss_{reduction}", lambda x, t, r=reduction: F.nll_loss(x, t, reduction=r),
        [In("x", (4, 3)), _T], torch_loss("nll_loss", 0, 1, reduction=reduction), ["NegativeLogLikelihoodLoss"])
    row(f"nll_loss_weight_ignored_{reduction}", lambda x, t, w, r=reduction: F.nll_loss(x, t, w, reduction=r),
        [In("x", (4, 3)), _T_IGNORED, _W],
        torch_loss("nll_loss", 0, 1, weight=Arg(2), reduction=reduction), ["NegativeLogLikelihoodLoss"])
    row(f"nll_loss_ignored_{reduction}", lambda x, t, r=reduction: F.nll_loss(x, t, reduction=r),
        [In("x", (4, 3)), _T_IGNORED], torch_loss("nll_loss", 0, 1, reduction=reduction),
        ["NegativeLogLikelihoodLoss"])
row("nll_loss_custom_ignore_index", lambda x, t: F.nll_loss(x, t, ignore_index=1),
    [In("x", (5, 3)), In("t", (5,), fixed([1, 0, 2, 1, 2]), "int64")],
    torch_loss("nll_loss", 0, 1, ignore_index=1), ["NegativeLogLikelihoodLoss"])
row("nll_loss_weight_mean", lambda x, t, w: F.nll_loss(x, t, w), [In("x", (4, 3)), _T, _W],
    torch_loss("nll_loss", 0, 1, weight=Arg(2)), ["NegativeLogLikelihoodLoss"])
row("nll_loss_spatial_none", lambda x, t: F.nll_loss(x, t, reduction="none"),
    [In("x", (2, 3, 4)), In("t", (2, 4), classes(3), "int64")],
    torch_loss("nll_loss", 0, 1, reduction="none"), ["NegativeLogLikelihoodLoss"])
row("nll_loss_spatial_weight_ignored_mean", lambda x, t, w: F.nll_loss(x, t, w),
    [In("x", (2, 3, 4)), In("t", (2, 4), classes(3, ignore=-100, ignored_at=[1, 6]), "int64"), _W],
    torch_loss("nll_loss", 0, 1, weight=Arg(2)), ["NegativeLogLikelihoodLoss"])
row("nll_loss_symbolic_batch", lambda x, t: F.nll_loss(x, t),
    [In("x", (4, 3), decl=("batch", 3)), In("t", (4,), classes(3), "int64", decl=("batch",))],
    torch_loss("nll_loss", 0, 1), ["NegativeLogLikelihoodLoss"])
row("nll_loss_int32_target", lambda x, t: F.nll_loss(x, t, reduction="sum"),
    [In("x", (4, 3)), In("t", (4,), classes(3), "int32")],
    lambda x, t: -x[np.arange(4), t].sum(), ["NegativeLogLikelihoodLoss", "Cast"])

row("cross_entropy_mean", F.cross_entropy, [In("x", (4, 3)), _T], torch_loss("cross_entropy", 0, 1),
    ["LogSoftmax", "NegativeLogLikelihoodLoss"])
row("cross_entropy_weight_ignored_sum", lambda x, t, w: F.cross_entropy(x, t, w, reduction="sum"),
    [In("x", (4, 3)), _T_IGNORED, _W], torch_loss("cross_entropy", 0, 1, weight=Arg(2), reduction="sum"),
    ["LogSoftmax", "NegativeLogLikelihoodLoss"])
row("cross_entropy_spatial", F.cross_entropy, [In("x", (2, 3, 4)), In("t", (2, 4), classes(3), "int64")],
    torch_loss("cross_entropy", 0, 1), ["LogSoftmax", "NegativeLogLikelihoodLoss"])
for reduction in ("mean", "sum", "none"):
    row(f"cross_entropy_label_smoothing_{reduction}",
        lambda x, t, r=reduction: F.cross_entropy(x, t, reduction=r, label_smoothing=0.1),
        [In("x", (4, 3)), _T_IGNORED],
        torch_loss("cross_entropy", 0, 1, reduction=reduction, label_smoothing=0.1),
        ["LogSoftmax", "NegativeLogLikelihoodLoss", "Where"])
row("cross_entropy_label_smoothing_weight_ignored",
    lambda x, t, w: F.cross_entropy(x, t, w, label_smoothing=0.2),
    [In("x", (4, 3)), _T_IGNORED, _W], torch_loss("cross_entropy", 0, 1, weight=Arg(2), label_smoothing=0.2),
    ["LogSoftmax", "NegativeLogLikelihoodLoss"])
for reduction in ("sum", "none"):
    row(f"cross_entropy_label_smoothing_weight_{reduction}",
        lambda x, t, w, r=reduction: F.cross_entropy(x, t, w, reduction=r, label_smoothing=0.2),
        [In("x", (2, 3, 2)), In("t", (2, 2), classes(3, ignore=-100, ignored_at=[3]), "int64"), _W],
        torch_loss("cross_entropy", 0, 1, weight=Arg(2), reduction=reduction, label_smoothing=0.2),
        ["LogSoftmax", "NegativeLogLikelihoodLoss"])
row("nll_loss_weight_gradient", lambda x, t, w: F.nll_loss(x, t, w, reduction="sum"),
    [In("x", (4, 3)), _T, In("w", (3,), uniform(0.5, 2.0))],
    torch_loss("nll_loss", 0, 1, weight=Arg(2), reduction="sum"), ["NegativeLogLikelihoodLoss"],
    grad_gap=r"class weights is not implemented")  # as PyTorch: no derivative for the class weights
row("cross_entropy_label_smoothing_no_ignored", lambda x, t: F.cross_entropy(x, t, label_smoothing=0.25),
    [In("x", (5, 4)), In("t", (5,), classes(4), "int64")],
    torch_loss("cross_entropy", 0, 1, label_smoothing=0.25), ["LogSoftmax", "NegativeLogLikelihoodLoss"])
for reduction in ("mean", "sum", "none"):
    row(f"cross_entropy_probabilities_{reduction}", lambda x, p, r=reduction: F.cross_entropy(x, p, reduction=r),
        [In("x", (4, 3)), In("p", (4, 3), simplex(1))],
        torch_loss("cross_entropy", 0, 1, reduction=reduction), ["LogSoftmax"])
row("cross_entropy_probabilities_weight", lambda x, p, w: F.cross_entropy(x, p, w),
    [In("x", (4, 3)), In("p", (4, 3), simplex(1)), _W], torch_loss("cross_entropy", 0, 1, weight=Arg(2)),
    ["LogSoftmax"])
row("cross_entropy_probabilities_spatial_weight", lambda x, p, w: F.cross_entropy(x, p, w),
    [In("x", (2, 3, 4)), In("p", (2, 3, 4), simplex(1)), _W], torch_loss("cross_entropy", 0, 1, weight=Arg(2)),
    ["LogSoftmax"])

for reduction in ("mean", "sum", "none"):
    row(f"mse_loss_{reduction}", lambda x, y, r=reduction: F.mse_loss(x, y, reduction=r),
        [In("x", (3, 4)), In("y", (3, 4))], torch_loss("mse_loss", 0, 1, reduction=reduction),
        ["Sub", "Mul"])
    row(f"l1_loss_{reduction}", lambda x, y, r=reduction: F.l1_loss(x, y, reduction=r),
        [In("x", (3, 4), lattice(0.5, 0.25)), In("y", (3, 4), lattice(0.5, 0.0))],
        torch_loss("l1_loss", 0, 1, reduction=reduction), ["Abs"])
    row(f"binary_cross_entropy_{reduction}", lambda p, y, r=reduction: F.binary_cross_entropy(p, y, reduction=r),
        [In("p", (3, 4), uniform(0.05, 0.95)), In("y", (3, 4), uniform(0.0, 1.0))],
        torch_loss("binary_cross_entropy", 0, 1, reduction=reduction), ["Log", "Clip"])
row("mse_loss_symbolic_batch", F.mse_loss, [In("x", (3, 2), decl=("batch", 2)), In("y", (3, 2), decl=("batch", 2))],
    torch_loss("mse_loss", 0, 1), ["ReduceMean"])
row("binary_cross_entropy_weight", lambda p, y, w: F.binary_cross_entropy(p, y, w),
    [In("p", (2, 3), uniform(0.05, 0.95)), In("y", (2, 3), fixed([[0.0, 1, 1], [1, 0, 0]])), In("w", (2, 3))],
    torch_loss("binary_cross_entropy", 0, 1, weight=Arg(2)), ["Log", "Clip"])
for reduction in ("mean", "none"):
    row(f"binary_cross_entropy_with_logits_{reduction}",
        lambda x, y, w, r=reduction: F.binary_cross_entropy_with_logits(x, y, reduction=r, pos_weight=w),
        [In("x", (3, 4), normal(3.0)), In("y", (3, 4), uniform(0.0, 1.0)), In("w", (4,), uniform(0.5, 2.0))],
        torch_loss("binary_cross_entropy_with_logits", 0, 1, reduction=reduction, pos_weight=Arg(2)),
        ["Where", "Exp", "Log"])
row("nll_loss_symbolic_classes", lambda x, t: F.nll_loss(x, t, reduction="sum"),
    [In("x", (4, 3), decl=("batch", "classes")), In("t", (4,), classes(3, ignore=-100, ignored_at=[0]), "int64",
                                                    decl=("batch",))],
    torch_loss("nll_loss", 0, 1, reduction="sum"), ["NegativeLogLikelihoodLoss"])
row("cross_entropy_symbolic_classes", F.cross_entropy,
    [In("x", (4, 3), decl=("batch", "classes")), In("t", (4,), classes(3), "int64", decl=("batch",))],
    torch_loss("cross_entropy", 0, 1), ["LogSoftmax", "NegativeLogLikelihoodLoss"])

# ---- compositions of the primitives above ----------------------------------
row("leaky_relu", lambda x: F.leaky_relu(x, 0.1), [In("x", (3, 4), away_from_zero(0.1))],
    torch_ref(lambda tf, x: tf.leaky_relu(x, 0.1)), ["Where"])
row("elu", F.elu, [In("x", (3, 4), away_from_zero(0.1))], torch_ref(lambda tf, x: tf.elu(x)), ["Where", "Exp"])
row("softplus", lambda x: F.softplus(x, beta=2.0, threshold=3.0), [In("x", (3, 4), avoiding([1.5], 0.1, normal(2.0)))],
    torch_ref(lambda tf, x: tf.softplus(x, beta=2.0, threshold=3.0)), ["Where", "Log"])
row("gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), [In("x", (3, 4))],
    torch_ref(lambda tf, x: tf.gelu(x, approximate="tanh")), ["Tanh"])
row("gelu_exact", F.gelu, [In("x", (3, 4))], torch_ref(lambda tf, x: tf.gelu(x)), ["Erf"], ort_float64=False)
row("layer_norm", lambda x, w, b: F.layer_norm(x, (4,), w, b), [In("x", (2, 3, 4)), In("w", (4,)), In("b", (4,))],
    torch_ref(lambda tf, x, w, b: tf.layer_norm(x, (4,), w, b)), ["ReduceMean", "Sqrt"])
row("layer_norm_two_dims", lambda x: F.layer_norm(x, (3, 4)), [In("x", (2, 3, 4))],
    torch_ref(lambda tf, x: tf.layer_norm(x, (3, 4))), ["ReduceMean"])
row("embedding", F.embedding, [In("i", (2, 3), fixed([[0, 4, 4], [2, 0, 1]]), "int64"), In("w", (5, 3))],
    torch_ref(lambda tf, i, w: tf.embedding(i, w)), ["Gather"])
_ZERO_ROW_1 = np.array([[1.0], [0.0], [1.0], [1.0]])
row("embedding_padding_idx", lambda i, w: F.embedding(i, w * gc.constant(_ZERO_ROW_1, dtype=w.dtype), padding_idx=1),
    [In("i", (4,), fixed([1, 3, 1, 0]), "int64"), In("w", (4, 2))],
    lambda i, w: np.where((i == 1)[:, None], 0.0, w[i]), ["Gather", "Where"],
    note="the padding row zeroed as PyTorch initialises it, so finite differences see no dependence on it "
         "either; that a stored non-zero padding row is returned as is yet gets no gradient (PyTorch's "
         "semantics, which finite differences cannot check) is tested against torch in test_layers_more.py")

# ---- spatial ops: ONNX Runtime's CPU Conv, ConvTranspose, AveragePool and Resize have no double kernels --
_CONV_X = In("x", (2, 2, 5, 5))
row("conv2d_bias_padding", lambda x, w, b: F.conv2d(x, w, b, padding=1),
    [_CONV_X, In("w", (3, 2, 3, 3)), In("b", (3,))],
    torch_ref(lambda tf, x, w, b: tf.conv2d(x, w, b, padding=1)), ["Conv"], ort_float64=False)
row("conv2d_stride_drops_last_row", lambda x, w: F.conv2d(x, w, stride=2),
    [In("x", (1, 2, 6, 6)), In("w", (2, 2, 3, 3))],
    torch_ref(lambda tf, x, w: tf.conv2d(x, w, stride=2)), ["Conv"], ort_float64=False)
row("conv2d_groups_fewer_out_channels", lambda x, w: F.conv2d(x, w, groups=2, stride=(1, 2)),
    [In("x", (1, 4, 4, 5)), In("w", (2, 2, 2, 3))],
    torch_ref(lambda tf, x, w: tf.conv2d(x, w, groups=2, stride=(1, 2))), ["Conv"], ort_float64=False)
row("conv2d_groups_dilation", lambda x, w, b: F.conv2d(x, w, b, padding=(2, 1), dilation=(2, 1), groups=2),
    [In("x", (1, 4, 5, 4)), In("w", (4, 2, 3, 2)), In("b", (4,))],
    torch_ref(lambda tf, x, w, b: tf.conv2d(x, w, b, padding=(2, 1), dilation=(2, 1), groups=2)), ["Conv"],
    ort_float64=False)
row("conv2d_symbolic_batch_same", lambda x, w: F.conv2d(x, w, padding="same"),
    [In("x", (2, 1, 4, 4), decl=("batch", 1, 4, 4)), In("w", (2, 1, 3, 3))],
    torch_ref(lambda tf, x, w: tf.conv2d(x, w, padding="same")), ["Conv"], ort_float64=False)
row("conv1d_stride_padding_bias", lambda x, w, b: F.conv1d(x, w, b, stride=2, padding=1),
    [In("x", (2, 2, 7)), In("w", (3, 2, 3)), In("b", (3,))],
    torch_ref(lambda tf, x, w, b: tf.conv1d(x, w, b, stride=2, padding=1)), ["Conv"], ort_float64=False,
    note="dW by patches + MatMul (3 taps, 3 out channels)")
row("conv1d_dilation_more_taps_than_out", lambda x, w: F.conv1d(x, w, dilation=2, stride=2),
    [In("x", (2, 2, 12)), In("w", (2, 2, 4))],
    torch_ref(lambda tf, x, w: tf.conv1d(x, w, dilation=2, stride=2)), ["Conv"], ort_float64=False,
    note="dW by the transposed-batch Conv (4 taps > 2 out channels); stride 2 leaves the last input unread")
row("conv1d_groups_same_symbolic_batch", lambda x, w: F.conv1d(x, w, groups=2, padding="same"),
    [In("x", (2, 4, 6), decl=("batch", 4, 6)), In("w", (4, 2, 2))],
    torch_ref(lambda tf, x, w: tf.conv1d(x, w, groups=2, padding="same")), ["Conv"], ort_float64=False)
row("conv_transpose2d_stride2_output_padding_bias",
    lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1),
    [In("x", (2, 2, 3, 3)), In("w", (2, 3, 3, 3)), In("b", (3,))],
    torch_ref(lambda tf, x, w, b: tf.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1)),
    ["ConvTranspose"], ort_float64=False, note="9 taps > 2 input channels: dW by the transposed-batch Conv")
row("conv_transpose2d_groups_dilation_rect",
    lambda x, w: F.conv_transpose2d(x, w, stride=(2, 1), padding=(2, 1), output_padding=(1, 0), groups=2,
                                    dilation=(2, 3)),
    [In("x", (1, 4, 3, 4)), In("w", (4, 2, 3, 2))],
    torch_ref(lambda tf, x, w: tf.conv_transpose2d(x, w, stride=(2, 1), padding=(2, 1), output_padding=(1, 0),
                                                    groups=2, dilation=(2, 3))),
    ["ConvTranspose"], ort_float64=False, note="grouped: dW by patches + MatMul")
row("conv_transpose2d_output_padding_past_the_end",
    lambda x, w: F.conv_transpose2d(x, w, stride=3, output_padding=2),
    [In("x", (1, 2, 2, 3), decl=("batch", 2, 2, 3)), In("w", (2, 1, 2, 2))],
    torch_ref(lambda tf, x, w: tf.conv_transpose2d(x, w, stride=3, output_padding=2)), ["ConvTranspose"],
    ort_float64=False, note="the last output rows/cols are beyond every input's reach: the rule crops them")
row("conv_transpose2d_stride_equals_kernel_bias", lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2),
    [In("x", (2, 3, 2, 3)), In("w", (3, 4, 2, 2)), In("b", (4,))],
    torch_ref(lambda tf, x, w, b: tf.conv_transpose2d(x, w, b, stride=2)), ["ConvTranspose"],
    ort_float64=False, note="an UNet decoder's 2x upsampling; 4 taps > 3 channels: transposed-batch dW")
row("interpolate_nearest_scale2_symbolic_batch", lambda x: F.interpolate(x, scale_factor=2),
    [In("x", (2, 2, 2, 3), decl=("batch", 2, 2, 3))],
    torch_ref(lambda tf, x: tf.interpolate(x, scale_factor=2)), ["Resize"], ort_float64=False,
    note="integer repeats: the gradient is a Reshape + ReduceSum")
row("interpolate_nearest_size_uneven", lambda x: F.interpolate(x, size=(5, 2)), [In("x", (1, 2, 3, 4))],
    torch_ref(lambda tf, x: tf.interpolate(x, size=(5, 2))), ["Resize"], ort_float64=False,
    note="up along H, down along W: the gradient contracts with an interpolation matrix per axis")
row("interpolate_nearest_exact", lambda x: F.interpolate(x, scale_factor=(1.5, 0.5), mode="nearest-exact"),
    [In("x", (1, 1, 4, 6))],
    torch_ref(lambda tf, x: tf.interpolate(x, scale_factor=(1.5, 0.5), mode="nearest-exact")), ["Resize"],
    ort_float64=False)
row("interpolate_bilinear_scale2", lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"),
    [In("x", (2, 2, 3, 3))],
    torch_ref(lambda tf, x: tf.interpolate(x, scale_factor=2, mode="bilinear")), ["Resize"], ort_float64=False)
row("interpolate_bilinear_align_corners_size", lambda x: F.interpolate(x, size=(4, 2), mode="bilinear",
                                                                       align_corners=True),
    [In("x", (1, 2, 3, 5))],
    torch_ref(lambda tf, x: tf.interpolate(x, size=(4, 2), mode="bilinear", align_corners=True)), ["Resize"],
    ort_float64=False)
row("interpolate_linear_downsample", lambda x: F.interpolate(x, size=3, mode="linear"), [In("x", (2, 2, 7))],
    torch_ref(lambda tf, x: tf.interpolate(x, size=3, mode="linear")), ["Resize"], ort_float64=False)
row("interpolate_bilinear_align_corners_downsample_scales",
    lambda x: F.interpolate(x, scale_factor=(0.5, 0.75), mode="bilinear", align_corners=True),
    [In("x", (1, 2, 6, 4))],
    torch_ref(lambda tf, x: tf.interpolate(x, scale_factor=(0.5, 0.75), mode="bilinear", align_corners=True)),
    ["Resize"], ort_float64=False,
    note="Resize by scales, align_corners, down: in * scale is whole here; where it is fractional onnx's "
         "reference evaluator maps by the fractional length (onnx/onnx#2462) and disagrees with ONNX Runtime "
         "and torch, so that case is checked against torch on ONNX Runtime in test_layers_more.py")
row("max_pool2d", lambda x: F.max_pool2d(x, 2), [In("x", (2, 2, 4, 4), distinct(0.1))],
    torch_ref(lambda tf, x: tf.max_pool2d(x, 2)), ["MaxPool"])
row("max_pool2d_overlapping_padded", lambda x: F.max_pool2d(x, 3, stride=2, padding=1),
    [In("x", (1, 2, 5, 5), distinct(0.1))],
    torch_ref(lambda tf, x: tf.max_pool2d(x, 3, stride=2, padding=1)), ["MaxPool"])
row("max_pool2d_ceil_mode", lambda x: F.max_pool2d(x, 2, ceil_mode=True), [In("x", (1, 1, 5, 5), distinct(0.1))],
    torch_ref(lambda tf, x: tf.max_pool2d(x, 2, ceil_mode=True)), ["MaxPool"])
row("avg_pool2d", lambda x: F.avg_pool2d(x, 2), [In("x", (2, 2, 4, 4))],
    torch_ref(lambda tf, x: tf.avg_pool2d(x, 2)), ["AveragePool"], ort_float64=False)
row("avg_pool2d_padded_exclude_pad", lambda x: F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False),
    [In("x", (1, 2, 5, 5))],
    torch_ref(lambda tf, x: tf.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)), ["AveragePool"],
    ort_float64=False)
row("avg_pool2d_padded_ceil_mode", lambda x: F.avg_pool2d(x, 2, padding=1, ceil_mode=True),
    [In("x", (1, 1, 5, 5))],
    torch_ref(lambda tf, x: tf.avg_pool2d(x, 2, padding=1, ceil_mode=True)), ["AveragePool"], ort_float64=False,
    xfail="graphc declares PyTorch's (and ONNX Runtime's) 3x3 output, ONNX shape inference says 4x4 "
          "(a last window starting in the padding), so check_model(full_check=True) rejects the model",
    xfail_in=("forward", "exports"))
row("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, 1), [In("x", (2, 3, 2, 2))],
    torch_ref(lambda tf, x: tf.adaptive_avg_pool2d(x, 1)), ["ReduceMean"])
_STATS = (In("mean", (3,), diff=False), In("var", (3,), uniform(0.5, 2.0), diff=False))
row("batch_norm_eval", lambda x, m, v, w, b: F.batch_norm(x, m, v, w, b),
    [In("x", (2, 3, 2, 2)), *_STATS, In("w", (3,)), In("b", (3,))],
    torch_ref(lambda tf, x, m, v, w, b: tf.batch_norm(x, m, v, w, b)), ["BatchNormalization"],
    note="the running statistics are constants of the model: no gradient, as the rule says")
row("batch_norm_eval_no_affine", lambda x, m, v: F.batch_norm(x, m, v), [In("x", (2, 3, 4)), *_STATS],
    torch_ref(lambda tf, x, m, v: tf.batch_norm(x, m, v)), ["BatchNormalization"])
row("batch_norm_training", lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True)[0],
    [In("x", (4, 3, 2, 2)), In("w", (3,)), In("b", (3,))],
    torch_ref(lambda tf, x, w, b: tf.batch_norm(x, None, None, w, b, training=True)), ["BatchNormalization"],
    note="training_mode=1: the closed-form rule of rules/batch_norm_training.py")
row("batch_norm_training_with_running_stats", lambda x, m, v: F.batch_norm(x, m, v, training=True)[0],
    [In("x", (4, 3, 5)), *_STATS],
    torch_ref(lambda tf, x, m, v: tf.batch_norm(x, m.clone(), v.clone(), training=True)),
    ["BatchNormalization"])
row("batch_norm_training_symbolic_dims", lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True)[0],
    [In("x", (3, 2, 3, 2), decl=("batch", 2, "h", 2)), In("w", (2,)), In("b", (2,))],
    torch_ref(lambda tf, x, w, b: tf.batch_norm(x, None, None, w, b, training=True)), ["BatchNormalization"],
    note="N per channel read at run time (Size(x) / Size(scale)) in the closed-form rule")

# ---- single ONNX ops that imported models carry (rules in activations/normalization/gather/layout/...) ----
def _op(op_type, shape, attrs=None, extra=(), num_outputs=1, extra_outputs=()):
    """A builder emitting one ``op_type`` node on the row's inputs plus constant ``extra`` inputs."""
    def build(*tensors):
        consts = [e if not isinstance(e, np.ndarray) else
                  gc.constant(e, dtype=tensors[0].dtype if e.dtype.kind == "f" else None) for e in extra]
        out = emit(op_type, [*tensors, *consts], attrs, shape=shape, dtype=tensors[0].dtype,
                   num_outputs=num_outputs, extra_outputs=extra_outputs)
        return out[0] if num_outputs > 1 else out
    return build


def _np_gelu(x, tanh=False):
    if tanh:
        return 0.5 * x * (1 + np.tanh(_F32(np.sqrt(2 / np.pi)) * (x + _F32(0.044715) * x ** 3)))
    import math
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))


def _F32(value):
    """A float attribute or function-body constant as ONNX stores it (float32), for exact references."""
    return float(np.float32(value))


def _np_standardize(x, axes, eps=_F32(1e-5)):
    mean = x.mean(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + eps)


_KINKS_AWAY = away_from_zero(0.1)
row("gelu_op_exact", _op("Gelu", (3, 4)), [In("x", (3, 4))], _np_gelu, ["Gelu"], ort_float64=False,
    fd_eps=1e-3, rtol=1e-4, atol=1e-4, xfail_in=("forward",),
    xfail="onnx's reference Gelu rounds erf through float32 (3.6e-8 relative), above the 1e-10 forward tolerance",
    note="a large step: finite differences of the reference's float32-rounded Gelu")
row("gelu_op_tanh", _op("Gelu", (3, 4), {"approximate": "tanh"}), [In("x", (3, 4), normal(2.0))],
    lambda x: _np_gelu(x, tanh=True), ["Gelu"], ort_float64=False, xfail_in=("forward",),
    xfail="onnx's reference Gelu (tanh) computes in float32 internally (1.8e-7 relative), above the 1e-10 "
          "forward tolerance")
row("softplus_op", _op("Softplus", (3, 4)), [In("x", (3, 4), normal(2.0))], lambda x: np.log1p(np.exp(x)),
    ["Softplus"], ort_float64=False)
row("leaky_relu_op", _op("LeakyRelu", (3, 4), {"alpha": 0.2}), [In("x", (3, 4), _KINKS_AWAY)],
    lambda x: np.where(x > 0, x, _F32(0.2) * x), ["LeakyRelu"], ort_float64=False)
row("elu_op", _op("Elu", (3, 4), {"alpha": 1.5}), [In("x", (3, 4), _KINKS_AWAY)],
    lambda x: np.where(x > 0, x, 1.5 * (np.exp(x) - 1)), ["Elu"], ort_float64=False)
row("hard_sigmoid_op", _op("HardSigmoid", (3, 4), {"alpha": 0.3, "beta": 0.4}),
    [In("x", (3, 4), avoiding([-0.4 / 0.3, 0.6 / 0.3], 0.1, normal(2.0)))],
    lambda x: np.clip(_F32(0.3) * x + _F32(0.4), 0, 1), ["HardSigmoid"], ort_float64=False)
row("hard_swish_op", _op("HardSwish", (3, 4)), [In("x", (3, 4), avoiding([-3.0, 3.0], 0.1, normal(3.0)))],
    lambda x: x * np.clip(_F32(1 / 6) * x + 0.5, 0, 1), ["HardSwish"], ort_float64=False)
row("sin_op", _op("Sin", (3, 4)), [In("x", (3, 4), normal(2.0))], np.sin, ["Sin"])
row("cos_op", _op("Cos", (3, 4)), [In("x", (3, 4), normal(2.0))], np.cos, ["Cos"])
row("dropout_op_run_time_mode",
    lambda x, t: emit("Dropout", [x, gc.constant(np.float64(0.25)), t], shape=(3, 4), dtype=x.dtype, num_outputs=2,
                      extra_outputs=[((3, 4), "bool")])[0],
    [In("x", (3, 4)), In("t", (), fixed(False), "bool")], lambda x, t: x, ["Dropout"],
    note="training_mode fed at run time (false here: identity); a constant-false Dropout is folded away by "
         "graphc's compile; the training form with a mask: test_vjp_dropout.py")
row("global_average_pool", _op("GlobalAveragePool", (2, 3, 1, 1)), [In("x", (2, 3, 4, 5))],
    lambda x: x.mean(axis=(2, 3), keepdims=True), ["GlobalAveragePool"], ort_float64=False)
row("global_average_pool_symbolic_1d", _op("GlobalAveragePool", ("batch", 3, 1)),
    [In("x", (2, 3, 4), decl=("batch", 3, "time"))], lambda x: x.mean(axis=2, keepdims=True),
    ["GlobalAveragePool"], ort_float64=False)
row("global_max_pool", _op("GlobalMaxPool", (2, 3, 1, 1)), [In("x", (2, 3, 3, 2), distinct())],
    lambda x: x.max(axis=(2, 3), keepdims=True), ["GlobalMaxPool"], ort_float64=False)
row("layer_normalization_op", _op("LayerNormalization", (2, 3, 4), {"axis": -1, "epsilon": 1e-3}),
    [In("x", (2, 3, 4)), In("w", (4,)), In("b", (4,))],
    lambda x, w, b: _np_standardize(x, (2,), _F32(1e-3)) * w + b, ["LayerNormalization"])
row("layer_normalization_op_axis1_no_bias", _op("LayerNormalization", (2, 3, 4), {"axis": 1}),
    [In("x", (2, 3, 4)), In("w", (3, 4))], lambda x, w: _np_standardize(x, (1, 2)) * w, ["LayerNormalization"])
row("group_normalization_op", _op("GroupNormalization", (2, 4, 3), {"num_groups": 2, "stash_type": 11}),
    [In("x", (2, 4, 3)), In("w", (4,)), In("b", (4,))],
    lambda x, w, b: _np_standardize(x.reshape(2, 2, 6), (2,)).reshape(2, 4, 3) * w[:, None] + b[:, None],
    ["GroupNormalization"], note="stash_type 11: statistics in float64 (the default stashes float32)")
row("instance_normalization_op", _op("InstanceNormalization", (2, 3, 2, 2), {"epsilon": 1e-4}),
    [In("x", (2, 3, 2, 2)), In("w", (3,)), In("b", (3,))],
    lambda x, w, b: _np_standardize(x, (2, 3), _F32(1e-4)) * w[:, None, None] + b[:, None, None],
    ["InstanceNormalization"], ort_float64=False)
row("gather_axis1_repeated_negative", _op("Gather", (2, 2, 3, 4), {"axis": 1},
                                          extra=(np.array([[0, -1, 0], [2, 1, 0]]),)),
    [In("x", (2, 3, 4))], lambda x: x[:, np.array([[0, 2, 0], [2, 1, 0]])], ["Gather"])
row("gather_axis_last_scalar_index", _op("Gather", (2, 3), {"axis": -1}, extra=(np.array(1),)),
    [In("x", (2, 3, 4))], lambda x: x[..., 1], ["Gather"])
row("gather_elements_axis1", _op("GatherElements", (2, 3), {"axis": 1},
                                 extra=(np.array([[0, 0, -1], [2, 1, 1]]),)),
    [In("x", (2, 4))], lambda x: np.take_along_axis(x, np.array([[0, 0, 3], [2, 1, 1]]), 1), ["GatherElements"])
row("gather_nd_repeated", _op("GatherND", (3, 4), extra=(np.array([[0, 1], [1, 2], [0, 1]]),)),
    [In("x", (2, 3, 4))], lambda x: x[[0, 1, 0], [1, 2, 1]], ["GatherND"])
row("gather_nd_batch_dims1", _op("GatherND", (2, 2), {"batch_dims": 1}, extra=(np.array([[[1], [0]], [[2], [2]]]),)),
    [In("x", (2, 3))], lambda x: np.stack([x[0, [1, 0]], x[1, [2, 2]]]), ["GatherND"])


def _np_scatter_nd(x, updates, reduction="none"):
    out = x.copy()
    for k, (i, j) in enumerate([(1, 0), (0, 2)]):
        out[i, j] = updates[k] if reduction == "none" else out[i, j] + updates[k]
    return out


def _np_sce(reduction):
    """SoftmaxCrossEntropyLoss of x (4, 3), targets [0, 1, 2, 2], weights [0.5, 2, 1.5], ignore_index 1."""
    def ref(x):
        target, weight = np.array([0, 1, 2, 2]), np.array([0.5, 2.0, 1.5])
        w = weight[target] * (target != 1)
        losses = -w * _np_log_softmax(x, 1)[np.arange(4), target]
        return {"none": losses, "sum": losses.sum(), "mean": losses.sum() / w.sum()}[reduction]
    return ref


def _np_sce_log_prob_nd(x):
    log_prob = _np_log_softmax(x, 1)
    target = np.array([[0, 2], [1, 1]])
    picked = np.take_along_axis(log_prob, target[:, None, :], 1)
    return -picked.mean() + log_prob.sum()


def _scatter_nd(reduction):
    def build(x, u):
        indices = gc.constant(np.array([[1, 0], [0, 2]]))
        return emit("ScatterND", [x, indices, u], {"reduction": reduction}, shape=(2, 3, 4), dtype=x.dtype)
    return build


for reduction in ("none", "add"):
    row(f"scatter_nd_{reduction}", _scatter_nd(reduction), [In("x", (2, 3, 4)), In("u", (2, 4))],
        lambda x, u, r=reduction: _np_scatter_nd(x, u, r), ["ScatterND"])
row("top_k_axis1_values", _op("TopK", (2, 2, 3), {"axis": 1}, extra=(np.array([2]),), num_outputs=2,
                              extra_outputs=[((2, 2, 3), "int64")]),
    [In("x", (2, 4, 3), distinct())], lambda x: -np.sort(-x, axis=1)[:, :2], ["TopK"])
row("top_k_smallest", _op("TopK", (3, 1), {"largest": 0}, extra=(np.array([1]),), num_outputs=2,
                          extra_outputs=[((3, 1), "int64")]),
    [In("x", (3, 4), distinct())], lambda x: np.sort(x, axis=1)[:, :1], ["TopK"])
row("tile", _op("Tile", (4, 3, 2), extra=(np.array([2, 3, 1]),)), [In("x", (2, 1, 2))],
    lambda x: np.tile(x, (2, 3, 1)), ["Tile"])
row("tile_symbolic_batch", _op("Tile", ("batch", 6), extra=(np.array([1, 2]),)),
    [In("x", (2, 3), decl=("batch", 3))], lambda x: np.tile(x, (1, 2)), ["Tile"])
row("pad_constant_value_input",
    lambda x, v: emit("Pad", [x, gc.constant(np.array([1, 0, 0, 2])), v], {"mode": "constant"},
                      shape=(3, 5), dtype=x.dtype),
    [In("x", (2, 3)), In("v", ())],
    lambda x, v: np.pad(x, ((1, 0), (0, 2)), constant_values=v), ["Pad"])
row("pad_reflect_axes", _op("Pad", (2, 8), {"mode": "reflect"}, extra=(np.array([2, 1]), None, np.array([-1]))),
    [In("x", (2, 5))], lambda x: np.pad(x, ((0, 0), (2, 1)), mode="reflect"), ["Pad"])
row("pad_edge_2d", _op("Pad", (4, 6), {"mode": "edge"}, extra=(np.array([1, 2, 0, 1]),)), [In("x", (3, 3))],
    lambda x: np.pad(x, ((1, 0), (2, 1)), mode="edge"), ["Pad"])
row("trilu_upper_k1", _op("Trilu", (2, 3, 4), extra=(np.array(1),)), [In("x", (2, 3, 4))],
    lambda x: np.triu(x, 1), ["Trilu"])
row("trilu_lower", _op("Trilu", (3, 3), {"upper": 0}), [In("x", (3, 3))], np.tril, ["Trilu"])
row("einsum_batched_matmul", _op("Einsum", (2, 3, 5), {"equation": "bij,bjk->bik"}),
    [In("a", (2, 3, 4)), In("b", (2, 4, 5))], lambda a, b: np.einsum("bij,bjk->bik", a, b), ["Einsum"])
row("einsum_summed_letter_ellipsis_implicit", _op("Einsum", (2, 4), {"equation": "...ij,j"}),
    [In("a", (2, 4, 3)), In("b", (3,))], lambda a, b: np.einsum("...ij,j", a, b), ["Einsum"])
row("einsum_letter_only_in_one_operand", _op("Einsum", (3,), {"equation": "ij,k->i"}),
    [In("a", (3, 4)), In("b", (2,))], lambda a, b: np.einsum("ij,k->i", a, b), ["Einsum"])
for reduction in ("mean", "sum", "none"):
    row(f"softmax_cross_entropy_{reduction}_weights_ignore",
        _op("SoftmaxCrossEntropyLoss", () if reduction != "none" else (4,),
            {"reduction": reduction, "ignore_index": 1},
            extra=(np.array([0, 1, 2, 2]), np.array([0.5, 2.0, 1.5]))),
        [In("x", (4, 3))], _np_sce(reduction), ["SoftmaxCrossEntropyLoss"])
row("softmax_cross_entropy_log_prob_nd",
    lambda x: (lambda out: out[0] + out[1].sum())(
        emit("SoftmaxCrossEntropyLoss", [x, gc.constant(np.array([[0, 2], [1, 1]]))], {"reduction": "mean"},
             shape=(), dtype=x.dtype, num_outputs=2, extra_outputs=[((2, 3, 2), x.dtype)])),
    [In("x", (2, 3, 2))], _np_sce_log_prob_nd, ["SoftmaxCrossEntropyLoss"],
    note="both outputs used: the log_prob cotangent adds to the loss's")
for op_type, fn in (("ReduceL2", lambda x, axes: np.sqrt((x ** 2).sum(axis=axes, keepdims=True))),
                    ("ReduceLogSumExp", lambda x, axes: np.log(np.exp(x).sum(axis=axes, keepdims=True))),
                    ("ReduceSumSquare", lambda x, axes: (x ** 2).sum(axis=axes, keepdims=True)),
                    ("ReduceL1", lambda x, axes: np.abs(x).sum(axis=axes, keepdims=True)),
                    ("ReduceLogSum", lambda x, axes: np.log(x.sum(axis=axes, keepdims=True)))):
    draw = uniform(0.2, 2.0) if op_type == "ReduceLogSum" else away_from_zero(0.1)
    row(f"{op_type.lower()}_axes02", _op(op_type, (3,), {"keepdims": 0}, extra=(np.array([0, -1]),)),
        [In("x", (2, 3, 4), draw)], lambda x, fn=fn: fn(x, (0, 2)).reshape(3), [op_type])
    row(f"{op_type.lower()}_all_keepdims", _op(op_type, (1, 1)), [In("x", (2, 3), draw)],
        lambda x, fn=fn: fn(x, (0, 1)), [op_type])


# ---- Split and Scan (what the recurrent layers lower to) ---------------------------
def _split3(x):
    first, _unused, last = emit("Split", [x], {"axis": 1, "num_outputs": 3}, shape=(2, 2), dtype=x.dtype,
                                num_outputs=3, extra_outputs=[((2, 2), x.dtype)] * 2)
    return first + last * 3.0


def _split_sizes(x):
    top, rest = emit("Split", [x, gc.constant(np.array([1, 3], np.int64))], {"axis": 0}, shape=(1, 2),
                     dtype=x.dtype, num_outputs=2, extra_outputs=[((3, 2), x.dtype)])
    return top * rest


row("split_equal_one_piece_unused", _split3, [In("x", (2, 6))], lambda x: x[:, :2] + x[:, 4:] * 3.0, ["Split"])
row("split_sizes_input", _split_sizes, [In("x", (4, 2))], lambda x: x[:1] * x[1:], ["Split"])


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _np_recurrent(mode: str, x, w_ih, w_hh, b_ih, b_hh, h=None, c=None):
    """PyTorch's RNN (tanh) / LSTM / GRU formulas over x (T, B, I); returns outputs (T, B, H) and the final c."""
    hidden = w_hh.shape[1]
    h = np.zeros((x.shape[1], hidden)) if h is None else h
    c = np.zeros((x.shape[1], hidden)) if c is None else c
    outputs = []
    for x_t in x:
        xp, hp = x_t @ w_ih.T + b_ih, h @ w_hh.T + b_hh
        if mode == "RNN_TANH":
            h = np.tanh(xp + hp)
        elif mode == "LSTM":
            i, f, g, o = np.split(xp + hp, 4, axis=1)
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
        else:
            (xr, xz, xn), (hr, hz, hn) = np.split(xp, 3, axis=1), np.split(hp, 3, axis=1)
            r, z = _sigmoid(xr + hr), _sigmoid(xz + hz)
            n = np.tanh(xn + r * hn)
            h = (1 - z) * n + z * h
        outputs.append(h)
    return np.stack(outputs), c


def _recurrent_row(id, mode: str, runner: str, time, with_state: bool = False):
    from graphc.nn import recurrent

    gates = {"RNN_TANH": 1, "LSTM": 4, "GRU": 3}[mode]
    hidden, features, batch, steps = 2, 3, 2, 3
    inputs = [In("x", (steps, batch, features), decl=(time, batch, features)), In("w_ih", (gates * hidden, features)),
              In("w_hh", (gates * hidden, hidden)), In("b_ih", (gates * hidden,)), In("b_hh", (gates * hidden,))]
    if with_state:
        inputs += [In("h0", (batch, hidden)), In("c0", (batch, hidden))]

    def build(x, w_ih, w_hh, b_ih, b_hh, *state):
        # runner "onnx_op": ONNX's own node (autodiff lowers it); otherwise the lowering emitted directly
        out, final = recurrent._run_onnx_layer(mode, x, [tuple(state) or None],
                                               [recurrent.LayerWeights(w_ih, w_hh, b_ih, b_hh)], hidden,
                                               lower=runner != "onnx_op")
        return out + final[-1] if mode == "LSTM" else out  # LSTM: the final cell state too

    def ref(x, w_ih, w_hh, b_ih, b_hh, *state):
        out, c = _np_recurrent(mode, x, w_ih, w_hh, b_ih, b_hh, *state)
        return out + c if mode == "LSTM" else out

    if runner == "onnx_op":
        row(id, build, inputs, ref, [{"RNN_TANH": "RNN"}.get(mode, mode)], ort_float64=False,
            note="ONNX's op (float32 only in ONNX Runtime); its gradient through passes/lower_recurrent.py")
        return
    row(id, build, inputs, ref, ["Scan"] if runner == "scan" else ["Split"],
        note="passes/lower_recurrent.py's lowering emitted directly, fed graph inputs as weights")


_recurrent_row("rnn_tanh_scan_symbolic_time", "RNN_TANH", "scan", "time")
_recurrent_row("lstm_scan_with_state", "LSTM", "scan", "time", with_state=True)
_recurrent_row("gru_scan", "GRU", "scan", "time")
_recurrent_row("lstm_unrolled", "LSTM", "unrolled", 3)
_recurrent_row("gru_unrolled", "GRU", "unrolled", 3)
_recurrent_row("lstm_onnx_op_symbolic_time", "LSTM", "onnx_op", "time", with_state=True)
_recurrent_row("gru_onnx_op", "GRU", "onnx_op", 3)
_recurrent_row("rnn_tanh_onnx_op", "RNN_TANH", "onnx_op", 3)


# ---- QuantizeLinear / DequantizeLinear (fake quantization, straight-through gradient) ----------
# ONNX's quantization ops take float32, not float64: rows cast around them. Finite differences see
# the true derivative, so inputs are drawn where it equals the straight-through rule's: saturated
# (|x| beyond the int8 range: dx = 0, ds = q - zp), and the linear DequantizeLinear. The in-range
# straight-through gradient is checked against torch's fake quantization in tests/test_qat.py.
def _np_qdq(x, s, zp, qmin, qmax, axis=None):
    x32, s32 = x.astype(np.float32), s.astype(np.float32)
    if axis is not None:
        s32 = s32.reshape([-1 if a == axis else 1 for a in range(x.ndim)])
        zp = zp.reshape(s32.shape)
    q = np.clip(np.rint(x32 / s32) + zp, qmin, qmax)
    return ((q - zp).astype(np.float32) * s32).astype(np.float64)


def _qdq(x, s, zp, qdtype, axis=None):
    attrs = {} if axis is None else {"axis": axis}
    x32, s32 = x.astype("float32"), s.astype("float32")
    zp_inputs = [] if zp is None else [gc.constant(zp)]
    q = emit("QuantizeLinear", [x32, s32, *zp_inputs], attrs, shape=x.shape, dtype=qdtype)
    return emit("DequantizeLinear", [q, s32, *zp_inputs], attrs, shape=x.shape, dtype=np.float32).astype("float64")


_ZP = np.array(3, np.int8)
row("quantize_dequantize_saturated", lambda x, s: _qdq(x, s, _ZP, np.int8),
    [In("x", (2, 3), away_from_zero(20.0, 30.0)), In("s", (), uniform(0.05, 0.1))],
    lambda x, s: _np_qdq(x, s, 3, -128, 127), ["QuantizeLinear", "DequantizeLinear", "Cast"],
    fd_eps=1e-3, rtol=1e-4, atol=1e-3, note="float32 inside: a larger step keeps rounding small against it")
row("quantize_dequantize_per_axis_uint8_saturated", lambda x, s: _qdq(x, s, None, np.uint8, axis=0),
    [In("x", (3, 2), away_from_zero(40.0, 60.0)), In("s", (3,), uniform(0.05, 0.1))],
    lambda x, s: _np_qdq(x, s, np.zeros(3), 0, 255, axis=0), ["QuantizeLinear", "DequantizeLinear"],
    fd_eps=1e-3, rtol=1e-4, atol=1e-3, note="no zero point: uint8, as the spec says")
_ZP_AXIS = np.array([-2, 0, 5], np.int8)
row("dequantize_linear_per_axis",
    lambda q, s: emit("DequantizeLinear", [q, s.astype("float32"), gc.constant(_ZP_AXIS)], {"axis": 1},
                      shape=q.shape, dtype=np.float32).astype("float64"),
    [In("q", (2, 3, 2), lambda rng, shape: rng.integers(-128, 128, shape), dtype="int8"),
     In("s", (3,), uniform(0.5, 2.0))],
    lambda q, s: ((q.astype(np.float32) - _ZP_AXIS.reshape(1, 3, 1)) * s.astype(np.float32).reshape(1, 3, 1)
                  ).astype(np.float64),
    ["DequantizeLinear"], fd_eps=1e-3, rtol=1e-4, atol=1e-3)
