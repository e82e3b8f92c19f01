"""``ConvFromPatchesPass``: a forward Conv computed from the patches its weight gradient already built.

Where the Conv's weight gradient takes ``_weight_grad_by_batch_last_patches`` (``passes/autodiff/rules/conv.py``:
2-D, stride 1, ungrouped, small layers such as LeNet's conv2), the rule builds x's batch-last patches
P[(c, i, j), (p, q, n)] = xp[n, c, p + i, q + j] and records that value on the forward Conv node
(``node.meta[PATCHES_META_KEY]``, in memory only). The Conv's output is the product of the same patches with
the weight: y[n, o, p, q] = sum_{c,i,j} w[o, c, i, j] P[(c, i, j), (p, q, n)] + b[o]. So the forward needs no
im2col of its own: ONNX Runtime's Conv (its own im2col, then a GEMM with M = O) is replaced by one Gemm on the
shared patches and a Transpose of the (O, H', W', N) result back to NCHW. Measured on LeNet's step (1 thread,
probes/step_ab_interleaved.py, ``fwd_patches``): ~3% of its CPU time (docs/performance.md, issue 11).

Rewrites: a ``Conv`` node with recorded patches (whose output is not a graph output) becomes
``Gemm(Reshape(w, [O, C*kh*kw]), P[, Reshape(b, [O, 1])]) -> Reshape [O, H', W', -1] -> Transpose (3, 0, 1, 2)``;
the new output keeps the Conv output's type and shape and takes over all its uses. The values are those of
the Conv up to float32 summation order. Invariant: run right after the autodiff (the rule's record is in
memory); the patches come from the backward part of the graph, so the graph may be out of topological
order afterwards: a topological sort must follow (the cleanup pipeline's).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from passes.autodiff.rules.conv import PATCHES_META_KEY


def _static(value: ir.Value) -> list | None:
    shape = value.shape
    return None if shape is None else [d if isinstance(d, int) else None for d in shape]


class ConvFromPatchesPass(ir.passes.InPlacePass):
    """Each forward Conv whose weight gradient recorded batch-last patches becomes a Gemm on them."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for node in list(graph):
            patches = node.meta.get(PATCHES_META_KEY) if node.op_type == "Conv" else None
            if patches is None or node.outputs[0] in graph.outputs:
                continue
            w_dims, y_dims = _static(node.inputs[1]), _static(node.outputs[0])
            if w_dims is None or y_dims is None or None in w_dims or None in y_dims[2:]:
                continue
            self._replace(graph, node, patches, w_dims, y_dims)
            modified = True
        return ir.passes.PassResult(model, modified)

    @staticmethod
    def _replace(graph: ir.Graph, conv: ir.Node, patches: ir.Value, w_dims, y_dims) -> None:
        out_c, channels, kh, kw = w_dims
        out_h, out_w = y_dims[2:]
        nodes: list[ir.Node] = []

        def add(op_type, inputs, **attributes):
            nodes.append(ir.node(op_type, inputs, attributes=attributes))
            return nodes[-1].outputs[0]

        def ints(values):
            return add("Constant", [], value=ir.tensor(np.asarray(values, np.int64)))

        inputs = [add("Reshape", [conv.inputs[1], ints([out_c, channels * kh * kw])]), patches]
        if len(conv.inputs) > 2 and conv.inputs[2] is not None:
            inputs.append(add("Reshape", [conv.inputs[2], ints([out_c, 1])]))
        product = add("Reshape", [add("Gemm", inputs), ints([out_c, out_h, out_w, -1])])
        y = add("Transpose", [product], perm=[3, 0, 1, 2])
        old = conv.outputs[0]
        y.type, y.shape = old.type, old.shape
        graph.insert_after(conv, nodes)
        old.replace_all_uses_with(y)
        graph.remove(conv, safe=True)
