"""FuseGradientSumsPass: a Sum of transposed Gemms becomes one Gemm over concatenations, same results."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper

from passes.fuse_gradient_sums import FuseGradientSumsPass


def model(extra_use: bool = False):
    nodes = [helper.make_node("Gemm", [f"a{i}", f"b{i}"], [f"p{i}"], transA=1) for i in range(3)]
    nodes.append(helper.make_node("Sum", ["p0", "p1", "p2"], ["dw"]))
    outputs = [helper.make_tensor_value_info("dw", TensorProto.FLOAT, [4, 5])]
    if extra_use:
        outputs.append(helper.make_tensor_value_info("p1", TensorProto.FLOAT, [4, 5]))
    inputs = [helper.make_tensor_value_info(f"{k}{i}", TensorProto.FLOAT, [3, 4 if k == "a" else 5])
              for i in range(3) for k in "ab"]
    graph = helper.make_graph(nodes, "g", inputs, outputs)
    return ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)],
                                                        ir_version=10))


def run(ir_model, feeds):
    proto = ir.serde.serialize_model(ir_model)
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def feeds():
    rng = np.random.default_rng(0)
    return {f"{k}{i}": rng.standard_normal((3, 4 if k == "a" else 5)).astype(np.float32)
            for i in range(3) for k in "ab"}


def test_sum_of_transposed_gemms_becomes_one_gemm():
    before = run(model(), feeds())[0]
    result = FuseGradientSumsPass()(model())
    assert result.modified
    assert sorted(n.op_type for n in result.model.graph) == ["Concat", "Concat", "Gemm"]
    np.testing.assert_allclose(run(result.model, feeds())[0], before, rtol=1e-5, atol=1e-6)


def test_a_gemm_used_elsewhere_is_left_alone():
    result = FuseGradientSumsPass()(model(extra_use=True))
    assert not result.modified
    assert sorted(n.op_type for n in result.model.graph) == ["Gemm", "Gemm", "Gemm", "Sum"]
