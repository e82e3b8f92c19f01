"""``ReuseStackedGradientsPass`` (a probe, not in graphc's pipelines): a fused weight-gradient product reads a
stack the graph already has. Tried for issue 11 (``lstm_variants.py --variants now,time_major+stacked_reuse``):
step time unchanged within the noise, so it was not kept; docs/performance.md has the figures.

After ``FuseGradientSumsPass`` an unrolled recurrence's recurrent-weight
gradient is ``Gemm(Concat(dG_1..dG_{T-1}), Concat(h_0..h_{T-2}); transA=1)``:
both operands are fresh copies. The gate gradients are already stacked
elsewhere: the gradient of the input projection's per-step ``Split`` is
``Concat(dG_0..dG_{T-1})``. Since ``sum_i A_i^T B_i`` does not depend on the
order of the pairs, and a piece paired with zeros adds nothing, the product
equals ``Gemm(Concat(dG_0..dG_{T-1}), Concat(0, h_0..h_{T-2}); transA=1)``:
the large left copy (T x B x 4H) is gone, the right one gets B zero rows, and
the product gets 1/T more rows.

Rewrites: a ``Gemm`` (transA=1, transB=0, alpha=1, no C) whose operands are
axis-0 ``Concat``s read by nothing else, when another axis-0 ``Concat`` (the
stack) holds every left piece once and at most a quarter of
its pieces are not left pieces: the left operand becomes the stack; the right
operand is re-concatenated in the stack's order, each foreign piece of the stack
paired with zeros (its rows, the right pieces' columns, sized at run time). The
old Concats go when unread. Exact in real arithmetic and for finite values (a
NaN or infinity in a foreign piece would now reach the sum as NaN; a training
step with one is already non-finite). Invariant: every other value is unchanged;
the graph is topologically sorted afterwards (the stack may come after the Gemm).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnx_ir.passes.common import TopologicalSortPass

# A foreign piece costs a product over zero rows: allow at most one in four.
MAX_FOREIGN_SHARE = 0.25


def _attrs(node: ir.Node) -> dict:
    return {k: v.value for k, v in node.attributes.items()}


def _axis0_concat(value: ir.Value) -> ir.Node | None:
    node = value.producer()
    if node is None or node.op_type != "Concat" or node.domain not in ("", "ai.onnx"):
        return None
    return node if _attrs(node).get("axis") == 0 else None


def _fused_product(node: ir.Node, graph_outputs) -> tuple[ir.Node, ir.Node] | None:
    """The two single-use Concats of a ``Gemm(Concat, Concat; transA=1)``, or None."""
    if node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return None
    attrs = _attrs(node)
    if attrs.get("transA", 0) != 1 or attrs.get("transB", 0) != 0 or attrs.get("alpha", 1.0) != 1.0:
        return None
    concats = [_axis0_concat(v) for v in node.inputs]
    if any(c is None for c in concats) or concats[0] is concats[1]:
        return None
    if any(len(v.uses()) != 1 or v in graph_outputs for v in node.inputs):
        return None
    return concats[0], concats[1]


def _rank2(value: ir.Value) -> bool:
    return value.shape is not None and len(value.shape) == 2


def _stack_holding(pieces: list[ir.Value], own: ir.Node) -> ir.Node | None:
    """Another axis-0 Concat holding each of ``pieces`` exactly once, few others."""
    wanted = set(pieces)
    if len(wanted) != len(pieces):
        return None
    for use in pieces[0].uses():
        stack = use.node
        if stack is own or stack.op_type != "Concat" or _attrs(stack).get("axis") != 0:
            continue
        held = list(stack.inputs)
        if stack.graph is not own.graph or len(set(held)) != len(held) or not wanted <= set(held):
            continue
        if (len(held) - len(pieces)) > MAX_FOREIGN_SHARE * len(held):
            continue
        return stack
    return None


def _depends_on(value: ir.Value, node: ir.Node) -> bool:
    """Whether ``value`` is computed (transitively) from ``node``'s outputs."""
    seen, todo = set(), [value]
    while todo:
        producer = todo.pop().producer()
        if producer is None or producer in seen:
            continue
        if producer is node:
            return True
        seen.add(producer)
        todo.extend(v for v in producer.inputs if v is not None)
    return False


def _zeros_like_rows(graph: ir.Graph, before: ir.Node, rows_of: ir.Value, columns: int,
                     dtype: ir.DataType) -> ir.Value:
    """Zeros of shape (rows of ``rows_of``, ``columns``), the rows read at run time."""
    rows = ir.Node("", "Shape", [rows_of], ir.convenience.convert_attributes({"start": 0, "end": 1}))
    cols = ir.Node("", "Constant", [], ir.convenience.convert_attributes(
        {"value": ir.tensor(np.array([columns], dtype=np.int64))}))
    target = ir.Node("", "Concat", [rows.outputs[0], cols.outputs[0]], ir.convenience.convert_attributes({"axis": 0}))
    zero = ir.Tensor(np.zeros((1,), dtype=dtype.numpy()))
    zeros = ir.Node("", "ConstantOfShape", [target.outputs[0]], ir.convenience.convert_attributes({"value": zero}))
    zeros.outputs[0].type = ir.TensorType(dtype)
    zeros.outputs[0].shape = ir.Shape([rows_of.shape[0] if rows_of.shape is not None else None, columns])
    graph.insert_before(before, [rows, cols, target, zeros])
    return zeros.outputs[0]


class ReuseStackedGradientsPass(ir.passes.InPlacePass):
    """``Gemm(Concat(A_i), Concat(B_i); transA=1)`` -> ``Gemm(stack, Concat(B_i or zeros in its order); transA=1)``."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in list(graph):
            found = _fused_product(node, graph.outputs)
            if found is None:
                continue
            left, right = found
            pieces, partners = list(left.inputs), list(right.inputs)
            if len(pieces) != len(partners) or not all(_rank2(v) for v in partners):
                continue
            columns = partners[0].shape[1]
            if not isinstance(columns, int) or any(v.shape[1] != columns for v in partners):
                continue
            stack = _stack_holding(pieces, left)
            if stack is None or _depends_on(stack.outputs[0], node):
                continue
            partner_of = dict(zip(pieces, partners))
            dtype = partners[0].dtype
            ordered = [partner_of[v] if v in partner_of else _zeros_like_rows(graph, node, v, columns, dtype)
                       for v in stack.inputs]
            stacked_right = ir.Node("", "Concat", ordered, ir.convenience.convert_attributes({"axis": 0}),
                                    name=f"{right.name}/in_stack_order")
            stacked_right.outputs[0].type = ir.TensorType(dtype)
            stacked_right.outputs[0].shape = ir.Shape([None, columns])
            graph.insert_before(node, [stacked_right])
            node.replace_input_with(0, stack.outputs[0])
            node.replace_input_with(1, stacked_right.outputs[0])
            graph.remove([left, right], safe=True)
            modified = True
        if modified:
            TopologicalSortPass()(model)
        return ir.passes.PassResult(model, modified)
