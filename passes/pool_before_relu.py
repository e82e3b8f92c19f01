"""``PoolBeforeReluPass``: ``MaxPool(Relu(x))`` becomes ``Relu(MaxPool(x))`` in a graph to be differentiated.

Relu is non-decreasing, so it commutes with a window maximum: the values are equal bit for bit. The
gradients are equal too under the first-maximum tie rule (PyTorch's, ONNX Runtime's, and graphc's
MaxPool rules): in a window whose maximum m of x is > 0, the first maximum of relu(x) is the first
maximum of x (values <= 0 all map to 0 < relu(m)), and relu' = 1 there on both sides; where m <= 0,
relu'(v <= 0) = 0 stops the gradient on both sides (the pooled side sees relu(m) = 0). Pooling first
makes the Relu and its gradient mask as small as the pooled map (4x smaller for 2x2 pools); the price
is ONNX Runtime's Conv+Relu fusion, lost where a Conv fed the Relu (docs/performance.md, issue 11).

Rewrites: a ``Relu`` whose output is read only by one ``MaxPool`` (as its input, not a graph output)
and whose MaxPool's ``Indices`` output is unused and whose windows all read x (no dilations; with
ceil_mode, pad_end + stride <= kernel: a window wholly in the padding pools to the lowest float, which
Relu would make 0): ``MaxPool(Relu(x)) -> y`` becomes
``Relu(MaxPool(x)) -> y`` (same attributes and number of outputs, ``y`` keeps its name, type and
shape). Invariant: every other value and node is untouched; the graph stays topologically sorted.
"""

from __future__ import annotations

import onnx_ir as ir


def _is_op(node: ir.Node | None, op_type: str) -> bool:
    return node is not None and node.op_type == op_type and node.domain in ("", "ai.onnx")


def _pool_reading_only(relu: ir.Node, graph: ir.Graph) -> ir.Node | None:
    """The MaxPool that is the single reader of ``relu``'s output, with its Indices unread; else None."""
    out = relu.outputs[0]
    uses = list(out.uses())
    if len(uses) != 1 or out in graph.outputs:
        return None
    pool, index = uses[0]
    if not _is_op(pool, "MaxPool") or index != 0 or pool.graph is not graph:
        return None
    if len(pool.outputs) > 1 and (pool.outputs[1].uses() or pool.outputs[1] in graph.outputs):
        return None
    if not _every_window_reads_x(pool):
        return None
    return pool


def _every_window_reads_x(pool: ir.Node) -> bool:
    """Whether every pooling window holds at least one element of x.

    A window wholly in the padding pools to the lowest float (ONNX Runtime) or -inf (PyTorch), which
    Relu-after-pool would turn into 0. With dilations, pads may exceed the taps a window reads: refused.
    Without, pads < kernel (ONNX's rule) keeps every window on x, except that ceil_mode may start a last
    window at up to in + pad_end + stride - kernel - 1: on x when pad_end + stride <= kernel per axis.
    """
    def ints(name, default):
        attr = pool.attributes.get(name)
        return list(attr.value) if attr is not None else default
    kernel = ints("kernel_shape", [])
    if any(d != 1 for d in ints("dilations", [])):
        return False
    ceil = pool.attributes.get("ceil_mode")
    if ceil is None or ceil.value == 0:
        return True
    if pool.attributes.get("auto_pad") is not None and pool.attributes["auto_pad"].value not in ("NOTSET", "VALID"):
        return False
    pads = ints("pads", [0] * (2 * len(kernel)))
    strides = ints("strides", [1] * len(kernel))
    return all(pads[len(kernel) + i] + strides[i] <= kernel[i] for i in range(len(kernel)))


class PoolBeforeReluPass(ir.passes.InPlacePass):
    """MaxPool(Relu(x)) -> Relu(MaxPool(x)) where the Relu's output has no other reader."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        modified = False
        for relu in list(graph):
            if not _is_op(relu, "Relu"):
                continue
            pool = _pool_reading_only(relu, graph)
            if pool is None:
                continue
            attrs = {name: attr.value for name, attr in pool.attributes.items()}
            # As many outputs as before: the MaxPool gradient rule reads an unused Indices output if it is there.
            pooled = ir.Node("", "MaxPool", [relu.inputs[0]], ir.convenience.convert_attributes(attrs),
                             num_outputs=len(pool.outputs), name=f"{pool.name or 'MaxPool'}/pool_first")
            for old_value, new_value in zip(pool.outputs[1:], pooled.outputs[1:]):
                new_value.type = old_value.type
                new_value.shape = None if old_value.shape is None else ir.Shape(old_value.shape)
            rectified = ir.Node("", "Relu", [pooled.outputs[0]], name=f"{relu.name or 'Relu'}/after_pool")
            out = pool.outputs[0]
            for value in (pooled.outputs[0], rectified.outputs[0]):
                value.type = out.type
                value.shape = None if out.shape is None else ir.Shape(out.shape)
            graph.insert_before(pool, [pooled, rectified])
            name = out.name
            ir.convenience.replace_all_uses_with(out, rectified.outputs[0], replace_graph_outputs=True)
            graph.remove([pool, relu], safe=True)
            rectified.outputs[0].name = name
            modified = True
        return ir.passes.PassResult(model, modified)
