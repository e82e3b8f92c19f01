"""Run-time failures in graphc's words: which operation, built on which user line, expected vs given.

ONNX Runtime reports a failing kernel as a C++ message (``reshape_helper.h:84
... Input shape:{6,3}, requested shape:{5,-1}``) after printing it in red on
stderr. A graphc user never wrote a ``Reshape_3`` node; they wrote ``h.view(5,
-1)`` on some line. The front end records that on every node it emits
(``graphc.op`` and ``graphc.source`` node metadata), so a failure can be
traced back to it here, on ``ModelProto``s only (``runtime`` does not import
``graphc``).

- :func:`run_session` runs a session with ONNX Runtime's run-time logging off
  (the error is raised, not printed) and turns its exception into a
  :class:`RunError`.
- :class:`ClassIndexCheck` checks integer class targets of
  ``NegativeLogLikelihoodLoss``/``SoftmaxCrossEntropyLoss`` against the class
  count before running: ONNX Runtime would fail deep inside the loss's
  function body (a nameless ``GatherElements``) without saying which input or
  value was wrong.
"""

from __future__ import annotations

import re

import numpy as np
import onnx
import onnxruntime as ort

from passes.names import OP_KEY, SOURCE_KEY  # node metadata: the graphc operation, the user's "file:line"
from runtime.providers import clean_ort_message

FATAL_ONLY = 4  # ONNX Runtime log severity: 0 verbose ... 3 error, 4 fatal

_QUIET = ort.RunOptions()
_QUIET.log_severity_level = FATAL_ONLY  # the failure comes back as an exception; no red log line on stderr


class RunError(RuntimeError):
    """A model failed while running; the message names the operation, the user's line, expected and given."""


def quiet_run_options() -> ort.RunOptions:
    """Run options that keep ONNX Runtime's per-run error log off stderr (for ``run_with_iobinding``)."""
    return _QUIET


def run_session(session: ort.InferenceSession, output_names, feeds, model: onnx.ModelProto, what: str = "model"):
    """``session.run`` that raises :class:`RunError` in graphc's terms instead of ONNX Runtime's C++ text.

    ``feeds`` are checked for names, dtypes and shapes already; class-index targets are checked here.
    """
    check = class_index_check(session, model)
    if check is not None:
        check(feeds)
    try:
        return session.run(output_names, feeds, _QUIET)
    except Exception as exc:  # ORT's pybind error types share no base class but Exception
        raise translate(exc, model, what) from None


def class_index_check(session, model: onnx.ModelProto) -> "ClassIndexCheck | None":
    """The :class:`ClassIndexCheck` of ``model``, built once per session (kept on the session object)."""
    try:
        return session._graphc_class_index_check
    except AttributeError:
        check = session._graphc_class_index_check = ClassIndexCheck.from_model(model)
        return check


# ---- message rewrites: (pattern on ORT's status message, how to say it) ----
def _dims(text: str) -> str:
    return "(" + ", ".join(d.strip() for d in text.split(",") if d.strip()) + ")"


def _reshape(m: re.Match) -> str:
    given = [int(d) for d in m.group(1).split(",") if d.strip()]
    size = int(np.prod(given)) if given else 1
    return (f"cannot reshape a tensor of shape {_dims(m.group(1))} ({size} elements) to {_dims(m.group(2))}: "
            f"the requested shape must hold exactly {size} elements")


_REWRITES: list[tuple[re.Pattern, object]] = [
    (re.compile(r"Input shape:\{([^}]*)\}, requested shape:\{([^}]*)\}"), _reshape),
    (re.compile(r"idx=(-?\d+) must be within the inclusive range \[(-?\d+),\s*(-?\d+)\]"),
     lambda m: f"index {m.group(1)} is out of range: expected an index in [{m.group(2)}, {m.group(3)}], "
               f"given {m.group(1)}"),
    (re.compile(r"Out of range value in index tensor"),
     lambda m: "an index is out of range of the indexed axis"),
]

_FAILED_NODE = re.compile(r"running (\w+) node\. Name:'([^']*)' Status Message: (.*)", re.S)


def _status_text(message: str) -> str:
    """ORT's status message without C++ file:line, function signatures and ``... was false.`` assertions."""
    text = clean_ort_message(message)  # drops the C++ file:line and function signature
    text = re.sub(r"^\[with [^\]]*\]\s*", "", text)  # template arguments left after the signature
    text = re.sub(r"^.*? was false\.\s*", "", text)  # the failed assertion's C++ expression
    return text.strip()


def _find_node(model: onnx.ModelProto, name: str) -> onnx.NodeProto | None:
    """The node ``name``, or the graph node whose name starts it (ORT's fusions append suffixes)."""
    best = None
    for node in model.graph.node:
        if node.name == name:
            return node
        if node.name and name.startswith(node.name) and (best is None or len(node.name) > len(best.name)):
            best = node
    return best


def describe_node(node: onnx.NodeProto | None, op_type: str = "", name: str = "") -> str:
    """``Tensor.view (at train.py:12)`` for a graphc-built node, else the ONNX node's type and name."""
    meta = {p.key: p.value for p in node.metadata_props} if node is not None else {}
    if OP_KEY in meta or SOURCE_KEY in meta:
        op = meta.get(OP_KEY) or (node.op_type if node is not None else op_type)
        where = f" (at {meta[SOURCE_KEY]})" if SOURCE_KEY in meta else ""
        return f"{op}{where}"
    if name:
        return f"the ONNX {op_type} node {name!r}"
    return f"an ONNX {op_type} node inside an operator's function body"


def translate(exc: BaseException, model: onnx.ModelProto, what: str = "model") -> RunError:
    """One :class:`RunError` for an exception raised by ONNX Runtime while running ``model``."""
    message = str(exc)
    failed = _FAILED_NODE.search(" ".join(message.split()))
    if failed is None:
        return RunError(f"the {what} failed at run time: {_status_text(message)}")
    op_type, name, status = failed.groups()
    detail = _status_text(status)
    for pattern, say in _REWRITES:
        hit = pattern.search(detail)
        if hit:
            detail = say(hit)
            break
    node = _find_node(model, name) if name else None
    return RunError(f"{describe_node(node, op_type, name)} failed at run time: {detail}")


# ---- class-index targets, checked before the run ---------------------------------
_CLASS_LOSSES = ("NegativeLogLikelihoodLoss", "SoftmaxCrossEntropyLoss")
_PASS_THROUGH = ("Cast", "Identity")  # ops graphc puts between the user's int target and the loss


def _static_dims(model: onnx.ModelProto, names: set[str]) -> dict[str, list]:
    """The dims (None where not static) of the values named in ``names`` that the model declares."""
    dims = {}
    for info in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        if info.name not in names:
            continue
        shape = info.type.tensor_type.shape
        dims[info.name] = [d.dim_value if d.HasField("dim_value") else None for d in shape.dim]
    return dims


class ClassIndexCheck:
    """Checks that integer class targets fed to a model lie in [0, classes) or equal the loss's ignore_index.

    Built from the model: each ``NegativeLogLikelihoodLoss`` or
    ``SoftmaxCrossEntropyLoss`` whose target comes (through Cast/Identity) from
    a graph input, and whose scores have a static dim 1 (the class count).
    """

    def __init__(self, targets: list[tuple[str, int, int, str]]):
        self.targets = targets  # (input name, classes, ignore_index, who: "F.cross_entropy (at f.py:3)")

    @classmethod
    def from_model(cls, model: onnx.ModelProto) -> "ClassIndexCheck | None":
        graph = model.graph
        # Only the losses, their pass-through producers and their scores' dims are looked at: an unrolled
        # recurrent step has ~20k nodes, and a map of every producer cost 0.4 s at its first step.
        losses = [node for node in graph.node if node.op_type in _CLASS_LOSSES and len(node.input) >= 2]
        if not losses:
            return None
        producer = {out: node for node in graph.node if node.op_type in _PASS_THROUGH for out in node.output}
        inputs = {i.name for i in graph.input}
        dims = _static_dims(model, {node.input[0] for node in losses})
        targets = []
        for node in losses:
            source = node.input[1]
            while source not in inputs and source in producer and producer[source].op_type in _PASS_THROUGH:
                source = producer[source].input[0]
            scores = dims.get(node.input[0]) or []
            if source not in inputs or len(scores) < 2 or not scores[1]:
                continue
            ignore = next((a.i for a in node.attribute if a.name == "ignore_index"), None)
            targets.append((source, scores[1], ignore, describe_node(node, node.op_type, node.name)))
        return cls(targets) if targets else None

    def __call__(self, feeds: dict) -> None:
        for name, classes, ignore, who in self.targets:
            array = feeds.get(name)
            if array is None or np.size(array) == 0:
                continue
            array = np.asarray(array)
            low, high = array.min(), array.max()  # the common case: two reductions, nothing else
            if low >= 0 and high < classes:
                continue
            bad = (array < 0) | (array >= classes)
            if ignore is not None:
                bad &= array != ignore
            if not bad.any():
                continue
            position = tuple(int(i) for i in np.argwhere(bad)[0])
            allowed = f"[0, {classes - 1}]" + (f" or the ignore_index {ignore}" if ignore is not None else "")
            at = position[0] if len(position) == 1 else position
            raise RunError(f"input {name!r} holds class indices for {who} over {classes} classes: "
                           f"expected values in {allowed}, given {int(array[position])} at index {at}")
