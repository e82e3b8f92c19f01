"""``gc.load_onnx``: parameters named as in the file, calling conventions, ONNX semantics, freezing,
training, checkpoints, export, external data and bad input."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

import graphc as gc
from graphc.errors import ShapeError
from runtime.model_loading import ModelLoadError

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((4, 3)).astype(np.float32)
B1 = RNG.standard_normal((3,)).astype(np.float32)
W2 = RNG.standard_normal((3, 2)).astype(np.float32)


def mlp_proto(opset: int = 21, batch=2) -> onnx.ModelProto:
    """x (batch, 4) -> relu(x @ fc1.weight + fc1.bias) @ fc2.weight -> (y, mean of y over axis 1 at opset's form)."""
    nodes = [helper.make_node("MatMul", ["x", "fc1.weight"], ["h0"]),
             helper.make_node("Add", ["h0", "fc1.bias"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["h2"]),
             helper.make_node("Dropout", ["h2"], ["h3"]),
             helper.make_node("MatMul", ["h3", "fc2.weight"], ["y"])]
    if opset < 18:
        nodes.append(helper.make_node("ReduceMean", ["y"], ["m"], axes=[1], keepdims=0))
    else:
        nodes += [helper.make_node("Constant", [], ["axes"], value=numpy_helper.from_array(np.array([1], np.int64))),
                  helper.make_node("ReduceMean", ["y", "axes"], ["m"], keepdims=0)]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 2]),
                               helper.make_tensor_value_info("m", TensorProto.FLOAT, [batch])],
                              [numpy_helper.from_array(W1, "fc1.weight"), numpy_helper.from_array(B1, "fc1.bias"),
                               numpy_helper.from_array(W2, "fc2.weight")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def numpy_forward(x, w1=W1, b1=B1, w2=W2):
    y = np.maximum(x @ w1 + b1, 0) @ w2
    return y, y.mean(1)


def test_parameters_are_the_float_initializers_named_as_in_the_file():
    model = gc.load_onnx(mlp_proto())
    assert [n for n, _ in model.named_parameters()] == ["fc1.weight", "fc1.bias", "fc2.weight"]
    np.testing.assert_array_equal(model.state_dict()["fc2.weight"], W2)
    assert model.input_names == ["x"] and model.output_names == ["y", "m"]


@pytest.mark.parametrize("by_name", [False, True])
def test_call_inlines_the_graph_with_a_symbolic_batch(by_name):
    model = gc.load_onnx(mlp_proto(batch=2))  # the file fixed batch 2
    x = gc.input("x", ("batch", 4))
    y, m = model(x=x) if by_name else model(x)
    assert y.shape == ("batch", 2) and m.shape == ("batch",)
    batch = RNG.standard_normal((5, 4)).astype(np.float32)
    got = gc.compile([x], {"y": y, "m": m}).run({"x": batch})
    want_y, want_m = numpy_forward(batch)
    np.testing.assert_allclose(got["y"], want_y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["m"], want_m, rtol=1e-5, atol=1e-6)


def test_gradients_match_float64_finite_differences():
    model = gc.load_onnx(mlp_proto(opset=17))  # ReduceMean with axes as an attribute, converted to opset 21
    x = gc.input("x", (3, 4))
    _, m = model(x)
    loss = (m * m).sum()
    grads = gc.grad(loss, model.parameters())
    batch = RNG.standard_normal((3, 4)).astype(np.float32)
    got = gc.compile([x], {f"g{i}": g for i, g in enumerate(grads)}).run({"x": batch})

    def f(w1, b1, w2):
        return float((numpy_forward(batch.astype(np.float64), w1, b1, w2)[1] ** 2).sum())
    params = [W1.astype(np.float64), B1.astype(np.float64), W2.astype(np.float64)]
    for i, p in enumerate(params):
        numeric = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            plus, minus = [q.copy() for q in params], [q.copy() for q in params]
            plus[i][idx] += 1e-6
            minus[i][idx] -= 1e-6
            numeric[idx] = (f(*plus) - f(*minus)) / 2e-6
        np.testing.assert_allclose(got[f"g{i}"], numeric, rtol=1e-3, atol=1e-4)


def test_reduce_rules_read_axes_in_the_form_of_the_nodes_opset():
    """Regression: an opset-17 ReduceMean(axes=[1]) got gradients over all axes (off by a relative 0.875)."""
    import onnx_ir as ir
    from passes.autodiff.registry import VJPContext
    from passes.autodiff.rules.reduce import reduction_axes
    from passes.emitter import Emitter
    x = ir.Value(name="x", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape([2, 3, 4]))
    node = ir.Node("", "ReduceMean", [x], [ir.AttrInt64s("axes", [-1, 1])])
    assert reduction_axes(VJPContext(node, [None], [True], Emitter())) == [1, 2]


def test_frozen_parameters_are_not_trained_and_sgd_matches_numpy():
    model = gc.load_onnx(mlp_proto())
    model.state_dict()  # noqa: B018
    dict(model.named_parameters())["fc1.weight"].requires_grad = False
    x = gc.input("x", ("batch", 4))
    y, _ = model(x)
    loss = (y * y).mean()
    trainer = gc.Trainer(loss, gc.optim.SGD(model.parameters(), lr=0.1), inputs=[x])
    batch = RNG.standard_normal((4, 4)).astype(np.float32)
    trainer.step({"x": batch})
    state = model.state_dict()
    np.testing.assert_array_equal(state["fc1.weight"], W1)
    h = np.maximum(batch @ W1 + B1, 0)
    dy = 2 * (h @ W2) / (h @ W2).size
    np.testing.assert_allclose(state["fc2.weight"], W2 - 0.1 * h.T @ dy, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state["fc1.bias"], B1 - 0.1 * ((dy @ W2.T) * (h > 0)).sum(0), rtol=1e-5, atol=1e-6)


def test_checkpoint_export_and_compile_save_after_fine_tuning(tmp_path):
    model = gc.load_onnx(mlp_proto())
    x = gc.input("x", ("batch", 4))
    y, m = model(x)
    trainer = gc.Trainer((m * m).mean(), gc.optim.Adam(model.parameters(), lr=0.01), inputs=[x])
    batch = RNG.standard_normal((4, 4)).astype(np.float32)
    trainer.step({"x": batch})
    trainer.save_checkpoint(tmp_path / "ckpt")
    after_one = model.state_dict()
    trainer.step({"x": batch})
    trainer.load_checkpoint(tmp_path / "ckpt")
    for name, value in after_one.items():
        np.testing.assert_array_equal(model.state_dict()[name], value)

    tuned = model.export(tmp_path / "tuned.onnx")
    assert [n.op_type for n in tuned.graph.node] == [n.op_type for n in mlp_proto().graph.node]
    state = model.state_dict()
    want_y, _ = numpy_forward(batch[:2], state["fc1.weight"], state["fc1.bias"], state["fc2.weight"])
    got = ReferenceEvaluator(str(tmp_path / "tuned.onnx")).run(["y"], {"x": batch[:2]})[0]
    np.testing.assert_allclose(got, want_y, rtol=1e-5, atol=1e-6)

    gc.compile([x], {"y": y}).save(tmp_path / "graphc.onnx")
    saved = onnx.load(str(tmp_path / "graphc.onnx"))
    assert saved.opset_import[0].version == 21
    np.testing.assert_allclose(ReferenceEvaluator(saved).run(["y"], {"x": batch})[0],
                               numpy_forward(batch, state["fc1.weight"], state["fc1.bias"], state["fc2.weight"])[0],
                               rtol=1e-5, atol=1e-6)


def test_external_data_is_read_through_the_checked_loader(tmp_path):
    onnx.save(mlp_proto(), str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.data",
              size_threshold=0)
    model = gc.load_onnx(tmp_path / "m.onnx")
    np.testing.assert_array_equal(model.state_dict()["fc1.weight"], W1)
    proto = onnx.load(str(tmp_path / "m.onnx"), load_external_data=False)
    with pytest.raises(ModelLoadError, match="external tensor data; pass the model's file path"):
        gc.load_onnx(proto)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../m.data"
    onnx.save(proto, str(tmp_path / "escape.onnx"))
    with pytest.raises(ModelLoadError, match="escape.onnx"):
        gc.load_onnx(tmp_path / "escape.onnx")


def test_bad_calls_name_the_input_the_expected_and_the_given():
    model = gc.load_onnx(mlp_proto())
    with pytest.raises(TypeError, match=r"no input named 'z'; inputs are \['x'\]"):
        model(z=gc.input("z", (2, 4)))
    with pytest.raises(TypeError, match=r"missing input\(s\) \['x'\]"):
        model()
    with pytest.raises(ShapeError, match="input 'x' expects dtype float32, got int64"):
        model(gc.input("x", (2, 4), dtype="int64"))
    with pytest.raises(ShapeError, match=r"input 'x' expects rank 2"):
        model(gc.input("x", (2, 4, 1)))
    with pytest.raises(TypeError, match="must be a graphc Tensor"):
        model(np.zeros((2, 4), np.float32))
    with pytest.raises(TypeError, match="expected a path or an onnx.ModelProto, got int"):
        gc.load_onnx(3)


def test_unsupported_nodes_are_listed_before_any_session():
    proto = mlp_proto()
    proto.graph.node[2].op_type = "Shrink"  # a float op with no VJP rule
    model = gc.load_onnx(proto)
    with pytest.raises(NotImplementedError, match=r"node '.*' \(op Shrink\): no VJP rule"):
        model.check_differentiable()
