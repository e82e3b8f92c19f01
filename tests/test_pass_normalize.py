"""The normalisation passes (passes/normalize): each rewrites what its docstring says, keeps outputs equal
(ONNX Runtime before and after), and refuses what it cannot do with an error naming the node and op."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from passes.normalize import (CastLikeToCastPass, CheckDifferentiablePass, ConstantsToInitializersPass,
                              ConvertOpsetPass, FoldConstantsPass, InferShapesPass, NotDifferentiableError,
                              OpsetConversionError)

X = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
W = np.random.default_rng(1).standard_normal((4,)).astype(np.float32)


def model(opset=17) -> ir.Model:
    """y = ReduceMean(x * w, axes=[1] as the opset wants) cast like x; axes built from Constants."""
    nodes = [helper.make_node("Mul", ["x", "w"], ["xw"])]
    if opset < 18:
        nodes.append(helper.make_node("ReduceMean", ["xw"], ["r"], axes=[1], keepdims=0))
    else:
        nodes += [helper.make_node("Constant", [], ["a0"], value_ints=[1]),
                  helper.make_node("Constant", [], ["s0"], value_ints=[-1]),
                  helper.make_node("Reshape", ["a0", "s0"], ["axes"]),
                  helper.make_node("ReduceMean", ["xw", "axes"], ["r"], keepdims=0)]
    nodes.append(helper.make_node("CastLike", ["r", "x"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(W, "w")])
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                                        ir_version=8))


def run(m: ir.Model) -> np.ndarray:
    session = ort.InferenceSession(ir.serde.serialize_model(m).SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": X})[0]


def test_convert_opset_moves_axes_to_an_input_and_keeps_outputs():
    m = model(17)
    before = run(m)
    result = ConvertOpsetPass()(m)
    assert result.modified and result.model.opset_imports[""] == 21
    reduce = next(n for n in result.model.graph if n.op_type == "ReduceMean")
    assert "axes" not in reduce.attributes and len(reduce.inputs) == 2
    np.testing.assert_allclose(run(result.model), before, rtol=1e-6)
    assert not ConvertOpsetPass()(result.model).modified


def test_convert_opset_fallback_and_refusals(monkeypatch):
    import passes.normalize.opset as opset_module

    def broken(*args):
        raise RuntimeError("converter broke")
    monkeypatch.setattr(opset_module.version_converter, "convert_version", broken)
    m = model(17)
    before = run(m)
    result = ConvertOpsetPass()(m)
    np.testing.assert_allclose(run(result.model), before, rtol=1e-6)
    m = model(17)
    next(n for n in m.graph if n.op_type == "Mul").op_type = "GroupNormalization"
    with pytest.raises(OpsetConversionError, match=r"node .* \(op GroupNormalization\) from opset 17 to 21: "
                                                   r"onnx's version converter failed \(converter broke\)"):
        ConvertOpsetPass()(m)
    with pytest.raises(OpsetConversionError, match="opset 11 is not supported; expected an opset from 13 to 21"):
        ConvertOpsetPass()(ir.Model(ir.Graph([], [], nodes=[], opset_imports={"": 11}), ir_version=8))


def test_constants_become_initializers_and_static_nodes_fold():
    m = model(21)
    before = run(m)
    assert ConstantsToInitializersPass()(m).modified
    assert not [n for n in m.graph if n.op_type == "Constant"]
    assert FoldConstantsPass()(m).modified
    assert [n.op_type for n in m.graph] == ["Mul", "ReduceMean", "CastLike"]  # the weight w is not folded
    reduce = next(n for n in m.graph if n.op_type == "ReduceMean")
    assert reduce.inputs[1].const_value.numpy().tolist() == [1]
    np.testing.assert_allclose(run(m), before, rtol=1e-6)


def test_shapes_are_inferred_and_cast_like_becomes_cast():
    m = model(21)
    before = run(m)
    ConstantsToInitializersPass()(m)
    FoldConstantsPass()(m)  # the pipeline's order: axes become static, so the output rank is known
    InferShapesPass()(m)
    y = m.graph.outputs[0]
    assert list(y.shape) == [2, 4] and y.dtype == ir.DataType.FLOAT
    assert CastLikeToCastPass()(m).modified
    assert [n.op_type for n in m.graph][-1] == "Cast"
    np.testing.assert_allclose(run(m), before, rtol=1e-6)


def test_shape_inference_errors_name_the_model():
    m = model(21)
    m.graph.initializers["w"].const_value = ir.Tensor(np.zeros((5,), np.float32))
    m.graph.initializers["w"].shape = ir.Shape([5])
    with pytest.raises(ValueError, match="g: ONNX shape inference failed"):
        InferShapesPass()(m)


def test_check_differentiable_lists_every_node_without_a_rule():
    m = model(21)
    for node in m.graph:
        if node.op_type == "CastLike":
            node.op_type = "Shrink"
            node.resize_inputs(1)
    InferShapesPass()(m)
    with pytest.raises(NotDifferentiableError, match=r"node '.*' \(op Shrink\): no VJP rule is registered"):
        CheckDifferentiablePass()(m)
    assert not CheckDifferentiablePass(wrt_names=[])(m).modified  # nothing trained: nothing to check
