"""Normalisation of imported models before differentiation, one pass per file.

``normalize(model)`` runs them in order: opset conversion to graphc's opset,
``Constant`` nodes to initializers, folding of nodes computed
from constants only (never from weights), shape and type inference, ``CastLike`` of a
known dtype to ``Cast``. The check that
every node can be differentiated (``CheckDifferentiablePass``) is separate:
an imported model used for inference only does not need it.
"""

from __future__ import annotations

import onnx_ir as ir

from passes.normalize.cast_like import CastLikeToCastPass
from passes.normalize.constants import ConstantsToInitializersPass
from passes.normalize.fold_constants import FoldConstantsPass
from passes.normalize.differentiable import CheckDifferentiablePass, NotDifferentiableError
from passes.normalize.opset import ConvertOpsetPass, OpsetConversionError
from passes.normalize.shapes import InferShapesPass


def normalize(model: ir.Model) -> ir.Model:
    """The model at graphc's opset, constants as initializers, every value typed and shaped where ONNX can tell.

    Runs ``passes.pipelines.import_pipeline()``, where the order of these passes is stated.
    """
    from passes.pipelines import import_pipeline  # pipelines imports this package's passes

    return import_pipeline()(model).model


__all__ = ["normalize", "ConvertOpsetPass", "OpsetConversionError", "ConstantsToInitializersPass", "FoldConstantsPass",
           "InferShapesPass", "CastLikeToCastPass", "CheckDifferentiablePass", "NotDifferentiableError"]
