"""``ConstantsToInitializersPass``: every ``Constant`` node of the main graph becomes an initializer.

Why: gradient rules read static operands (axes, shapes, pads, slice bounds)
from ``value.const_value``, which onnx_ir sets for initializers. A constant
held in a ``Constant`` node read as "non-constant" and blocked rules
("ReduceMean with non-constant axes").
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import LiftConstantsToInitializersPass

from passes.names import LIFTED_KEY  # value.meta key: initializers made from Constant nodes are not weights


class ConstantsToInitializersPass(ir.passes.InPlacePass):
    """Rewrites: each main-graph ``Constant`` (any form: ``value``, ``value_float(s)``, ``value_int(s)``, ...)
    becomes an initializer of the same value, marked in ``meta[LIFTED_KEY]``.

    Invariant: the model computes the same outputs; no ``Constant`` node is left in the main graph.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        before = set(model.graph.initializers)
        result = LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)
        for name, value in model.graph.initializers.items():
            if name not in before:
                value.meta[LIFTED_KEY] = True
        return ir.passes.PassResult(model, modified=result.modified)
