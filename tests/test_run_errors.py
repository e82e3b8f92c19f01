"""Run-time failures are graphc errors: the operation, the user's line, expected and given; nothing on stderr.

Before: ONNX Runtime's C++ text (``reshape_helper.h:84 ...``, ``gather_elements.cc:150 ... Out of range
value in index tensor``) after red ``[E:onnxruntime ...]`` log lines on stderr.
"""

from __future__ import annotations

import inspect

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import graphc as gc
import graphc.nn.functional as F
from graphc import nn
from runtime.run_errors import RunError, run_session


def here() -> str:
    """``file:line`` of the caller's line, as the error should name it."""
    frame = inspect.currentframe().f_back
    return f"{frame.f_code.co_filename}:{frame.f_lineno}"


def states(trainer):
    return {name: trainer.session.read(name) for name in trainer.session.state_names()}


def assert_same_state(before, after):
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_a_view_that_does_not_fit_at_run_time_names_the_view_and_its_line(capfd):
    x = gc.input("x", ("batch", 4))
    y = x.view(5, -1); line = here()  # noqa: E702 (the line the error must name)
    program = gc.compile([x], {"y": y})
    with pytest.raises(RunError) as info:
        program.run({"x": np.ones((6, 4), np.float32)})
    message = str(info.value)
    assert message.startswith(f"Tensor.view (at {line}) failed at run time")
    assert "cannot reshape a tensor of shape (6, 4) (24 elements) to (5, -1)" in message
    assert "reshape_helper" not in message and "onnxruntime" not in message.lower()
    out, err = capfd.readouterr()
    assert err == "" and out == ""
    assert issubclass(gc.RunError, RuntimeError) and gc.RunError is RunError


@pytest.mark.parametrize("io_binding", [False, True])
def test_a_failing_training_step_names_the_reshape_and_changes_nothing(io_binding, capfd):
    x = gc.input("x", ("batch", 6))
    layer = nn.Linear(6, 4)
    loss = layer(x).reshape(3, -1); line = here()  # noqa: E702
    trainer = gc.Trainer(loss.sum(), gc.optim.Adam(layer.parameters(), lr=0.1), [x], io_binding=io_binding)
    trainer.step({"x": np.ones((3, 6), np.float32)})  # 12 elements: fits
    before, steps = states(trainer), trainer.steps_done
    with pytest.raises(RunError, match=rf"^Tensor\.reshape \(at {line}\) failed at run time: cannot reshape a "
                                       rf"tensor of shape \(5, 4\) \(20 elements\) to \(3, -1\)"):
        trainer.step({"x": np.ones((5, 6), np.float32)})
    assert_same_state(before, states(trainer))
    assert trainer.steps_done == steps == 1
    assert capfd.readouterr().err == ""
    trainer.step({"x": np.ones((6, 6), np.float32)})  # still usable afterwards
    assert trainer.steps_done == 2


def build_classifier(io_binding=False, ignore_index=-100):
    x = gc.input("x", ("batch", 4))
    y = gc.input("y", ("batch",), "int64")
    layer = nn.Linear(4, 3)
    loss = F.cross_entropy(layer(x), y, ignore_index=ignore_index); line = here()  # noqa: E702
    trainer = gc.Trainer(loss, gc.optim.SGD(layer.parameters(), lr=0.1), [x, y], io_binding=io_binding)
    return x, y, layer, loss, trainer, line


@pytest.mark.parametrize("io_binding", [False, True])
@pytest.mark.parametrize("labels, bad, index", [([0, 1, 5, 2], 5, 2), ([0, -1, 2, 3], -1, 1), ([3, 0, 0, 0], 3, 0)])
def test_class_labels_out_of_range_name_the_input_and_the_first_bad_value(io_binding, labels, bad, index, capfd):
    _, _, _, _, trainer, line = build_classifier(io_binding)
    before = states(trainer)
    with pytest.raises(RunError) as info:
        trainer.step({"x": np.ones((4, 4), np.float32), "y": np.array(labels)})
    assert str(info.value) == (f"input 'y' holds class indices for F.cross_entropy (at {line}) over 3 classes: "
                               f"expected values in [0, 2] or the ignore_index -100, given {bad} at index {index}")
    assert_same_state(before, states(trainer))
    assert trainer.steps_done == 0
    assert capfd.readouterr().err == ""


def test_the_ignore_index_is_a_valid_label_and_matches_a_numpy_reference():
    x, y, layer, loss, trainer, _ = build_classifier(ignore_index=-100)
    w, b = layer.weight.data.copy(), layer.bias.data.copy()
    xb = np.arange(16, dtype=np.float32).reshape(4, 4) / 10
    yb = np.array([2, -100, 0, 1])
    logits = xb.astype(np.float64) @ w.T + b
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    kept = yb != -100
    expected = -logp[np.arange(4)[kept], yb[kept]].mean()
    assert trainer.step((xb, yb)) == pytest.approx(expected, rel=1e-5)


def test_program_run_checks_class_labels_too():
    x, y, _, loss, _, line = build_classifier()
    program = gc.compile([x, y], {"loss": loss})
    with pytest.raises(RunError, match=rf"input 'y' holds class indices for F.cross_entropy \(at {line}\) over 3 "
                                       rf"classes: expected values in \[0, 2\].*given 7 at index 1$"):
        program.run({"x": np.ones((2, 4), np.float32), "y": np.array([1, 7])})


def test_an_embedding_index_out_of_range_names_the_layer_and_the_range(capfd):
    indices = gc.input("i", ("batch",), "int64")
    table = nn.Embedding(10, 2)
    out = table(indices); line = here()  # noqa: E702
    with pytest.raises(RunError) as info:
        gc.compile([indices], {"e": out}).run({"i": np.array([1, 12])})
    assert str(info.value) == (f"nn.Embedding (at {line}) failed at run time: index 12 is out of range: "
                               f"expected an index in [-10, 9], given 12")
    assert capfd.readouterr().err == ""


def test_a_node_graphc_did_not_build_is_named_by_its_onnx_type_and_name(capfd):
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"], name="imported_reshape")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("shape", TensorProto.INT64, [1], [3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    with pytest.raises(RunError) as info:
        run_session(session, ["y"], {"x": np.ones((2, 2), np.float32)}, model)
    assert str(info.value) == ("the ONNX Reshape node 'imported_reshape' failed at run time: cannot reshape a "
                               "tensor of shape (2, 2) (4 elements) to (3): the requested shape must hold "
                               "exactly 4 elements")
    assert capfd.readouterr().err == ""


def test_nodes_record_the_graphc_operation_and_the_users_line():
    x = gc.input("x", ("batch", 3))
    layer = nn.Linear(3, 2)
    out = F.relu(layer(x)) @ gc.constant(np.ones((2, 2), np.float32)); line = here()  # noqa: E702
    model = gc.compile([x], {"out": out}).model
    onnx.checker.check_model(model, full_check=True)
    recorded = {n.op_type: {p.key: p.value for p in n.metadata_props} for n in model.graph.node}
    assert recorded["Gemm"] == {"graphc.op": "nn.Linear", "graphc.source": line}
    assert recorded["Relu"] == {"graphc.op": "F.relu", "graphc.source": line}
    assert recorded["MatMul"] == {"graphc.op": "Tensor @", "graphc.source": line}
