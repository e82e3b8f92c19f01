"""passes.extract: free-standing builder values -> a standalone, named, checked model."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import graphc as gc
from graphc import nn
from passes.extract import MissingInputError, extract_model


def test_extract_clones_names_and_keeps_only_what_outputs_need():
    gc.manual_seed(0)
    x = gc.input("x", ("batch", 3))
    layer = nn.Linear(3, 2)
    y = layer(x)
    unused = y * 100.0  # recorded but not requested
    del unused
    model = extract_model([x.value], {"y": y.value, "again": y.value, "x_copy": x.value})
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    assert [o.name for o in proto.graph.output] == ["y", "again", "x_copy"]
    assert sorted(t.name for t in proto.graph.initializer) == ["bias", "weight"]
    assert [n.op_type for n in proto.graph.node] == ["Gemm", "Identity", "Identity"]
    assert proto.ir_version == 10 and proto.opset_import[0].version == 21
    # The builder's own nodes are not moved into the model: extracting twice works.
    again = extract_model([x.value], {"y": y.value})
    assert len(again.graph) == 1
    assert y.value.producer().graph is None


def test_outputs_of_unlisted_inputs_are_refused():
    x = gc.input("x", (2,))
    z = gc.input("z", (2,))
    with pytest.raises(MissingInputError, match="'z'.*inputs=\\['x'\\]"):
        extract_model([x.value], {"s": (x + z).value})


def test_duplicate_and_clashing_names_are_refused():
    x = gc.input("x", (2,))
    with pytest.raises(ValueError, match="also input names"):
        extract_model([x.value], {"x": (x * 2).value})


def test_common_subexpressions_are_merged():
    x = gc.input("x", (4,))
    a = (x * 2.0).exp()
    b = (x * 2.0).exp()
    model = extract_model([x.value], {"s": (a + b).value})
    ops = [n.op_type for n in model.graph]
    assert ops.count("Exp") == 1 and ops.count("Mul") == 1
    out = gc.compile([x], {"s": a + b}).run({"x": np.arange(4, dtype=np.float32)})["s"]
    np.testing.assert_allclose(out, 2 * np.exp(2 * np.arange(4, dtype=np.float32)), rtol=1e-6)


def test_modules_without_a_parent_get_unique_parameter_names():
    gc.manual_seed(0)
    x = gc.input("x", ("batch", 2))
    first, second = nn.Linear(2, 2), nn.Linear(2, 1)  # both name their parameters weight and bias
    program = gc.compile([x], {"y": second(first(x))})
    names = sorted(t.name for t in program.model.graph.initializer)
    assert len(set(names)) == 4 and {"weight", "bias"} <= set(names)
    xb = np.ones((1, 2), np.float32)
    hidden = xb @ first.weight.data.T + first.bias.data
    np.testing.assert_allclose(program.run({"x": xb})["y"], hidden @ second.weight.data.T + second.bias.data,
                               rtol=1e-6)
