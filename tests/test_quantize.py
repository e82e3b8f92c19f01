"""Post-training quantization: gc.quantize and `graphc quantize` (ONNX Runtime's quantizer), and `graphc info`
on the quantized files. References: the float32 model's outputs (numpy feeds through ONNX Runtime) and
the files' own initializers."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphc as gc
import graphc.nn.functional as F
from graphc import nn
from runtime.cli import main as cli_main
from runtime.cli_commands import model_info
from runtime.cli_quantize import QuantizeError


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 32), nn.Linear(32, 4)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def program():
    gc.manual_seed(3)
    x = gc.input("x", ("batch", 8))
    return gc.compile([x], {"y": Net()(x)})


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(256, 8)).astype(np.float32)


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _ops(path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def _initializer_types(path) -> dict[str, int]:
    return {init.name: init.data_type for init in onnx.load(str(path)).graph.initializer}


def _close_to_float(program, path, x):
    expected = program.run({"x": x})["y"]
    got = _run(path, x)
    spread = expected.max() - expected.min()
    # int8: errors of a few quantization steps of the output range, never more
    assert np.abs(got - expected).max() < 0.05 * spread, np.abs(got - expected).max() / spread
    return expected, got


def test_static_writes_a_qdq_model_close_to_float(program, data, tmp_path):
    out = tmp_path / "m.int8.onnx"
    summary = gc.quantize(program, out, calibration=[{"x": data[i:i + 64]} for i in range(0, 256, 64)])
    assert summary["mode"] == "static" and summary["int8_bytes"] == out.stat().st_size
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(out)
    types = _initializer_types(out)
    assert types["fc1.weight_quantized"] == onnx.TensorProto.INT8
    assert types["fc2.weight_quantized"] == onnx.TensorProto.INT8
    scales = {i.name: list(i.dims) for i in onnx.load(str(out)).graph.initializer}
    assert scales["fc1.weight_scale"] == [32]  # per_channel=True by default: one scale per output channel
    onnx.checker.check_model(onnx.load(str(out)), full_check=True)
    _close_to_float(program, out, data)


def test_static_per_tensor_and_a_tuple_dataloader(program, data, tmp_path):
    out = tmp_path / "m.onnx"
    loader = gc.data.DataLoader(data, np.zeros(len(data), np.int64), batch_size=64)  # (x, y): y is ignored
    gc.quantize(program, out, calibration=loader, per_channel=False)
    scales = {i.name: list(i.dims) for i in onnx.load(str(out)).graph.initializer}
    assert scales["fc1.weight_scale"] == []
    _close_to_float(program, out, data)


def test_dynamic_from_a_file_path(program, data, tmp_path):
    source = tmp_path / "m.onnx"
    program.save(source)
    out = tmp_path / "m.dyn.onnx"
    summary = gc.quantize(str(source), out, mode="dynamic")
    assert "MatMulInteger" in _ops(out) and "DynamicQuantizeLinear" in _ops(out)
    assert summary["int8_bytes"] == out.stat().st_size
    assert _initializer_types(out)["fc1.weight_quantized"] == onnx.TensorProto.INT8
    _close_to_float(program, out, data)


def test_info_counts_int8_weights_as_parameters(program, data, tmp_path):
    out = tmp_path / "m.int8.onnx"
    gc.quantize(program, out, calibration=[{"x": data}])
    float_params = 8 * 32 + 32 + 32 * 4 + 4
    info = model_info(onnx.load(str(out)))
    assert info["parameters"] == float_params  # int8 weights and int32 biases; scales and zero points are not
    types = _initializer_types(out)
    assert sum(1 for t in types.values() if t == onnx.TensorProto.INT8) >= 2


# ---- bad arguments: one clear error each ------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({}, "static mode needs calibration data"),
    ({"mode": "fast"}, "mode must be 'static' or 'dynamic', got 'fast'"),
    ({"mode": "dynamic", "calibration": [{}]}, "calibration data is used by static mode only"),
    ({"calibration": {"x": np.zeros((2, 8), np.float32)}}, "iterable of feed dicts.*got dict"),
    ({"calibration": [{"z": np.zeros((2, 8), np.float32)}]}, "unknown input 'z'; the model's inputs are: 'x'"),
    ({"calibration": [{"x": np.zeros((2, 5), np.float32)}]}, r"batch 0: .*'x'.*8.*5"),
    ({"calibration": [{"x": np.zeros((2, 8), np.float64)}]}, r"batch 0: .*'x'.*float32.*float64"),
    ({"calibration": []}, "holds no batches"),
    ({"calibration": ["not a feed"]}, "batch 0 is a str"),
])
def test_bad_arguments(program, tmp_path, kwargs, match):
    with pytest.raises(QuantizeError, match=match):
        gc.quantize(program, tmp_path / "q.onnx", **kwargs)
    assert not (tmp_path / "q.onnx").exists()


def test_bad_output_paths(program, data, tmp_path):
    with pytest.raises(QuantizeError, match="is a folder; expected a file path"):
        gc.quantize(program, tmp_path, calibration=[{"x": data}])
    with pytest.raises(QuantizeError, match="output folder .*missing.* does not exist"):
        gc.quantize(program, tmp_path / "missing" / "q.onnx", calibration=[{"x": data}])
    with pytest.raises(QuantizeError, match="expected a gc.Program or a path"):
        gc.quantize(42, tmp_path / "q.onnx", mode="dynamic")


# ---- the CLI ----------------------------------------------------------------------
@pytest.fixture()
def files(program, data, tmp_path):
    model = tmp_path / "m.onnx"
    program.save(model)
    np.save(tmp_path / "calib.npy", data)
    return model, tmp_path / "calib.npy"


def test_cli_static_and_dynamic(files, data, program, capsys, tmp_path):
    model, calib = files
    out = tmp_path / "m.int8.onnx"
    assert cli_main(["quantize", str(model), "--out", str(out), "--calibrate", f"x={calib}", "--per-channel"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert {"QuantizeLinear", "DequantizeLinear"} <= _ops(out)
    _close_to_float(program, out, data)
    dyn = tmp_path / "m.dyn.onnx"
    assert cli_main(["quantize", str(model), "--out", str(dyn), "--dynamic", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["mode"] == "dynamic" and summary["int8_bytes"] == dyn.stat().st_size
    assert cli_main(["info", str(dyn), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"] == 8 * 32 + 32 + 32 * 4 + 4


@pytest.mark.parametrize("extra, code, match", [
    ([], 2, "static quantization needs --calibrate"),
    (["--dynamic", "--calibrate", "x=CALIB"], 2, "--calibrate is for static quantization"),
    (["--calibrate", "z=CALIB"], 2, "unknown input 'z'; the model's inputs are: 'x'"),
    (["--calibrate", "x=MISSING"], 2, "input 'x'"),
    (["--calibrate", "x"], 2, "expects NAME=FILE"),
])
def test_cli_errors(files, capsys, tmp_path, extra, code, match):
    model, calib = files
    extra = [e.replace("CALIB", str(calib)).replace("MISSING", str(tmp_path / "nope.npy")) for e in extra]
    assert cli_main(["quantize", str(model), "--out", str(tmp_path / "q.onnx"), *extra]) == code
    err = capsys.readouterr().err
    assert err.startswith("graphc: error:") and len(err.strip().splitlines()) == 1
    assert pytest.importorskip("re").search(match, err), err


def test_cli_output_folder_and_wrong_shape(files, capsys, tmp_path):
    model, _ = files
    np.save(tmp_path / "bad.npy", np.zeros((4, 5), np.float32))
    assert cli_main(["quantize", str(model), "--out", str(tmp_path), "--dynamic"]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert cli_main(["quantize", str(model), "--out", str(tmp_path / "q.onnx"),
                     "--calibrate", f"x={tmp_path / 'bad.npy'}"]) == 2
    err = capsys.readouterr().err
    assert "'x'" in err and "8" in err and "5" in err
    assert cli_main(["quantize", str(tmp_path / "absent.onnx"), "--out", str(tmp_path / "q.onnx"), "--dynamic"]) \
        == cli_main(["run", str(tmp_path / "absent.onnx")])  # same exit code as `graphc run`
