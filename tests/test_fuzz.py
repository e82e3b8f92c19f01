"""Property tests: random bytes and random small ONNX graphs thrown at the loader, the input reader and
the runner. Every outcome is a result or a clear, classified error: never a crash, a traceback or the
runner's catch-all "unexpected" error."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from runtime.cli import main
from runtime.input_files import InputError, read_input_file
from runtime.model_loading import ModelLoadError, load_model

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _outcome_is_clean(code: int, err: str) -> None:
    assert code in (0, 1, 2), err
    assert "Traceback" not in err and "unexpected" not in err, err
    if code:
        assert err.startswith("graphc: error:"), err


@FUZZ
@given(data=st.binary(max_size=512))
def test_random_bytes_are_refused_as_models(tmp_path, data):
    path = tmp_path / "m.onnx"
    path.write_bytes(data)
    try:
        load_model(path)
    except ModelLoadError as exc:
        assert str(path) in str(exc) or "m.onnx" in str(exc)


@FUZZ
@given(data=st.binary(max_size=256), suffix=st.sampled_from([".npy", ".npz", ".json"]))
def test_random_bytes_are_refused_as_inputs(tmp_path, data, suffix):
    path = tmp_path / f"in{suffix}"
    path.write_bytes(data)
    try:
        array = read_input_file(path, "x", np.dtype(np.float32))
    except InputError as exc:
        assert "'x'" in str(exc) or "x" in str(exc)
    else:
        assert isinstance(array, np.ndarray) and not array.dtype.hasobject


@FUZZ
@given(prefix=st.integers(0, 4000), flip=st.integers(0, 10_000))
def test_truncated_or_flipped_valid_models(tmp_path, capsys, prefix, flip):
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])])
    raw = bytearray(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)],
                                      ir_version=10).SerializeToString())
    raw = raw[: prefix % (len(raw) + 1)]
    if raw:
        raw[flip % len(raw)] ^= 0xFF
    model = tmp_path / "m.onnx"
    model.write_bytes(bytes(raw))
    np.save(tmp_path / "x.npy", np.ones((2, 3), np.float32))
    code = main(["run", str(model), "--input", f"x={tmp_path / 'x.npy'}", "--output-dir", str(tmp_path / "o")])
    _outcome_is_clean(code, capsys.readouterr().err)


UNARY = ["Relu", "Neg", "Exp", "Sigmoid", "Tanh", "Abs", "Softmax", "Identity", "Sqrt", "Log"]
BINARY = ["Add", "Mul", "Sub", "Div", "MatMul", "Max"]
DIMS = st.lists(st.integers(1, 4), min_size=1, max_size=3)


@st.composite
def random_graphs(draw):
    """Small graphs that may be ill-typed or ill-shaped on purpose."""
    shape_a, shape_b = draw(DIMS), draw(DIMS)
    inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, shape_a),
              helper.make_tensor_value_info("b", draw(st.sampled_from([TensorProto.FLOAT, TensorProto.INT64])),
                                            shape_b)]
    names, nodes = ["a", "b"], []
    for i in range(draw(st.integers(1, 5))):
        if draw(st.booleans()):
            op, args = draw(st.sampled_from(UNARY)), [draw(st.sampled_from(names))]
        else:
            op, args = draw(st.sampled_from(BINARY)), [draw(st.sampled_from(names)) for _ in range(2)]
        attrs = {"axis": draw(st.integers(-4, 4))} if op == "Softmax" else {}
        nodes.append(helper.make_node(op, args, [f"v{i}"], **attrs))
        names.append(f"v{i}")
    out = helper.make_tensor_value_info(names[-1], TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "fuzz", inputs, [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", draw(st.sampled_from([13, 21, 99])))],
                              ir_version=draw(st.sampled_from([8, 10, 14])))
    return model, shape_a, shape_b


@FUZZ
@given(case=random_graphs(), feed_shape=DIMS)
def test_random_small_graphs_run_or_fail_cleanly(tmp_path, capsys, case, feed_shape):
    model, shape_a, shape_b = case
    path = tmp_path / "m.onnx"
    onnx.save_model(model, path)
    np.save(tmp_path / "a.npy", np.ones(shape_a, np.float32))
    np.save(tmp_path / "b.npy", np.ones(feed_shape, np.float32))
    code = main(["run", str(path), "--input", f"a={tmp_path / 'a.npy'}", "--input", f"b={tmp_path / 'b.npy'}",
                 "--output-dir", str(tmp_path / "out")])
    _outcome_is_clean(code, capsys.readouterr().err)
    code = main(["info", str(path)])
    _outcome_is_clean(code, capsys.readouterr().err)


@pytest.mark.parametrize("payload", [b"\x93NUMPY\x01\x00" + b"\xff" * 20, b"PK\x03\x04" + b"\x00" * 30])
def test_malformed_headers_name_the_input(tmp_path, payload):
    path = tmp_path / "x.npy"
    path.write_bytes(payload)
    with pytest.raises(InputError, match="'x'|x.npy"):
        read_input_file(path, "x", np.dtype(np.float32))
