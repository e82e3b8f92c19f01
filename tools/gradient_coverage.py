"""Gradient coverage: graphc's VJP rules against ONNX's backend node tests, and the coverage page.

The node tests are the ones the onnx wheel ships as ``onnx/backend/test/data/node/*`` (model plus
``test_data_set_0``); this wheel ships their generators only, so the cases are made in memory by
``onnx.backend.test.case.node.collect_testcases`` (the code that writes those files).

Per case whose graph has a rule for every op: the model is cast to float64, a scalar
``loss = sum_k sum(out_k * w_k)`` (``w_k`` a fixed random cotangent per float output) is appended,
``AutodiffPass`` adds the gradients, and each differentiable input's gradient is compared with
float64 central finite differences of the forward (ONNX Runtime; onnx's reference evaluator where
ONNX Runtime lacks a double kernel). Cases that cannot be checked are skipped with a listed reason.

Run ``python tools/gradient_coverage.py`` to rewrite ``docs/gradient-coverage.md``; the pytest peer
suite is ``tests/test_backend_node_vjp.py``.
"""

from __future__ import annotations

import re
import sys
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnx.version_converter
import onnx_ir as ir
from onnx import TensorProto, helper, numpy_helper
from onnx.defs import OpSchema

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from passes.autodiff.autodiff_pass import AutodiffPass  # noqa: E402
from passes.autodiff.registry import VJP_RULES  # noqa: E402
from passes.lower_recurrent import RECURRENT_OPS  # noqa: E402

DOC = ROOT / "docs" / "gradient-coverage.md"
FLOATS = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
OPSET = 21  # graphc's opset
LOSS = "peer_suite.loss"  # a name no node test uses
FULL_FD_MAX = 64  # inputs up to this size get every element's difference; larger ones random directions
DIRECTIONS = 3
EPS = 1e-6
RTOL, ATOL = 1e-5, 1e-6

# Inputs graphc treats as constants although the schema calls them differentiable: (op, input index).
CONSTANT_INPUTS = {
    ("BatchNormalization", 3): "running mean: a constant of the model in inference",
    ("BatchNormalization", 4): "running variance: a constant of the model in inference",
    ("NegativeLogLikelihoodLoss", 2): "class weights: no gradient (as PyTorch)",
    ("SoftmaxCrossEntropyLoss", 2): "class weights: no gradient (as PyTorch)",
}

# Whole cases skipped, by name pattern, with the reason.
SKIPS = [
    (r"training_dropout(?!_zero_ratio)|dropout_random", "random mask drawn anew at every run: finite differences "
                                                      "see noise"),
    (r"_training_mode|_training$", "training-mode statistics of an op graphc lowers to primitives"),
    (r"^test_(elu|leakyrelu)_example$", "an input at the kink x = 0: no derivative"),
    (r"^test_reduce_(min|max)_.*example", "tied extremes: no derivative"),
    (r"^test_pow$", "negative bases: the exponent's derivative (y log x) is undefined"),
]


@dataclass
class Outcome:
    case: str
    ops: tuple[str, ...]
    status: str  # "passed", "skipped", "failed"
    reason: str = ""
    evaluator: str = ""


def node_cases():
    """The backend node test cases (name, model, first data set)."""
    from onnx.backend.test.case.node import collect_testcases
    return [c for c in collect_testcases(None) if c.kind == "node" and c.data_sets]


def differentiable_ops() -> list[str]:
    """ai.onnx ops (latest schemas, not deprecated) with a differentiable float input and output."""
    found = []
    for schema in onnx.defs.get_all_schemas():
        if schema.domain not in ("", "ai.onnx") or schema.deprecated:
            continue
        diff = OpSchema.DifferentiationCategory.Differentiable
        if any(p.differentiation_category == diff for p in schema.inputs) and \
                any(p.differentiation_category == diff for p in schema.outputs):
            found.append(schema.name)
    return sorted(set(found))


def case_ops(model: onnx.ModelProto) -> tuple[str, ...]:
    return tuple(sorted({n.op_type for n in model.graph.node}))


def _retype(type_proto) -> None:
    if type_proto.HasField("tensor_type") and type_proto.tensor_type.elem_type in FLOATS:
        type_proto.tensor_type.elem_type = TensorProto.DOUBLE
    elif type_proto.HasField("sequence_type"):
        _retype(type_proto.sequence_type.elem_type)


def _double_tensor(tensor: TensorProto) -> TensorProto:
    if tensor.data_type not in FLOATS or tensor.data_type == TensorProto.DOUBLE:
        return tensor
    return numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float64), tensor.name)


def _double_graph(graph: onnx.GraphProto) -> None:
    for value in list(graph.input) + list(graph.output) + list(graph.value_info):
        _retype(value.type)
    for i, tensor in enumerate(graph.initializer):
        graph.initializer[i].CopyFrom(_double_tensor(tensor))
    for node in graph.node:
        if node.op_type == "GroupNormalization":  # its statistics default to float32 ("stash_type")
            kept = [a for a in node.attribute if a.name != "stash_type"]
            del node.attribute[:]
            node.attribute.extend(kept + [helper.make_attribute("stash_type", TensorProto.DOUBLE)])
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                attr.t.CopyFrom(_double_tensor(attr.t))
            elif attr.type == onnx.AttributeProto.GRAPH:
                _double_graph(attr.g)
            elif attr.name in ("to", "dtype") and attr.type == onnx.AttributeProto.INT and attr.i in FLOATS:
                attr.i = TensorProto.DOUBLE


def _at_graphc_opset(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """``model`` converted to graphc's opset (what import normalisation does), None when that fails."""
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), OPSET)
    if version >= OPSET:
        return model
    try:
        return onnx.version_converter.convert_version(model, OPSET)
    except Exception:  # noqa: BLE001
        return None


def _freeze(model: onnx.ModelProto, feeds: dict, wrt: list[str]) -> onnx.ModelProto:
    """Inputs not differentiated (axes, pads, indices, scales...) become initializers: constants, as in
    exported models, so rules that need static values see them."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    kept = [v for v in copy.graph.input if v.name in wrt or v.name not in feeds]
    for value in copy.graph.input:
        if value.name not in wrt and value.name in feeds:
            copy.graph.initializer.append(numpy_helper.from_array(feeds[value.name], value.name))
    del copy.graph.input[:]
    copy.graph.input.extend(kept)
    return copy


def to_float64(model: onnx.ModelProto | None) -> onnx.ModelProto | None:
    """A copy of ``model`` computing in float64 (types, initializers, constants, Cast targets)."""
    if model is None:
        return None
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    _double_graph(copy.graph)
    return copy


def _runner(model: onnx.ModelProto):
    """(run(feeds) -> list of outputs, name) on ONNX Runtime, else onnx's reference evaluator."""
    import onnxruntime as ort
    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.intra_op_num_threads = 1
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return (lambda feeds: session.run(None, feeds)), "onnxruntime"
    except Exception:  # noqa: BLE001  (no double kernel, or an op ONNX Runtime lacks: fall back)
        from onnx.reference import ReferenceEvaluator
        evaluator = ReferenceEvaluator(model, new_ops=list(_FIXED_KERNELS))
        return (lambda feeds: evaluator.run(None, feeds)), "reference"


def _fixed_kernels():
    import math

    from onnx.reference.op_run import OpRun

    class Erf(OpRun):
        """Erf in the input's precision: onnx's reference Erf rounds through float32."""

        op_domain = ""

        def _run(self, x):
            return (np.vectorize(math.erf, otypes=[x.dtype])(x),)
    class LayerNormalization(OpRun):
        """LayerNormalization with its statistics in the input's precision (the reference stashes float32)."""

        op_domain = ""

        def _run(self, x, scale, bias=None, axis=-1, epsilon=1e-5, stash_type=1):
            axes = tuple(range(axis % x.ndim, x.ndim))
            mean = x.mean(axis=axes, keepdims=True)
            rstd = 1.0 / np.sqrt(((x - mean) ** 2).mean(axis=axes, keepdims=True) + epsilon)
            y = (x - mean) * rstd * scale + (0 if bias is None else bias)
            return y.astype(x.dtype), mean.astype(x.dtype), rstd.astype(x.dtype)
    class Gelu(OpRun):
        """Gelu with Erf in the input's precision."""

        op_domain = ""

        def _run(self, x, approximate="none"):
            if approximate == "tanh":
                inner = np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)
                return ((0.5 * x * (1 + np.tanh(inner))).astype(x.dtype),)
            return ((0.5 * x * (1 + Erf._run(self, x / np.sqrt(2))[0])).astype(x.dtype),)
    return Erf, LayerNormalization, Gelu


_FIXED_KERNELS = _fixed_kernels()


def _rng(name: str, salt: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(f"{name}/{salt}".encode()))


def _differentiable_inputs(model: onnx.ModelProto, feeds: dict) -> tuple[list[str], list[str]]:
    """(graph inputs to differentiate, notes on float inputs left out and why)."""
    graph = model.graph
    names = [v.name for v in graph.input]
    consumers: dict[str, list[tuple[str, int]]] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node.op_type, index))
    wrt, notes = [], []
    for name in names:
        if name not in feeds or feeds[name].dtype != np.float64:
            continue
        reasons = []
        for op_type, index in consumers.get(name, []):
            if (op_type, index) in CONSTANT_INPUTS:
                reasons.append(CONSTANT_INPUTS[(op_type, index)])
                continue
            schema = onnx.defs.get_schema(op_type, model.opset_import[0].version)
            params = schema.inputs
            param = params[min(index, len(params) - 1)] if params else None
            if param is not None and param.differentiation_category == \
                    OpSchema.DifferentiationCategory.NonDifferentiable:
                reasons.append(f"{op_type} input {param.name!r} is non-differentiable in the schema")
        if reasons:
            notes.append(f"{name}: {reasons[0]}")
        elif consumers.get(name):
            wrt.append(name)
    return wrt, notes


def _with_loss(model: onnx.ModelProto, outputs: list[np.ndarray], name: str) -> onnx.ModelProto | None:
    """``model`` plus ``loss = sum_k ReduceSum(out_k * w_k)`` over its float outputs (None: none)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    terms = []
    rng = _rng(name, "cotangent")
    for value, array in zip(list(graph.output), outputs):
        if value.type.tensor_type.elem_type != TensorProto.DOUBLE or array.dtype != np.float64:
            continue
        weight = numpy_helper.from_array(rng.normal(size=array.shape), f"{value.name}.cotangent")
        graph.initializer.append(weight)
        graph.node.append(helper.make_node("Mul", [value.name, weight.name], [f"{value.name}.weighted"]))
        graph.node.append(helper.make_node("ReduceSum", [f"{value.name}.weighted"], [f"{value.name}.term"],
                                           keepdims=0))
        # typed here: ONNX shape inference rejects some float64 models (LayerNormalization's statistics)
        graph.value_info.append(helper.make_tensor_value_info(f"{value.name}.weighted", TensorProto.DOUBLE,
                                                              array.shape))
        graph.value_info.append(helper.make_tensor_value_info(f"{value.name}.term", TensorProto.DOUBLE, []))
        terms.append(f"{value.name}.term")
    if not terms:
        return None
    graph.node.append(helper.make_node("Sum", terms, [LOSS]))
    graph.output.append(helper.make_tensor_value_info(LOSS, TensorProto.DOUBLE, []))
    return copy


def _numeric(loss, feeds: dict, name: str, rng) -> tuple[np.ndarray, np.ndarray | None]:
    """(finite differences, directions): per element when small, else along random unit directions."""
    x = feeds[name]

    def at(value):
        local = dict(feeds)
        local[name] = np.asarray(value, dtype=np.float64)
        return float(loss(local))

    if x.size <= FULL_FD_MAX:
        grad = np.zeros_like(x)
        for index in np.ndindex(x.shape):
            step = np.zeros_like(x)
            step[index] = EPS
            grad[index] = (at(x + step) - at(x - step)) / (2 * EPS)
        return grad, None
    directions = rng.normal(size=(DIRECTIONS,) + x.shape)
    directions /= np.sqrt((directions ** 2).sum(axis=tuple(range(1, directions.ndim)), keepdims=True))
    slopes = np.array([(at(x + EPS * d) - at(x - EPS * d)) / (2 * EPS) for d in directions])
    return slopes, directions


def skip_reason(name: str, model: onnx.ModelProto) -> str | None:
    """Why a case is not checked, or None."""
    for pattern, reason in SKIPS:
        if re.search(pattern, name):
            return reason
    missing = [op for op in case_ops(model) if op not in VJP_RULES]
    if missing:
        return f"no rule for {', '.join(missing)}"
    if any(n.domain not in ("", "ai.onnx") for n in model.graph.node):
        return "an op outside ai.onnx"
    return None


def check(case) -> Outcome:
    """Check one backend node case; ``failed`` carries the mismatch or the error."""
    name, model = case.name, case.model
    ops = case_ops(model)
    reason = skip_reason(name, model)
    if reason:
        return Outcome(name, ops, "skipped", reason)
    inputs = case.data_sets[0][0]
    graph_inputs = [v.name for v in model.graph.input]
    raw = dict(zip(graph_inputs, inputs))
    if not any(np.asarray(a).dtype.kind == "f" for a in raw.values()):
        return Outcome(name, ops, "skipped", "no float input")
    feeds = {k: np.asarray(v).astype(np.float64) if np.asarray(v).dtype.kind == "f" else np.asarray(v)
             for k, v in raw.items()}
    model64 = to_float64(_at_graphc_opset(model))
    if model64 is None:
        return Outcome(name, ops, "skipped", f"onnx's version converter cannot raise opset to {OPSET}")
    try:
        forward, _ = _runner(model64)
        outputs = forward(feeds)
    except Exception as error:  # noqa: BLE001
        return Outcome(name, ops, "skipped", f"the float64 forward does not run: {type(error).__name__}")
    if any(not np.all(np.isfinite(o)) for o in outputs if np.asarray(o).dtype == np.float64):
        return Outcome(name, ops, "skipped", "non-finite outputs")
    wrt, _notes = _differentiable_inputs(model64, feeds)
    if not wrt:
        return Outcome(name, ops, "skipped", "no differentiable float input")
    model64 = _freeze(model64, feeds, wrt)
    feeds = {k: feeds[k] for k in wrt}
    with_loss = _with_loss(model64, [np.asarray(o) for o in outputs], name)
    if with_loss is None:
        return Outcome(name, ops, "skipped", "no float output")
    try:
        result = AutodiffPass(LOSS, wrt)(ir.serde.deserialize_model(with_loss))
        grad_model = ir.serde.serialize_model(result.model)
        run_grads, evaluator = _runner(grad_model)
        values = dict(zip([o.name for o in grad_model.graph.output], run_grads(feeds)))
    except Exception as error:  # noqa: BLE001
        return Outcome(name, ops, "failed", f"{type(error).__name__}: {str(error)[:300]}")
    run_loss, _ = _runner(with_loss)
    loss_index = len(with_loss.graph.output) - 1

    def loss(local):
        return run_loss(local)[loss_index]

    rng = _rng(name, "directions")
    for input_name in wrt:
        analytic = np.asarray(values[f"{input_name}.grad"], dtype=np.float64)
        if analytic.shape != feeds[input_name].shape:
            return Outcome(name, ops, "failed", f"d/d{input_name}: shape {analytic.shape}, "
                                                f"input {feeds[input_name].shape}", evaluator)
        numeric, directions = _numeric(loss, feeds, input_name, rng)
        if directions is not None:
            analytic = np.array([(analytic * d).sum() for d in directions])
        scale = max(1.0, float(np.abs(numeric).max(initial=0.0)))
        if not np.allclose(analytic, numeric, rtol=RTOL, atol=ATOL * scale * 10):
            worst = float(np.abs(analytic - numeric).max())
            return Outcome(name, ops, "failed", f"d/d{input_name}: max abs error {worst:.3g} "
                                                f"(scale {scale:.3g})", evaluator)
    return Outcome(name, ops, "passed", evaluator=evaluator)


def _first_line(rule) -> str:
    doc = (rule.__doc__ or "").strip().splitlines()
    return doc[0].strip() if doc else ""


def write_doc(outcomes: list[Outcome]) -> str:
    """The coverage page (markdown) from the check outcomes and the registry."""
    differentiable = differentiable_ops()
    covered = [op for op in differentiable if op in VJP_RULES or op in RECURRENT_OPS]
    missing = [op for op in differentiable if op not in VJP_RULES and op not in RECURRENT_OPS]
    by_op: dict[str, Counter] = {}
    for outcome in outcomes:
        if len(outcome.ops) == 1:
            by_op.setdefault(outcome.ops[0], Counter())[outcome.status] += 1
    status = Counter(o.status for o in outcomes)
    reasons = Counter(o.reason for o in outcomes if o.status == "skipped" and not o.reason.startswith("no rule"))
    lines = [
        "# Gradient coverage",
        "",
        "Generated by `python tools/gradient_coverage.py` (do not edit by hand).",
        "",
        f"**{len(covered)} of {len(differentiable)} differentiable ONNX ops** have a VJP rule or a lowering "
        "(differentiable: an `ai.onnx` op whose schema marks an input and an output differentiable).",
        "",
        "Peer suite (`tests/test_backend_node_vjp.py`): ONNX's backend node tests, cast to float64, "
        "graphc's gradient against central finite differences of the forward: "
        f"{status['passed']} cases pass, {status['failed']} fail (known gaps, listed below: xfail in the suite), "
        f"{status['skipped']} skipped "
        f"(of which {sum(1 for o in outcomes if o.reason.startswith('no rule'))} for an op without a rule).",
        "",
        "Other skip reasons: " + "; ".join(f"{r} ({n})" for r, n in sorted(reasons.items())) + ".",
        "",
        "## Ops with a rule",
        "",
        "| op | rule (signature; formula or lowering) | node tests passed / failed / skipped |",
        "|---|---|---|",
    ]
    for op in sorted(VJP_RULES):
        c = by_op.get(op, Counter())
        formula = _first_line(VJP_RULES[op]).replace("|", "\\|")
        lines.append(f"| `{op}` | {formula} | {c['passed']} / {c['failed']} / {c['skipped']} |")
    for op in RECURRENT_OPS:
        lines.append(f"| `{op}` | lowered to primitive ops before autodiff (`passes/lower_recurrent.py`: unrolled "
                     f"for a static length, a `Scan` otherwise); checked by `tests/test_pass_lower_recurrent.py`, "
                     f"not by the node cases | - |")
    lines += ["", "## Differentiable ops without a rule", "", ", ".join(f"`{op}`" for op in missing) or "none", ""]
    failed = [o for o in outcomes if o.status == "failed"]
    if failed:
        lines += ["## Failing node tests", ""] + [f"- `{o.case}`: {o.reason}" for o in failed] + [""]
    return "\n".join(lines)


def main() -> int:
    outcomes = [check(case) for case in node_cases()]
    DOC.write_text(write_doc(outcomes))
    counts = Counter(o.status for o in outcomes)
    print(f"{DOC}: {dict(counts)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
