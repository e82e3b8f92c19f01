"""No-op ``Identity``, ``Reshape`` and ``Transpose`` nodes and chains removed."""

from __future__ import annotations

import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.common import (
    no_op_transpose_rule,
    reshape_reshape_rule,
    transpose_transpose_rule,
)

from passes.export.rule_pass import RulePass, constant_array


class NoOpReshape(pattern.RewriteRuleClassBase):
    """``Reshape(x, shape)`` that keeps x's shape -> ``x``."""

    def pattern(self, op, x, shape):
        return op.Reshape(x, shape, _outputs=["reshaped"])

    def check(self, context, x, shape, reshaped, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        target = constant_array(shape)
        allowzero = reshaped.producer().attributes.get("allowzero")
        if target is None or x.shape is None or len(target) != len(x.shape):
            return result.fail("the target shape is not a constant of x's rank")
        if allowzero is not None and allowzero.as_int():
            return result.fail("allowzero=1")
        wildcards = 0
        for given, wanted in zip(x.shape, target.tolist()):
            if wanted == -1:
                wildcards += 1
            elif wanted != 0 and given != wanted:  # 0 copies the dim; a symbolic dim never equals a number
                return result.fail(f"dim {given} would become {wanted}")
        if wildcards > 1:
            return result.fail("more than one -1")
        return result

    def rewrite(self, op, x, **_):
        return op.Identity(x)


class RemoveNoOpsPass(RulePass):
    """Remove nodes that compute nothing.

    Rewrites: ``Transpose`` with the identity permutation -> its input; ``Transpose(Transpose(x))``
    -> one ``Transpose`` (or none when the permutations cancel); ``Reshape(Reshape(x, s1), s2)`` ->
    ``Reshape(x, s2)`` when s2 has no 0 or -1; ``Reshape`` to x's own shape -> its input (target a
    constant of x's rank, each entry x's dim, 0, or a single -1; allowzero unset); then every
    ``Identity`` whose output is not a graph output is bypassed. Repeated until nothing changes,
    so chains collapse.

    Invariant: outputs unchanged, bit for bit; graph output names kept.
    """

    rules = (no_op_transpose_rule, transpose_transpose_rule, reshape_reshape_rule, NoOpReshape().rule())

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for _ in range(8):
            changed = super().call(model).modified
            changed = _eliminate_identities(model) or changed
            modified = modified or changed
            if not changed:
                break
        return ir.passes.PassResult(model, modified)


def _eliminate_identities(model: ir.Model) -> bool:
    """``y = Identity(x)`` -> ``x`` everywhere, in every graph and subgraph.

    onnx_ir's IdentityEliminationPass would also remove an Identity between two outputs of one graph,
    leaving one value as both; in a Scan body that value is then both the carried state and the
    per-step output, and ONNX Runtime's Scan returns wrong numbers. Such nodes are kept here.
    """
    modified = False
    graphs = [model.graph, *model.functions.values()]
    for graph in graphs:
        for node in list(ir.traversal.RecursiveGraphIterator(graph)):
            if node.op_type != "Identity" or node.domain != "" or len(node.inputs) != 1 or node.inputs[0] is None:
                continue
            source, result = node.inputs[0], node.outputs[0]
            was_output = result.is_graph_output()
            if was_output and (source.is_graph_input() or source.is_initializer() or source.is_graph_output()):
                continue
            if source.type is None:
                source.type = result.type
            if source.shape is None:
                source.shape = result.shape
            name = result.name
            ir.convenience.replace_all_uses_with(result, source, replace_graph_outputs=True)
            if was_output:
                source.name = name  # a graph output keeps its name
            node.graph.remove(node, safe=True)
            modified = True
    return modified
