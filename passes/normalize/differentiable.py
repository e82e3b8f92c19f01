"""``CheckDifferentiablePass``: refuse, before any session exists, a model autodiff cannot differentiate.

Why: a missing rule used to surface as the first failing node deep inside
the gradient walk. This check lists every node on a path that needs a
gradient whose op has no VJP rule, each with its name, its op and the reason.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx_ir as ir

import passes.autodiff.rules  # noqa: F401  (registers every rule)
from passes.autodiff.registry import VJP_RULES, MissingGradientError, is_float
from passes.lower_recurrent import is_recurrent
from passes.normalize.constants import LIFTED_KEY


class NotDifferentiableError(MissingGradientError):
    """Some node between the trained values and the outputs has no gradient rule."""


def nodes_needing_gradients(graph: ir.Graph, wrt: Iterable[ir.Value]) -> list[ir.Node]:
    """Nodes (graph order) that read a float value depending on ``wrt`` and produce a float output."""
    depends = set(wrt)
    active = []
    for node in graph:
        if any(v in depends for v in node.inputs if is_float(v)) and any(is_float(o) for o in node.outputs):
            active.append(node)
            depends.update(o for o in node.outputs if is_float(o))
    return active


def missing_rules(graph: ir.Graph, wrt: Iterable[ir.Value]) -> list[tuple[str, str, str]]:
    """(node name, op, reason) for each node on a gradient path without a rule."""
    found = []
    for node in nodes_needing_gradients(graph, wrt):
        if node.domain not in ("", "ai.onnx"):
            found.append((node.name, f"{node.domain}::{node.op_type}", "graphc differentiates ai.onnx ops only"))
        elif node.op_type not in VJP_RULES and not is_recurrent(node):  # LSTM/GRU/RNN: lowered by autodiff
            found.append((node.name, node.op_type, "no VJP rule is registered for this op"))
    return found


class CheckDifferentiablePass(ir.passes.InPlacePass):
    """Rewrites nothing. Raises :class:`NotDifferentiableError` listing every node between the float
    initializers (or the initializers named in ``wrt_names``) and the outputs that has no VJP rule.

    Invariant: the model is unchanged.
    """

    def __init__(self, wrt_names: Iterable[str] | None = None):
        super().__init__()
        self.wrt_names = None if wrt_names is None else set(wrt_names)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        initializers = model.graph.initializers
        wrt = [v for name, v in initializers.items()
               if is_float(v) and not v.meta.get(LIFTED_KEY) and (self.wrt_names is None or name in self.wrt_names)]
        missing = missing_rules(model.graph, wrt)
        if missing:
            listed = "; ".join(f"node {name!r} (op {op}): {reason}" for name, op, reason in missing)
            ops = sorted({op for _, op, _ in missing})
            raise NotDifferentiableError(f"{model.graph.name or 'model'}: cannot differentiate {len(missing)} "
                                         f"node(s), ops without a gradient rule {ops}: {listed}")
        return ir.passes.PassResult(model, modified=False)
