"""``passes/traversal.py`` follows the outer values that an ``If`` branch reads (ONNX's outer-scope
references), not only node inputs: extraction (``gc.compile``'s) keeps their producers and leaves."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

from passes.extract import extract_model
from passes.traversal import leaf_values, node_reads, topological_nodes


def _branch(value: ir.Value, op_type: str, name: str) -> ir.Graph:
    node = ir.Node("", op_type, [value], name=f"{name}/{op_type}")
    out = node.outputs[0]
    out.name, out.type, out.shape = f"{name}_out", value.type, value.shape
    return ir.Graph([], [out], nodes=[node], name=name)


def _model_parts():
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([3]))
    flag = ir.Value(name="flag", type=ir.TensorType(ir.DataType.BOOL), shape=ir.Shape([]))
    relu = ir.Node("", "Relu", [x], name="relu")
    r = relu.outputs[0]
    r.type, r.shape = x.type, x.shape
    neg = ir.Node("", "Neg", [x], name="neg")  # read only inside the else branch
    n = neg.outputs[0]
    n.type, n.shape = x.type, x.shape
    cond = ir.Node("", "If", [flag], attributes=[ir.AttrGraph("then_branch", _branch(r, "Identity", "then")),
                                                 ir.AttrGraph("else_branch", _branch(n, "Abs", "else"))],
                   name="if")
    y = cond.outputs[0]
    y.type, y.shape = x.type, x.shape
    return x, flag, relu, neg, cond, y


def test_node_reads_and_walks_include_values_read_in_branches():
    x, flag, relu, neg, cond, y = _model_parts()
    assert node_reads(cond) == [flag, relu.outputs[0], neg.outputs[0]]
    order = topological_nodes([y])
    assert set(order) == {relu, neg, cond} and order[-1] is cond
    assert leaf_values([y], order) == [flag, x] or leaf_values([y], order) == [x, flag]


def test_extracted_model_with_branches_reading_outer_values_runs():
    x, flag, _, _, _, y = _model_parts()
    model = extract_model([x, flag], {"y": y})
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    values = np.array([-1.5, 0.0, 2.0], np.float32)
    np.testing.assert_array_equal(session.run(None, {"x": values, "flag": np.array(True)})[0], np.maximum(values, 0))
    np.testing.assert_array_equal(session.run(None, {"x": values, "flag": np.array(False)})[0], np.abs(-values))
