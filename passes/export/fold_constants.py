"""Constant folding: every node whose inputs are all constants becomes an initializer."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass
from onnxscript.optimizer._constant_folding import FoldConstantsPass as _OnnxscriptFolder

# Large enough for recurrent weight matrices (4 * hidden x hidden): folding a weight used by one
# node replaces it, so the file does not grow; the folder itself refuses to duplicate shared ones.
SIZE_LIMIT = 1 << 24


class FoldConstantsPass(ir.passes.InPlacePass):
    """Evaluate constant subgraphs once, at export time.

    Rewrites: a node whose inputs are all initializers (not graph inputs) or ``Constant`` outputs,
    and that is deterministic, is evaluated (onnx's reference implementation) and its outputs become
    initializers; e.g. the ``Gather``/``Unsqueeze``/``Concat`` chains that reorder the gates of eval
    LSTM/GRU weights, or ``Transpose(weight)`` before a ``MatMul``. Initializers and nodes left
    unused are removed.

    Invariant: graph inputs, outputs and their values are unchanged; random ops are never folded.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folder = _OnnxscriptFolder(shape_inference=False, input_size_limit=SIZE_LIMIT,
                                   output_size_limit=SIZE_LIMIT)
        modified = folder(model).modified
        if modified:
            RemoveUnusedNodesPass()(model)
        return ir.passes.PassResult(model, modified)
