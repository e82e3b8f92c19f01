"""runtime.input_files: reading .npy/.npz/.json safely and checking feeds against a model."""

import zipfile

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime.input_files import InputError, InputSpec, check_feeds, input_specs, json_to_array, read_input_file

SPECS = [
    InputSpec("x", np.dtype(np.float32), ("batch", 784)),
    InputSpec("labels", np.dtype(np.int64), ("batch",)),
]


def two_input_model():
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(np.zeros((1, 3), np.float32), "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


# ---------------------------------------------------------------- check_feeds

def test_check_feeds_accepts_matching_feeds():
    feeds = {"x": np.zeros((2, 784), np.float32), "labels": np.array([1, 2])}
    checked = check_feeds(SPECS, feeds)
    assert checked["x"] is feeds["x"] and checked["labels"].dtype == np.int64


def test_message_names_input_expected_and_given():
    with pytest.raises(InputError) as info:
        check_feeds(SPECS, {"x": np.zeros((2, 783), np.float32), "labels": np.zeros(2, np.int64)})
    assert str(info.value).startswith("input 'x': expected shape (batch=2, 784) float32, got (2, 783) float32")
    assert "dim 1 is 783, expected 784" in str(info.value)


def test_symbolic_dim_must_agree_across_inputs():
    with pytest.raises(InputError) as info:
        check_feeds(SPECS, {"x": np.zeros((2, 784), np.float32), "labels": np.zeros(3, np.int64)})
    message = str(info.value)
    assert message.startswith("input 'labels': expected shape (batch=2,) int64, got (3,) int64")
    assert "'batch' is 2 in input 'x'" in message


def test_unknown_and_missing_names():
    with pytest.raises(InputError, match=r"unknown input 'images'; the model's inputs are: 'x', 'labels'"):
        check_feeds(SPECS, {"images": np.zeros((2, 784), np.float32)})
    with pytest.raises(InputError, match=r"missing required input 'labels' \(batch,\) int64"):
        check_feeds(SPECS, {"x": np.zeros((2, 784), np.float32)})


def test_inputs_with_initializers_are_optional():
    model = two_input_model()
    specs = {s.name: s for s in input_specs(model)}
    assert specs["a"].required and not specs["b"].required
    assert specs["a"].shape == ("batch", 3) and specs["a"].dtype == np.float32
    check_feeds(model, {"a": np.zeros((4, 3), np.float32)})
    with pytest.raises(InputError, match="'batch' is 4 in input 'a'"):
        check_feeds(model, {"a": np.zeros((4, 3), np.float32), "b": np.zeros((5, 3), np.float32)})


def test_session_inputs_include_overridable_initializers():
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(two_input_model().SerializeToString(), providers=["CPUExecutionProvider"])
    specs = {s.name: s for s in input_specs(session)}
    assert specs["a"].required and not specs["b"].required
    with pytest.raises(InputError, match="expected shape \\(batch, 3\\) float32, got \\(4, 3\\) float64"):
        check_feeds(session, {"a": np.zeros((4, 3))})


def test_dtype_mismatch_and_cast_rules():
    spec = [InputSpec("n", np.dtype(np.int32), (None,))]
    with pytest.raises(InputError, match="dtype float64 is not int32"):
        check_feeds(spec, {"n": np.array([1.0, 2.0])})
    assert check_feeds(spec, {"n": np.array([1.0, 2.0])}, cast=True)["n"].dtype == np.int32
    with pytest.raises(InputError, match="values change when cast to int32"):
        check_feeds(spec, {"n": np.array([1.5])}, cast=True)
    with pytest.raises(InputError, match="values change when cast to int32"):
        check_feeds(spec, {"n": np.array([2**40])}, cast=True)
    half = [InputSpec("h", np.dtype(np.float16), (1,))]
    with pytest.raises(InputError, match="values overflow float16"):
        check_feeds(half, {"h": np.array([1e6], np.float32)}, cast=True)
    assert check_feeds(half, {"h": np.array([0.5])}, cast=True)["h"].dtype == np.float16


# ---------------------------------------------------------------- files

def test_npy_truncated_data_is_refused(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.ones((100, 100), np.float32))
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(InputError, match="truncated.*40000 bytes"):
        read_input_file(path, "x")


def test_npy_not_numpy(tmp_path):
    path = tmp_path / "x.npy"
    path.write_bytes(b"definitely not numpy")
    with pytest.raises(InputError, match="not a valid .npy array"):
        read_input_file(path, "x")


def test_npz_member_header_claiming_more_than_it_holds(tmp_path):
    path = tmp_path / "x.npz"
    with zipfile.ZipFile(path, "w") as archive, archive.open("x.npy", "w") as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "<f8", "fortran_order": False, "shape": (10**12,)})
        member.write(b"\0" * 8)
    with pytest.raises(InputError, match="truncated"):
        read_input_file(path, "x")


def test_npz_garbage(tmp_path):
    path = tmp_path / "x.npz"
    path.write_bytes(b"PK not really a zip")
    with pytest.raises(InputError, match="not a valid .npz archive"):
        read_input_file(path, "x")


def test_a_folder_is_not_an_input_file(tmp_path):
    (tmp_path / "d.npy").mkdir()
    with pytest.raises(InputError, match="not a regular file"):
        read_input_file(tmp_path / "d.npy", "x")


def test_json_file_uses_declared_dtype(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("[[1, 2], [3, 4]]")
    array = read_input_file(path, "x", np.dtype(np.float16))
    assert array.dtype == np.float16 and array.tolist() == [[1, 2], [3, 4]]
    assert read_input_file(path, "x", np.dtype(np.int64)).dtype == np.int64


@pytest.mark.parametrize("data, dtype, message", [
    ([[1, 2], [3]], np.float32, "ragged"),
    ([[1, 2], 3], np.float32, "ragged"),
    ([1, [2, 3]], np.float32, "ragged"),
    ([1, "2"], np.float32, "expected numbers"),
    ([1, None], np.float32, "expected numbers"),
    ({"x": 1}, np.float32, "expected numbers"),
    ([1.5], np.int64, "not an integer"),
    ([300], np.uint8, "out of range for uint8"),
    ([-1], np.uint8, "out of range for uint8"),
    ([1e300], np.float32, "too large for float32"),
    ([True, 1], np.float32, "true/false given"),
    ([1, 0], np.bool_, "true/false values"),
])
def test_json_refusals(data, dtype, message):
    with pytest.raises(ValueError, match=message):
        json_to_array(data, dtype)


def test_json_values():
    assert json_to_array(3.5, np.float32).shape == ()
    assert json_to_array([[], []], np.float32).shape == (2, 0)
    assert json_to_array([True, False], np.bool_).tolist() == [True, False]
    assert json_to_array([[2.0, 3]], np.int64).tolist() == [[2, 3]]


# ---------------------------------------------------------------- hostile files (issue 7, items 28 and 29)

def _deflate_bomb(path, shape, name="x.npy"):
    """An .npz whose member inflates to the full float32 array of `shape` (zeros) from a few hundred kB."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(name, "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": shape})
            zeros, left = bytes(1 << 22), int(np.prod(shape)) * 4
            while left:
                member.write(zeros[:min(left, len(zeros))])
                left -= min(left, len(zeros))
    return path


@pytest.mark.parametrize("shape, message", [
    ((2**24,), "expected shape (batch, 4) float32, got (16777216,) float32: rank 1 is not 2"),
    ((2**22, 5), "dim 1 is 5, expected 4"),
])
def test_npz_bomb_is_refused_by_the_model_shape_before_inflating(tmp_path, monkeypatch, shape, message):
    path = _deflate_bomb(tmp_path / "bomb.npz", shape)
    assert path.stat().st_size < 2**20  # 64 MiB of data inside

    def inflate(*args, **kwargs):
        raise AssertionError("the member's data was inflated")

    monkeypatch.setattr(np.lib.format, "read_array", inflate)
    spec = InputSpec("x", np.dtype(np.float32), ("batch", 4))
    with pytest.raises(InputError) as info:
        read_input_file(path, "x", spec=spec)
    assert str(info.value).startswith("input 'x': expected shape") and message in str(info.value)


def test_npy_shape_checked_against_the_model_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((3, 5), np.float32))
    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **k: pytest.fail("data read"))
    with pytest.raises(InputError, match=r"got \(3, 5\) float32: dim 1 is 5, expected 4"):
        read_input_file(path, "x", spec=InputSpec("x", np.dtype(np.float32), ("batch", 4)))


def test_npz_that_fits_the_model_is_read(tmp_path):
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    np.savez_compressed(tmp_path / "x.npz", x=x)
    got = read_input_file(tmp_path / "x.npz", "x", spec=InputSpec("x", np.dtype(np.float32), ("batch", 4)))
    np.testing.assert_array_equal(got, x)


@pytest.mark.parametrize("shape_text", ["(True, 4)", "(-1, 4)", "(2, -3)"])
def test_npy_header_dims_must_be_non_negative_integers(tmp_path, shape_text):
    header = ("{'descr': '<f4', 'fortran_order': False, 'shape': %s, }" % shape_text).ljust(117) + "\n"
    path = tmp_path / "x.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 64)
    with pytest.raises(InputError, match=r"its header's shape .* is not a tuple of non-negative integers"):
        read_input_file(path, "x")
