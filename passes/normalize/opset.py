"""``ConvertOpsetPass``: bring a model of an older ``ai.onnx`` opset (13 and up) to graphc's opset.

Why: gradient rules read attributes and inputs in the form of graphc's opset
(axes of ``Reduce*``/``Squeeze``/``Unsqueeze`` as input 1, ``Split``'s sizes
as an input). A model left at opset 17 got gradients off by 0.875 because the
rules read ``ReduceMean``'s axes from an input that opset 17 does not have.

onnx's version converter does the work where it can; when it fails, a
fallback rewrites the ops whose signature changed between the model's opset
and the target and raises :class:`OpsetConversionError` naming the first op it
cannot convert.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import version_converter

from passes import OPSET

MIN_OPSET = 13

# Ops whose axes moved from an attribute to input 1, and the opset where it happened.
_AXES_TO_INPUT = {"ReduceSum": 13, "Squeeze": 13, "Unsqueeze": 13, "ReduceMean": 18, "ReduceMax": 18,
                  "ReduceMin": 18, "ReduceProd": 18, "ReduceL1": 18, "ReduceL2": 18, "ReduceLogSum": 18,
                  "ReduceLogSumExp": 18, "ReduceSumSquare": 18}


class OpsetConversionError(ValueError):
    """The model's opset cannot be brought to graphc's opset."""


def model_opset(model: ir.Model) -> int:
    return model.opset_imports.get("", model.opset_imports.get("ai.onnx", 1))


class ConvertOpsetPass(ir.passes.InPlacePass):
    """Rewrites: the model is re-expressed at ``ai.onnx`` opset ``target`` (default graphc's 21):
    by onnx's version converter; if that fails, by the fallback, which moves ``axes`` attributes to
    int64 inputs (``Reduce*``, ``Squeeze``, ``Unsqueeze``) and ``Split``'s ``split`` attribute to its input,
    and keeps every other op whose schema change is backward compatible.

    Invariant: the outputs are unchanged; a model already at ``target`` is returned as is. Opsets below 13
    and above ``target`` are refused with an error naming both.
    """

    def __init__(self, target: int = OPSET):
        super().__init__()
        self.target = target

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        source = model_opset(model)
        name = model.graph.name or "model"
        if source == self.target:
            return ir.passes.PassResult(model, modified=False)
        if not MIN_OPSET <= source < self.target:
            raise OpsetConversionError(f"{name}: ai.onnx opset {source} is not supported; expected an opset "
                                       f"from {MIN_OPSET} to {self.target} (re-export the model at opset {self.target})")
        try:
            proto = version_converter.convert_version(ir.serde.serialize_model(model), self.target)
            converted = ir.serde.deserialize_model(proto)
        except Exception as exc:  # noqa: BLE001 (the converter raises RuntimeError, ValueError, C++ errors)
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return ir.passes.PassResult(_fallback(model, source, self.target, name, reason), modified=True)
        model.graph = converted.graph  # in place: the caller's model object now holds the converted graph
        model.functions.clear()
        model.functions.update(converted.functions)
        return ir.passes.PassResult(model, modified=True)


def _fallback(model: ir.Model, source: int, target: int, name: str, reason: str) -> ir.Model:
    for node in list(model.graph.all_nodes()):
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in _AXES_TO_INPUT and source < _AXES_TO_INPUT[node.op_type] and "axes" in node.attributes:
            _attribute_to_input(node, "axes", 1)
        elif node.op_type == "Split" and source < 13 and "split" in node.attributes:
            _attribute_to_input(node, "split", 1)
        elif _schema_changed(node.op_type, source, target) and node.op_type not in _COMPATIBLE_CHANGES:
            raise OpsetConversionError(
                f"{name}: cannot convert node {node.name!r} (op {node.op_type}) from opset {source} to {target}: "
                f"onnx's version converter failed ({reason}) and the fallback does not know {node.op_type}'s "
                f"change; re-export the model at opset {target}")
    model.opset_imports[""] = target
    model.opset_imports.pop("ai.onnx", None)
    return model


def _attribute_to_input(node: ir.Node, attribute: str, index: int) -> None:
    values = np.asarray(node.attributes.pop(attribute).value, dtype=np.int64)
    const = ir.Value(name=f"{node.name}_{attribute}", type=ir.TensorType(ir.DataType.INT64), shape=ir.Shape(values.shape),
                     const_value=ir.Tensor(values))
    node.graph.register_initializer(const)
    inputs = list(node.inputs) + [None] * max(0, index + 1 - len(node.inputs))
    inputs[index] = const
    node.resize_inputs(len(inputs))
    node.replace_input_with(index, const)


def _schema_changed(op_type: str, source: int, target: int) -> bool:
    try:
        return onnx.defs.get_schema(op_type, source).since_version != onnx.defs.get_schema(op_type, target).since_version
    except onnx.defs.SchemaError:
        return True


# Changes between opsets 13 and 21 that only add types, optional inputs or attributes with the old default.
_COMPATIBLE_CHANGES = frozenset(
    "Abs Add Acos Acosh Asin Asinh Atan Atanh AveragePool BatchNormalization Cast CastLike Ceil Clip Concat "
    "Constant ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DepthToSpace Div Dropout Einsum Elu Equal Erf Exp "
    "Expand Flatten Floor Gather GatherElements GatherND Gemm Greater GreaterOrEqual HardSigmoid HardSwish Identity "
    "If InstanceNormalization IsInf IsNaN LRN LeakyRelu Less LessOrEqual Log LogSoftmax Loop LpPool MatMul Max "
    "MaxPool Mean Min Mod Mul Neg Not Pad Pow PRelu QuantizeLinear DequantizeLinear Reciprocal Relu Reshape Resize "
    "Round Scan ScatterElements ScatterND Selu Shape Sigmoid Sign Sin Sinh Size Slice Softmax Softplus Softsign "
    "SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Where "
    "GlobalAveragePool GlobalMaxPool LSTM GRU RNN Range Pow Celu Gelu LayerNormalization Mish Softmax "
    "ReduceSum ReduceMean ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp "
    "ReduceSumSquare And Or Xor BitShift ArgMax ArgMin NonZero OneHot Compress Hardmax".split())
