"""runtime.model_loading: bad model files, external-data escapes, providers."""

import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime.cli import main
from runtime.model_loading import ModelLoadError, check_external_data, load_model, make_session
from runtime.providers import ProviderError, check_session_providers, resolve_providers

W = np.arange(12, dtype=np.float32).reshape(4, 3) / 4


def external_model(folder, location, offset=None, length=None, in_subgraph=False):
    """y = x @ W with W stored externally at `location` (written as given, nothing checked)."""
    weight = numpy_helper.from_array(W, "W")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": offset, "length": length}
    for key, value in entries.items():
        if value is not None:
            weight.external_data.add(key=key, value=str(value))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])
    if in_subgraph:
        then = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["t"])], "then", [],
                                 [helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", 3])], [weight])
        other = helper.make_graph([helper.make_node("MatMul", ["x", "W2"], ["e"])], "else", [],
                                  [helper.make_tensor_value_info("e", TensorProto.FLOAT, ["batch", 3])],
                                  [numpy_helper.from_array(W, "W2")])
        node = helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("c", TensorProto.BOOL, []), x], [y])
    else:
        graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g", [x], [y], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def folders(tmp_path):
    model_dir = tmp_path / "model"
    outside = tmp_path / "outside"
    model_dir.mkdir()
    outside.mkdir()
    (outside / "w.bin").write_bytes(W.tobytes())
    return model_dir, outside


def test_legitimate_external_data_loads_and_runs(folders):
    model_dir, _ = folders
    (model_dir / "sub").mkdir()
    (model_dir / "sub" / "w.bin").write_bytes(b"\0" * 16 + W.tobytes())
    path = external_model(model_dir, "sub/w.bin", offset=16, length=W.nbytes)
    x = np.ones((2, 4), np.float32)
    (y,) = make_session(path, "cpu").run(None, {"x": x})
    np.testing.assert_allclose(y, x @ W, rtol=1e-6)


def test_onnx_saved_external_data_runs_through_cli(tmp_path, capsys):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(W, "W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    path = tmp_path / "m.onnx"
    onnx.save_model(model, path, save_as_external_data=True, location="m.weights", size_threshold=0)
    assert (tmp_path / "m.weights").exists()
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.save(tmp_path / "x.npy", x)
    assert main(["run", str(path), "-i", f"x={tmp_path / 'x.npy'}", "-o", str(tmp_path / "out")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "out" / "y.npy"), x @ W, rtol=1e-6)
    assert main(["info", str(path)]) == 0
    assert "parameters: 12" in capsys.readouterr().out


@pytest.mark.parametrize("location, message", [
    ("ABSOLUTE", "absolute location"),
    ("C:/weights/w.bin", "absolute location"),
    ("../outside/w.bin", "outside the model's folder"),
    ("sub/../../outside/w.bin", "outside the model's folder"),
    ("", "no location"),
    ("missing.bin", "not found"),
    ("sub", "not a regular file"),
])
def test_external_location_escapes_are_refused(folders, location, message):
    model_dir, outside = folders
    (model_dir / "sub").mkdir()
    if location == "ABSOLUTE":
        location = str(outside / "w.bin")
    path = external_model(model_dir, location, length=W.nbytes)
    with pytest.raises(ModelLoadError, match=message) as info:
        load_model(path)
    assert "tensor 'W'" in str(info.value) and str(path) in str(info.value)
    with pytest.raises(ModelLoadError, match=message):
        make_session(path, "cpu")


def test_symlinked_file_and_folder_are_refused(folders):
    model_dir, outside = folders
    (model_dir / "w.bin").symlink_to(outside / "w.bin")
    with pytest.raises(ModelLoadError, match="symlink"):
        load_model(external_model(model_dir, "w.bin"))
    (model_dir / "linked").symlink_to(outside)
    with pytest.raises(ModelLoadError, match="symlink"):
        load_model(external_model(model_dir, "linked/w.bin"))


@pytest.mark.parametrize("offset, length, message", [
    (40, W.nbytes, "past the end"),
    (0, W.nbytes + 1, "past the end"),
    (W.nbytes + 1, None, "past the end"),
    (-4, None, "not a non-negative integer"),
    ("12abc", None, "not a non-negative integer"),
])
def test_external_extent_outside_the_file_is_refused(folders, offset, length, message):
    model_dir, _ = folders
    (model_dir / "w.bin").write_bytes(W.tobytes())
    with pytest.raises(ModelLoadError, match=message):
        load_model(external_model(model_dir, "w.bin", offset=offset, length=length))


def test_external_escape_inside_a_subgraph_is_refused(folders):
    model_dir, _ = folders
    with pytest.raises(ModelLoadError, match="outside the model's folder"):
        load_model(external_model(model_dir, "../outside/w.bin", in_subgraph=True))


def test_external_escape_exits_1_from_cli(folders, capsys):
    model_dir, _ = folders
    path = external_model(model_dir, "../outside/w.bin")
    assert main(["info", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("graphc: error:") and "outside the model's folder" in err


def test_check_external_data_ignores_inline_tensors(tmp_path):
    model = helper.make_model(helper.make_graph([], "g", [], [], [numpy_helper.from_array(W, "W")]), ir_version=10)
    check_external_data(model, tmp_path)  # nothing external: nothing to refuse


def test_proto_with_external_data_needs_a_path(folders):
    model_dir, _ = folders
    (model_dir / "w.bin").write_bytes(W.tobytes())
    model = load_model(external_model(model_dir, "w.bin"))
    with pytest.raises(ModelLoadError, match="pass the model's file path"):
        make_session(model, "cpu")


def test_load_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="model file not found"):
        load_model(tmp_path / "absent.onnx")
    with pytest.raises(ModelLoadError, match="is a directory"):
        load_model(tmp_path)
    (tmp_path / "empty.onnx").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="empty file"):
        load_model(tmp_path / "empty.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"\xff\xff\xff\xff garbage")
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        load_model(tmp_path / "junk.onnx")


# ---------------------------------------------------------------- providers

def test_resolve_providers():
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert resolve_providers("auto")[-1] == "CPUExecutionProvider"
    with pytest.raises(ProviderError, match="unknown provider 'tpu'"):
        resolve_providers("tpu")


class _FellBack:
    def get_providers(self):
        return ["CPUExecutionProvider"]


def test_cuda_fallback_is_an_error_with_the_reason():
    log = ("\x1b[1;31m2026-01-01 [E:onnxruntime:Default, provider_bridge_ort.cc:2458 operator()] "
           "Failed to load library libonnxruntime_providers_cuda.so with error: libcublasLt.so.13: "
           "cannot open shared object file\x1b[m\n")
    with pytest.raises(ProviderError) as info:
        check_session_providers(_FellBack(), "cuda", log)
    message = str(info.value)
    assert "CUDA was requested" in message and "available providers:" in message
    assert "libcublasLt.so.13: cannot open shared object file" in message
    assert "\x1b" not in message and "[E:onnxruntime" not in message
    check_session_providers(_FellBack(), "cpu", log)
    check_session_providers(_FellBack(), "auto", log)


def test_auto_never_fails_for_want_of_cuda():
    model = helper.make_model(
        helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])]),
        opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    session = make_session(model, "auto")
    assert session.get_providers()[-1] == "CPUExecutionProvider"
    np.testing.assert_array_equal(session.run(None, {"x": np.array([-1, 2], np.float32)})[0], [0, 2])


# ---------------------------------------------------------------- hostile files (issue 7, items 29 and 30)

def test_model_over_the_protobuf_limit_is_refused_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "huge.onnx"
    path.write_bytes(helper.make_model(helper.make_graph([], "g", [], []), ir_version=10).SerializeToString())
    os.truncate(path, 3 * 2**30)  # sparse: 3 GB on paper, nothing on disk

    def read_bytes(self):
        raise AssertionError(f"{self} was read")

    monkeypatch.setattr(type(path), "read_bytes", read_bytes)
    with pytest.raises(ModelLoadError, match=r"3221225472 bytes is over the 2 GiB limit"):
        load_model(path)


def _function_model(folder, location):
    """A model calling local function F whose default attribute `value` is an external tensor W at location."""
    weight = numpy_helper.from_array(W, "W")
    weight.ClearField("raw_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value=location)
    default = helper.make_attribute("value", weight)
    body = [helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(W, "inline")),
            helper.make_node("MatMul", ["a", "w"], ["b"])]
    function = helper.make_function("local", "F", ["a"], ["b"], body, [helper.make_opsetid("", 21)])
    function.attribute_proto.append(default)
    graph = helper.make_graph([helper.make_node("F", ["x"], ["y"], domain="local")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    model = helper.make_model(graph, functions=[function], ir_version=10,
                              opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("local", 1)])
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def test_function_attribute_defaults_are_checked(folders):
    model_dir, _ = folders
    with pytest.raises(ModelLoadError, match="tensor 'W' external data: location '../outside/w.bin' points outside"):
        load_model(_function_model(model_dir, "../outside/w.bin"))


def test_hard_link_to_a_file_outside_is_refused(folders):
    model_dir, outside = folders
    os.link(outside / "w.bin", model_dir / "w.bin")
    with pytest.raises(ModelLoadError, match="'w.bin' has 2 hard links; expected 1"):
        load_model(external_model(model_dir, "w.bin"))


def test_file_swapped_after_the_check_is_never_read(folders, monkeypatch):
    model_dir, _ = folders
    (model_dir / "w.bin").write_bytes(W.tobytes())
    path = external_model(model_dir, "w.bin")
    real_session = ort.InferenceSession

    def swap_then_load(*args, **kwargs):  # an attacker replaces the data file between our check and ORT's open
        (model_dir / "other.bin").write_bytes((W * 100).tobytes())
        os.replace(model_dir / "other.bin", model_dir / "w.bin")
        return real_session(*args, **kwargs)

    monkeypatch.setattr(ort, "InferenceSession", swap_then_load)
    x = np.ones((2, 4), np.float32)
    (y,) = make_session(path, "cpu").run(None, {"x": x})
    np.testing.assert_allclose(y, x @ W, rtol=1e-6)  # the bytes that were checked, not the swapped ones
