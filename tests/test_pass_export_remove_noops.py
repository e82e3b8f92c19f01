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
