"""``AutodiffPass``: add the gradients of a scalar output to any model, as new graph outputs."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import ShapeInferencePass

from passes.autodiff.core import vjp
from passes.emitter import Emitter


def with_inferred_shapes(model: ir.Model) -> ir.Model:
    """``model`` with ONNX shape inference run when a node output has no shape: an untyped value reads
    as non-float to the rules, so a gradient would not cross it (imported models often lack them)."""
    if any(v.shape is None for node in model.graph for v in node.outputs):
        model = ShapeInferencePass()(model).model
    return model


def leaf_values(graph: ir.Graph) -> dict[str, ir.Value]:
    """The values a gradient may be taken with respect to: graph inputs and initializers, by name."""
    known = {v.name: v for v in graph.inputs}
    known.update(graph.initializers)
    return known


class AutodiffPass(ir.passes.InPlacePass):
    """Append ``d loss / d w`` for each ``w`` in ``wrt`` as outputs named ``<w>.grad``.

    Rewrites: adds the backward nodes (one VJP rule per forward op, ``ai.onnx``
    ops only) and one graph output per ``wrt`` value; forward nodes, inputs and
    initializers are untouched. ``wrt`` names graph inputs or initializers of a
    float type. Works on imported models: shapes missing on forward values are
    filled in by ONNX shape inference first. Invariant: the graph stays
    topologically sorted (backward nodes come after every forward node).
    """

    def __init__(self, loss: str, wrt: list[str]):
        super().__init__()
        self.loss = loss
        self.wrt = list(wrt)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        model = with_inferred_shapes(model)
        graph = model.graph
        outputs = {v.name: v for v in graph.outputs}
        if self.loss not in outputs:
            raise ValueError(f"AutodiffPass: the model has no output {self.loss!r}; outputs: {sorted(outputs)}")
        loss = outputs[self.loss]
        known = leaf_values(graph)
        missing = [w for w in self.wrt if w not in known]
        if missing:
            raise ValueError(f"AutodiffPass: {missing} are neither inputs nor initializers; known: {sorted(known)}")
        targets = [known[w] for w in self.wrt]
        grads, emitter = vjp([loss], targets, emitter=Emitter("grad"))
        for target, grad in zip(targets, grads):
            if grad.name is not None or grad in graph.outputs:
                grad = emitter.op("Identity", [grad], dtype=target.dtype, shape=target.shape)
            grad.name = f"{target.name}.grad"
            graph.outputs.append(grad)
        graph.extend(emitter.nodes)
        return ir.passes.PassResult(model, modified=True)
