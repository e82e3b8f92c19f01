"""Every op from one table (``op_samples.SAMPLES``): forward, gradient, export.

Per row:
- forward: the float64 model on ``onnx.reference.ReferenceEvaluator`` and on
  ONNX Runtime against the row's independent numpy (or torch) reference;
- gradient: ``gc.grad`` of ``sum(out * w)`` (``w`` a fixed random constant, so
  every output element matters) w.r.t. every float input, evaluated by the
  ReferenceEvaluator, against central finite differences in float64;
- export: the gradient model passes ``onnx.checker.check_model(full_check=True)``
  and ONNX Runtime agrees with the ReferenceEvaluator.

Rows whose ops ONNX Runtime's CPU build runs in float32 only (Conv,
ConvTranspose, AveragePool, Erf) are checked on ONNX Runtime through a float32
build of the same row, against the float64 results, with float32 tolerances;
their finite differences run on the ReferenceEvaluator.

A meta-test fails when an op with a registered VJP rule is differentiated in
no row. Known gradient gaps are ``xfail(strict=True)`` rows whose gradient
must raise a ``NotImplementedError`` that says what is missing; known bugs are
strict xfails with the reason written in the row.
"""

from __future__ import annotations

import inspect
import math
import re
import zlib
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_conv_transpose import ConvTranspose as _ReferenceConvTranspose
from onnx.reference.ops.op_scan import Scan as _ReferenceScan

import graphc as gc
import graphc.nn.functional as F
from graphc.tensor import emit
from op_samples import SAMPLES, Sample
from passes.autodiff.registry import VJP_RULES, MissingGradientError, is_float

FORWARD_RTOL, FORWARD_ATOL = 1e-10, 1e-12
ORT_RTOL, ORT_ATOL = 1e-9, 1e-12
FLOAT32_RTOL, FLOAT32_ATOL = 1e-4, 1e-4  # rows whose ops ONNX Runtime runs in float32 only


# ---- building each row once ----------------------------------------------
@dataclass
class Built:
    inputs: list[gc.Tensor]
    out: gc.Tensor
    feeds: dict[str, np.ndarray]
    expected: np.ndarray


@dataclass
class GradientPrograms:
    program: gc.Program  # outputs: out, loss, grad_<input> for each differentiable input
    loss_program: gc.Program  # output: loss (what finite differences evaluate)
    grads: list[gc.Tensor]


_BUILT: dict[tuple[str, str], Built] = {}
_FORWARD: dict[tuple[str, str], gc.Program] = {}
_GRADIENT: dict[tuple[str, str], GradientPrograms] = {}


def _rng(sample: Sample, salt: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"{sample.id}/{salt}".encode()))


def built(sample: Sample, floats: str = "float64") -> Built:
    """The row's graph and feeds; ``floats="float32"`` builds it again with float32 inputs, same values."""
    key = (sample.id, floats)
    if key not in _BUILT:
        rng = _rng(sample, "inputs")
        feeds, dtypes = {}, []
        for spec in sample.inputs:
            array = np.asarray(spec.draw(rng, spec.shape)).astype(spec.dtype)
            assert array.shape == spec.shape, f"{sample.id}: input {spec.name} drawn with the wrong shape"
            feeds[spec.name] = array
            dtypes.append(floats if spec.dtype == "float64" else spec.dtype)
        expected = np.asarray(sample.ref(*feeds.values()), dtype=np.float64)
        feeds = {name: array.astype(dtype) for (name, array), dtype in zip(feeds.items(), dtypes)}
        inputs = [gc.input(spec.name, spec.declared, dtype) for spec, dtype in zip(sample.inputs, dtypes)]
        out = sample.build(*inputs)
        _BUILT[key] = Built(inputs, out, feeds, expected)
    return _BUILT[key]


def forward_program(sample: Sample, floats: str = "float64") -> gc.Program:
    key = (sample.id, floats)
    if key not in _FORWARD:
        b = built(sample, floats)
        # optimize=False: the table checks the ops the builder emits, before the export pipeline fuses them
        _FORWARD[key] = gc.compile(b.inputs, {"out": b.out}, optimize=False)
    return _FORWARD[key]


def gradient_programs(sample: Sample, floats: str = "float64") -> GradientPrograms:
    key = (sample.id, floats)
    if key not in _GRADIENT:
        b = built(sample, floats)
        weight = _rng(sample, "weight").normal(0.0, 1.0, b.expected.shape)
        loss = (b.out * gc.constant(weight, dtype=floats)).sum()
        specs = [(spec, t) for spec, t in zip(sample.inputs, b.inputs) if spec.differentiable]
        try:
            grads = gc.grad(loss, [t for _, t in specs])
        except NotImplementedError as error:
            if sample.grad_gap:  # a known gap must at least say clearly what is missing
                assert re.search(sample.grad_gap, str(error)), str(error)
            raise
        outputs = {"out": b.out, "loss": loss}
        outputs.update({f"grad_{spec.name}": g for (spec, _), g in zip(specs, grads)})
        _GRADIENT[key] = GradientPrograms(gc.compile(b.inputs, outputs), gc.compile(b.inputs, {"loss": loss}),
                                          grads)
    return _GRADIENT[key]


# ---- the reference evaluator, with three of its kernels fixed ----------------------
class Erf(OpRun):
    """Erf in the input's precision: onnx's reference Erf rounds through float32."""

    op_domain = ""

    def _run(self, x):
        return (np.vectorize(math.erf, otypes=[x.dtype])(x),)


class ConvTranspose(_ReferenceConvTranspose):
    """onnx's reference ConvTranspose slices grouped weights wrongly: run each group on its own."""

    op_domain = ""

    def _run(self, X, W, B=None, group=None, **attrs):
        if group in (None, 1):
            return _ReferenceConvTranspose._run(self, X, W, B, group=1, **attrs)
        in_per_group, out_per_group = X.shape[1] // group, W.shape[1]
        outs = [_ReferenceConvTranspose._run(self, X[:, g * in_per_group:(g + 1) * in_per_group],
                                            W[g * in_per_group:(g + 1) * in_per_group],
                                            None if B is None else B[g * out_per_group:(g + 1) * out_per_group],
                                            group=1, **attrs)[0] for g in range(group)]
        return (np.concatenate(outs, axis=1).astype(X.dtype),)


class Scan(_ReferenceScan):
    """onnx's reference Scan runs forward only: reverse scan inputs and outputs are flipped around it."""

    op_domain = ""

    def __init__(self, onnx_node, run_params):
        OpRun.__init__(self, onnx_node, run_params)
        self.in_reversed = list(self.scan_input_directions or [0] * self.num_scan_inputs)
        self.out_reversed = list(self.scan_output_directions or [])
        self.scan_input_directions = self.scan_output_directions = None
        self.input_directions_ = [0] * self.num_scan_inputs
        self.input_axes_ = list(self.scan_input_axes or [0] * self.num_scan_inputs)
        self.input_names, self.output_names = self.body.input_names, self.body.output_names

    def _run(self, *args, **kwargs):
        n_states = len(args) - self.num_scan_inputs
        args = [np.flip(a, 0) if i >= n_states and self.in_reversed[i - n_states] else a for i, a in enumerate(args)]
        outs = _ReferenceScan._run(self, *args, **kwargs)
        return tuple(np.flip(o, 0) if i >= n_states and i - n_states < len(self.out_reversed)
                     and self.out_reversed[i - n_states] else o for i, o in enumerate(outs))


def reference(model: onnx.ModelProto) -> ReferenceEvaluator:
    return ReferenceEvaluator(model, new_ops=[Erf, ConvTranspose, Scan])


def reference_run(program: gc.Program, feeds) -> dict[str, np.ndarray]:
    results = reference(program.model).run(None, feeds)
    return dict(zip(program.output_names, results))


def central_differences(sample: Sample, loss_program: gc.Program, feeds, name: str) -> np.ndarray:
    """Central differences of the float64 loss, evaluated by ONNX Runtime (or the reference evaluator
    where ONNX Runtime has no double kernels)."""
    if sample.ort_float64:
        session = loss_program.session
    else:
        session = reference(loss_program.model)
    x = feeds[name].copy()
    varied = dict(feeds)
    varied[name] = x
    grad = np.zeros_like(x)
    eps = sample.fd_eps
    for index in np.ndindex(x.shape):
        original = x[index]
        x[index] = original + eps
        up = session.run(["loss"], varied)[0]
        x[index] = original - eps
        down = session.run(["loss"], varied)[0]
        x[index] = original
        grad[index] = (up - down) / (2 * eps)
    return grad


def _params(test: str):
    gradient = test != "forward"
    params = []
    for sample in SAMPLES:
        marks = []
        if sample.xfail and test in sample.xfail_in:
            marks.append(pytest.mark.xfail(strict=True, reason=f"known bug: {sample.xfail}"))
        if gradient and sample.grad_gap:
            marks.append(pytest.mark.xfail(raises=NotImplementedError, strict=True,
                                           reason=f"known gradient gap: {sample.grad_gap}"))
        params.append(pytest.param(sample, id=sample.id, marks=marks))
    return params


# ---- the three per-row tests ---------------------------------------------
@pytest.mark.parametrize("sample", _params("forward"))
def test_forward(sample: Sample):
    b = built(sample)
    program = forward_program(sample)
    onnx.checker.check_model(program.model, full_check=True)
    op_types = {node.op_type for node in program.model.graph.node}
    assert set(sample.ops) <= op_types, f"expected ops {sample.ops} in the graph, got {sorted(op_types)}"
    assert b.out.dtype == np.float64

    evaluated = reference_run(program, b.feeds)["out"]
    assert evaluated.dtype == np.float64
    assert evaluated.shape == b.expected.shape
    np.testing.assert_allclose(evaluated, b.expected, rtol=FORWARD_RTOL, atol=FORWARD_ATOL)

    if sample.ort_float64:
        ort = program.run(b.feeds)["out"]
        assert ort.dtype == np.float64 and ort.shape == b.expected.shape
        np.testing.assert_allclose(ort, b.expected, rtol=ORT_RTOL, atol=ORT_ATOL)
    else:
        b32 = built(sample, "float32")
        ort = forward_program(sample, "float32").run(b32.feeds)["out"]
        assert ort.dtype == np.float32 and ort.shape == b.expected.shape
        np.testing.assert_allclose(ort, b.expected, rtol=FLOAT32_RTOL, atol=FLOAT32_ATOL)

    static = [d if isinstance(d, int) else None for d in b.out.shape]
    assert len(static) == b.expected.ndim, f"declared shape {b.out.shape} vs actual {b.expected.shape}"
    for declared, actual in zip(static, b.expected.shape):
        assert declared in (None, actual), f"declared shape {b.out.shape} vs actual {b.expected.shape}"


@pytest.mark.parametrize("sample", _params("gradient"))
def test_gradient(sample: Sample):
    b = built(sample)
    grads = gradient_programs(sample)
    results = reference_run(grads.program, b.feeds)
    for spec, tensor in zip([s for s in sample.inputs if s.differentiable], grads.grads):
        assert tensor.shape == spec.declared and tensor.dtype == np.float64
        analytic = results[f"grad_{spec.name}"]
        assert analytic.shape == spec.shape, f"grad_{spec.name}: shape {analytic.shape}, input {spec.shape}"
        numeric = central_differences(sample, grads.loss_program, b.feeds, spec.name)
        np.testing.assert_allclose(analytic, numeric, rtol=sample.rtol, atol=sample.atol,
                                   err_msg=f"gradient w.r.t. {spec.name}")


@pytest.mark.parametrize("sample", _params("exports"))
def test_gradient_model_exports(sample: Sample):
    b = built(sample)
    grads = gradient_programs(sample)
    onnx.checker.check_model(grads.program.model, full_check=True)
    evaluated = reference_run(grads.program, b.feeds)
    if sample.ort_float64:
        ort, rtol, atol = grads.program.run(b.feeds), ORT_RTOL, ORT_ATOL
    else:
        program32 = gradient_programs(sample, "float32").program
        onnx.checker.check_model(program32.model, full_check=True)
        ort, rtol, atol = program32.run(built(sample, "float32").feeds), FLOAT32_RTOL, FLOAT32_ATOL
    assert set(ort) == set(evaluated)
    for name, value in evaluated.items():
        assert ort[name].shape == value.shape, name
        np.testing.assert_allclose(ort[name], value, rtol=rtol, atol=atol, err_msg=name)


# ---- table-level checks ----------------------------------------------------
def _differentiated_op_types(sample: Sample) -> set[str]:
    """Op types of the forward nodes autodiff visits: a float input depends on a differentiable input."""
    model = ir.serde.deserialize_model(forward_program(sample).model)
    wanted = {spec.name for spec in sample.inputs if spec.differentiable}
    depends = {v for v in model.graph.inputs if v.name in wanted}
    found = set()
    for node in model.graph:
        if any(v in depends and is_float(v) for v in node.inputs) and any(is_float(o) for o in node.outputs):
            found.add(node.op_type)
            depends.update(node.outputs)
    return found


def test_every_registered_op_has_a_sample():
    covered: set[str] = set()
    for sample in SAMPLES:
        if not sample.grad_gap and not (sample.xfail and "gradient" in sample.xfail_in):
            covered |= _differentiated_op_types(sample)
    missing = sorted(set(VJP_RULES) - covered)
    assert not missing, f"ops with a VJP rule but no differentiated sample in tests/op_samples.py: {missing}"


def test_sample_ids_are_unique():
    ids = [sample.id for sample in SAMPLES]
    assert len(ids) == len(set(ids)), sorted({i for i in ids if ids.count(i) > 1})


def test_detach_stops_gradient():
    a = gc.input("a", (2, 3), "float64")
    (grad,) = gc.grad((a * a.detach()).sum(), [a])
    program = gc.compile([a], {"grad": grad})
    x = np.random.default_rng(0).normal(size=(2, 3))
    np.testing.assert_allclose(reference_run(program, {"a": x})["grad"], x, rtol=1e-12)  # not 2x
    np.testing.assert_allclose(program.run({"a": x})["grad"], x, rtol=1e-12)


def test_unrelated_input_gets_zero_gradient():
    a = gc.input("a", (2, 3), "float64")
    b = gc.input("b", ("batch", 3), "float64")
    grad_a, grad_b = gc.grad((a * 2.0).sum(), [a, b])
    program = gc.compile([a, b], {"grad_a": grad_a, "grad_b": grad_b})
    out = program.run({"a": np.ones((2, 3)), "b": np.ones((5, 3))})
    np.testing.assert_array_equal(out["grad_a"], np.full((2, 3), 2.0))
    np.testing.assert_array_equal(out["grad_b"], np.zeros((5, 3)))


def test_missing_rule_names_the_op():
    op_type = next(op for op in ("Hardmax", "Round", "Cos", "Sin") if op not in VJP_RULES)
    x = gc.input("x", (3,), "float64")
    y = emit(op_type, [x], shape=(3,), dtype=np.float64)
    with pytest.raises(MissingGradientError, match=f"'{op_type}'"):
        gc.grad(y.sum(), [x])


# ---- build-time errors -------------------------------------------------------
def _assert_names_op_shapes_and_line(error: gc.ShapeError, op: str, shapes, line: int):
    message = str(error)
    assert message.startswith(f"{op}:"), message
    for shape in shapes:
        assert shape in message, message
    assert f"test_ops.py:{line}" in message, message


def test_add_shape_mismatch_names_op_shapes_and_line():
    a = gc.input("a", (2, 3))
    b = gc.input("b", (4, 5))
    with pytest.raises(gc.ShapeError) as info:
        line = inspect.currentframe().f_lineno + 1
        a + b
    _assert_names_op_shapes_and_line(info.value, "Add", ["(2, 3)", "(4, 5)"], line)


def test_matmul_shape_mismatch_names_op_shapes_and_line():
    a = gc.input("a", ("batch", 3))
    b = gc.input("b", (4, 5))
    with pytest.raises(gc.ShapeError) as info:
        line = inspect.currentframe().f_lineno + 1
        a @ b
    _assert_names_op_shapes_and_line(info.value, "MatMul", ["(batch, 3)", "(4, 5)"], line)


def test_linear_shape_mismatch_names_op_shapes_and_line():
    x = gc.input("x", (2, 3))
    w = gc.input("w", (4, 5))
    with pytest.raises(gc.ShapeError) as info:
        line = inspect.currentframe().f_lineno + 1
        F.linear(x, w)
    _assert_names_op_shapes_and_line(info.value, "linear", ["(2, 3)", "(4, 5)"], line)


def test_reshape_size_mismatch_names_op_shapes_and_line():
    x = gc.input("x", (2, 3))
    with pytest.raises(gc.ShapeError) as info:
        line = inspect.currentframe().f_lineno + 1
        x.reshape(4, 2)
    _assert_names_op_shapes_and_line(info.value, "Reshape", ["(2, 3)", "(4, 2)"], line)


def test_broadcast_mismatch_in_sub_names_op():
    x = gc.input("x", (2, 3), "float64")
    with pytest.raises(gc.ShapeError) as info:
        line = inspect.currentframe().f_lineno + 1
        x - gc.input("y", (2,), "float64")
    _assert_names_op_shapes_and_line(info.value, "Sub", ["(2, 3)", "(2,)"], line)
