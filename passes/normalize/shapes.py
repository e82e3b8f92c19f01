"""``InferShapesPass``: ONNX shape and type inference, so rules see ranks and dims.

Why: gradient rules need the rank of their operands (``Transpose`` without
``perm``, reductions over all axes, ``unbroadcast``); a value without a shape
made rules crash far from the cause. Inference failures name the model.
"""

from __future__ import annotations

import onnx
import onnx_ir as ir


class ShapeInferenceError(ValueError):
    """ONNX shape inference refused the model (inconsistent shapes or types)."""


class InferShapesPass(ir.passes.InPlacePass):
    """Rewrites: every value's type and shape are replaced by what ONNX inference derives from the graph
    inputs (strict mode, data propagation), existing ``value_info`` ignored.

    Invariant: nodes, initializers and graph inputs/outputs are unchanged.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        proto = ir.serde.serialize_model(model)
        del proto.graph.value_info[:]  # a file's stale value_info must not override what its inputs imply
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=True, data_prop=True)
        except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as exc:
            name = model.graph.name or "model"
            raise ShapeInferenceError(f"{name}: ONNX shape inference failed: {str(exc).strip()}") from None
        known = {info.name: info for info in [*inferred.graph.value_info, *inferred.graph.output]}
        modified = False
        for node in model.graph:
            for value in node.outputs:
                info = known.get(value.name)
                if info is None or not info.type.HasField("tensor_type"):
                    continue
                typed = ir.serde.deserialize_value_info_proto(info, None)
                if typed.type is not None and value.type != typed.type:
                    value.type, modified = typed.type, True
                if typed.shape is not None and value.shape != typed.shape:
                    value.shape, modified = typed.shape, True
        return ir.passes.PassResult(model, modified=modified)
