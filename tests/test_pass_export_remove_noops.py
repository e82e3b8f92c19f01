"""RemoveNoOpsPass: identity Transposes, cancelling Transpose pairs, no-op Reshapes and Identity go."""

from __future__ import annotations

import onnx_ir as ir

import graphc as gc
import graphc.nn.functional as F
from passes.export.remove_noops import RemoveNoOpsPass

from export_pass_helpers import apply_and_compare, op_types, randn, unoptimized


def test_cancelling_transposes_and_noop_reshape_disappear():
    x = gc.input("x", shape=("batch", 4, 6))
    y = F.relu(x.permute(0, 2, 1).permute(0, 2, 1).reshape(-1, 4, 6))
    model = unoptimized([x], {"y": y})
    assert "Transpose" in op_types(model) and "Reshape" in op_types(model)
    assert apply_and_compare(RemoveNoOpsPass(), model, {"x": randn(3, 4, 6)}).modified
    assert "Transpose" not in op_types(model) and "Reshape" not in op_types(model)


def test_a_real_reshape_and_transpose_stay():
    x = gc.input("x", shape=("batch", 4, 6))
    model = unoptimized([x], {"y": x.transpose(1, 2).reshape(-1, 24)})
    before = op_types(model)
    assert not apply_and_compare(RemoveNoOpsPass(), model, {"x": randn(3, 4, 6)}).modified
    assert op_types(model) == before


def test_reshape_chain_collapses_to_one():
    x = gc.input("x", shape=(2, 12))
    model = unoptimized([x], {"y": x.reshape(4, 6).reshape(3, 8)})
    assert apply_and_compare(RemoveNoOpsPass(), model, {"x": randn(2, 12)}).modified
    assert op_types(model) == ["Reshape"]


def test_identity_removed_but_output_name_kept():
    x = gc.input("x", shape=("batch", 3))
    model = unoptimized([x], {"y": x * 2.0})
    mul = model.graph.outputs[0]
    ident = ir.node("Identity", [mul])
    relu = ir.node("Relu", [ident.outputs[0]])
    relu.outputs[0].name = "z"
    for value in (ident.outputs[0], relu.outputs[0]):
        value.type, value.shape = mul.type, mul.shape
    model.graph.extend([ident, relu])
    model.graph.outputs.append(relu.outputs[0])
    assert apply_and_compare(RemoveNoOpsPass(), model, {"x": randn(2, 3)}).modified
    assert "Identity" not in op_types(model)
    assert [v.name for v in model.graph.outputs] == ["y", "z"]


def test_scan_body_identity_between_two_outputs_is_kept():
    """Regression: removing ``state_out = Identity(h)`` where ``h`` is also the scan output made one body
    value both the carried state and the per-step output, and ONNX Runtime's Scan then gave wrong values."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    body = helper.make_graph(
        [helper.make_node("Add", ["h_in", "x_t"], ["h"]),
         helper.make_node("Identity", ["h"], ["h_out"])],
        "body",
        [helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("x_t", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("h", TensorProto.FLOAT, [3])])
    graph = helper.make_graph(
        [helper.make_node("Scan", ["h0", "xs"], ["h_last", "ys"], body=body, num_scan_inputs=1)],
        "scan",
        [helper.make_tensor_value_info("h0", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("xs", TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor_value_info("h_last", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("ys", TensorProto.FLOAT, [4, 3])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    model = ir.serde.deserialize_model(proto)
    xs = randn(4, 3)
    apply_and_compare(RemoveNoOpsPass(), model, {"h0": np.zeros(3, np.float32), "xs": xs})
    scan_body = next(iter(model.graph)).attributes["body"].as_graph()
    assert [n.op_type for n in scan_body] == ["Add", "Identity"]
    onnx.checker.check_model(ir.serde.serialize_model(model), full_check=True)
