"""A pass that applies a set of onnxscript rewrite rules, then drops the nodes they left unused."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass
from onnxscript.rewriter import pattern


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant contents (an initializer or a ``Constant`` output), or None.

    An initializer that is also a graph input is not constant: a caller may feed another value.
    """
    if value is None or value.is_graph_input():
        return None
    producer = value.producer()
    if value.const_value is None and producer is not None and producer.op_type == "Constant":
        from onnxscript.optimizer import basic_constant_propagation  # marks Constant outputs' const_value

        basic_constant_propagation([producer])
    if value.const_value is None:
        return None
    return value.const_value.numpy()


def default_opset(context) -> int:
    """The ``ai.onnx`` opset version of the model a rule is matching in."""
    return context.model.opset_imports.get("", 1)


class RulePass(ir.passes.InPlacePass):
    """Apply ``rules`` (commuted where an op is commutative) to the main graph and its subgraphs.

    Invariant: a rule replaces a matched subgraph only when its check holds, and the replacement
    computes the same outputs; nodes left without a use are then removed.
    """

    rules: Sequence[pattern.RewriteRule] = ()
    commute: bool = False
    anchor_ops: frozenset[str] = frozenset()  # every pattern contains one of these ops (empty: always try)
    _rule_sets: dict[type, pattern.RewriteRuleSet] = {}

    @classmethod
    def _rule_set(cls) -> pattern.RewriteRuleSet:
        """Built once per pass class: commuting the patterns costs ~25 ms a pass, and a Program is
        rebuilt (and re-optimised) whenever the weights it exports changed."""
        if cls not in RulePass._rule_sets:
            RulePass._rule_sets[cls] = pattern.RewriteRuleSet(list(cls.rules), commute=cls.commute)
        return RulePass._rule_sets[cls]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if self.anchor_ops and not any(node.op_type in self.anchor_ops
                                       for node in ir.traversal.RecursiveGraphIterator(model.graph)):
            return ir.passes.PassResult(model, False)  # no pattern can match: skip the matching cost
        count = self._rule_set().apply_to_model(model)
        if count:
            RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, bool(count))
