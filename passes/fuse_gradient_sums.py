"""``FuseGradientSumsPass``: a Sum of weight-gradient Gemms becomes one Gemm over concatenations.

A weight used at many places (an unrolled recurrence uses W_hh at every time
step) gets one gradient product per use, which autodiff sums:
``Sum_i Gemm(A_i, B_i; transA=1)`` = ``sum_i A_i^T B_i``. Stacking the
operands along their shared first axis gives the same matrix with one larger
product: ``Gemm(Concat(A_i), Concat(B_i); transA=1)``. One big GEMM runs
faster than many small ones plus the Sum (probe on the 2x128 LSTM step:
31.6 -> 29.5 ms).

Rewrites: ``Sum`` nodes whose every input is the only use of a ``Gemm`` with
transA=1, transB=0, alpha=1 and no C; the Gemms and the Sum are replaced by
two Concats and one Gemm. Invariant: values other than the Sum's output are
untouched; the graph stays topologically sorted.
"""

from __future__ import annotations

import onnx_ir as ir


def _plain_transposed_gemm(value: ir.Value, graph_outputs) -> ir.Node | None:
    node = value.producer()
    if node is None or node.op_type != "Gemm" or node.domain not in ("", "ai.onnx") or len(node.inputs) != 2:
        return None
    attrs = {k: v.value for k, v in node.attributes.items()}
    if attrs.get("transA", 0) != 1 or attrs.get("transB", 0) != 0 or attrs.get("alpha", 1.0) != 1.0:
        return None
    if len(value.uses()) != 1 or value in graph_outputs:
        return None
    return node


class FuseGradientSumsPass(ir.passes.InPlacePass):
    """Sum of Gemm(A_i, B_i; transA=1) -> Gemm(Concat(A_i), Concat(B_i); transA=1)."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in list(graph):
            if node.op_type != "Sum" or len(node.inputs) < 2:
                continue
            gemms = [_plain_transposed_gemm(v, graph.outputs) for v in node.inputs]
            if any(g is None for g in gemms):
                continue
            left = ir.Node("", "Concat", [g.inputs[0] for g in gemms],
                           ir.convenience.convert_attributes({"axis": 0}), name=f"{node.name}/concat_a")
            right = ir.Node("", "Concat", [g.inputs[1] for g in gemms],
                            ir.convenience.convert_attributes({"axis": 0}), name=f"{node.name}/concat_b")
            fused = ir.Node("", "Gemm", [left.outputs[0], right.outputs[0]],
                            ir.convenience.convert_attributes({"transA": 1}), name=f"{node.name}/gemm")
            out = node.outputs[0]
            fused.outputs[0].type, fused.outputs[0].shape = out.type, out.shape
            graph.insert_before(node, [left, right, fused])
            name = out.name
            ir.convenience.replace_all_uses_with(out, fused.outputs[0], replace_graph_outputs=True)
            graph.remove([node, *gemms], safe=True)
            fused.outputs[0].name = name
            modified = True
        return ir.passes.PassResult(model, modified)
