"""``LowerDifferentiatedRecurrentPass``: lower the ONNX ``LSTM``/``GRU``/``RNN`` nodes a gradient crosses."""

from __future__ import annotations

from collections.abc import Sequence

import onnx_ir as ir
from passes.autodiff.autodiff_pass import leaf_values, with_inferred_shapes
from passes.autodiff.core import differentiated_nodes
from passes.lower_recurrent import is_recurrent, lower_recurrent_nodes


class LowerDifferentiatedRecurrentPass(ir.passes.InPlacePass):
    """Lower the recurrent nodes between the values named ``wrt`` and output ``loss`` to primitive ops.

    ONNX's recurrent ops have no gradient rule, so autodiff needs them lowered
    (``passes/lower_recurrent.py``); recurrent nodes the gradient does not cross (a frozen
    encoder, a metric) stay fused ops, which ONNX Runtime runs faster. Running it before
    ``AutodiffPass`` or ``TrainingStepPass`` gives the same graph as their own on-demand lowering.

    Rewrites: each such node becomes the lowering of ``lower_node`` (graph outputs keep their
    names); values without a shape are first given one by ONNX shape inference, as
    ``AutodiffPass`` does. Invariant: every other node, input, output and initializer is unchanged;
    the graph stays topologically sorted.
    """

    def __init__(self, loss: str, wrt: Sequence[str]):
        super().__init__()
        self.loss = loss
        self.wrt = list(wrt)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        model = with_inferred_shapes(model)  # as AutodiffPass, which runs next
        graph = model.graph
        outputs = {v.name: v for v in graph.outputs}
        known = leaf_values(graph)
        # A missing loss or unknown wrt name is left to the autodiff pass that follows: it names them.
        wrt = [known[w] for w in self.wrt if w in known]
        if self.loss not in outputs or not wrt:
            return ir.passes.PassResult(model, modified=False)
        crossed = [n for n in differentiated_nodes([outputs[self.loss]], wrt) if is_recurrent(n)]
        mapping = lower_recurrent_nodes(crossed)
        return ir.passes.PassResult(model, modified=bool(mapping))
