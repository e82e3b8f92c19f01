"""``PoolOnChannelViewPass``: a training graph's MaxPool runs on a one-channel (N*C, 1, *spatial) view.

Pooling is per channel, so pooling the view and reshaping back gives the same values, and autodiff's
gradient through the two Reshapes is the MaxPool gradient reshaped. Why: ONNX Runtime's NCHWc layout
transformer rewrites a MaxPool whose channel count is a multiple of its block (8 or 16) and that has no
Indices output into its blocked layout, with a ``ReorderInput``/``ReorderOutput`` copy around it where the
neighbours are not blocked (after a BatchNormalization: two copies of the activation per pool and step).
With one channel the transformer leaves the pool alone (docs/performance.md, issue 11). Training graphs
only: in an inference graph the pool usually sits between blocked Convs and the transformer wins.

Rewrites: a ``MaxPool`` whose Indices output is absent or unread, whose input is float32 with static
channel and spatial dims and a channel count that is a multiple of 8 (the smallest NCHWc block):
``MaxPool(x) -> y`` becomes ``Reshape(MaxPool(Reshape(x, [-1, 1, *spatial])), [-1, C, *pooled])`` with
the same attributes (``y`` keeps its name, type and shape). On the view, the MaxPool gradient rule's
per-sample size is one channel's, so tiling windows take its mask lowering (``rules/pool.py``).
Invariant: other values and nodes are untouched; the graph stays topologically sorted.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


# ONNX Runtime's NCHWc block is 8 floats (AVX2) or 16 (AVX-512): a channel count not a multiple of 8 is never
# blocked, so its pool is left as it is.
NCHWC_BLOCK = 8


def _static_dims(value: ir.Value) -> list | None:
    if value.shape is None:
        return None
    return [d if isinstance(d, int) else None for d in value.shape]


def _indices_unread(pool: ir.Node, graph: ir.Graph) -> bool:
    return len(pool.outputs) < 2 or not (pool.outputs[1].uses() or pool.outputs[1] in graph.outputs)


def _shape_const(name: str, dims: list[int]) -> ir.Node:
    return ir.Node("", "Constant", [], [ir.AttrTensor("value", ir.tensor(np.asarray(dims, dtype=np.int64)))],
                   name=name)


class PoolOnChannelViewPass(ir.passes.InPlacePass):
    """MaxPool(x) -> Reshape(MaxPool(Reshape(x, (N*C, 1, *spatial))), (N, C, *pooled))."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for pool in list(graph):
            if pool.op_type != "MaxPool" or pool.domain not in ("", "ai.onnx") or not _indices_unread(pool, graph):
                continue
            x, y = pool.inputs[0], pool.outputs[0]
            x_dims, y_dims = _static_dims(x), _static_dims(y)
            if x.dtype != ir.DataType.FLOAT or x_dims is None or y_dims is None or len(x_dims) < 3 or \
                    None in x_dims[1:] or None in y_dims[1:] or x_dims[1] % NCHWC_BLOCK:
                continue
            base = pool.name or "MaxPool"  # an unnamed pool (imported models) names its pieces by op type
            view_shape = _shape_const(f"{base}/view_shape", [-1, 1, *x_dims[2:]])
            back_shape = _shape_const(f"{base}/back_shape", [-1, *y_dims[1:]])
            view = ir.Node("", "Reshape", [x, view_shape.outputs[0]], name=f"{base}/view")
            attrs = {name: attr.value for name, attr in pool.attributes.items()}
            pooled = ir.Node("", "MaxPool", [view.outputs[0]], ir.convenience.convert_attributes(attrs),
                             name=f"{base}/on_view")
            back = ir.Node("", "Reshape", [pooled.outputs[0], back_shape.outputs[0]], name=f"{base}/back")
            rows = None if x_dims[0] is None else x_dims[0] * x_dims[1]
            view.outputs[0].shape = ir.Shape([rows, 1, *x_dims[2:]])
            pooled.outputs[0].shape = ir.Shape([rows, 1, *y_dims[2:]])
            for value in (view.outputs[0], pooled.outputs[0], back.outputs[0]):
                value.type = y.type
            back.outputs[0].shape = ir.Shape(y.shape)
            graph.insert_before(pool, [view_shape, back_shape, view, pooled, back])
            name = y.name
            ir.convenience.replace_all_uses_with(y, back.outputs[0], replace_graph_outputs=True)
            graph.remove(pool, safe=True)
            back.outputs[0].name = name
            modified = True
        return ir.passes.PassResult(model, modified)
