"""The export pipeline as a whole: run by gc.compile / Program.save, and by `graphc optimize` on any model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import graphc as gc
import graphc.nn.functional as F
from graphc import nn
from passes.export.pipeline import optimize_proto

from export_pass_helpers import randn


def session_outputs(path_or_proto, feeds):
    source = path_or_proto.SerializeToString() if isinstance(path_or_proto, onnx.ModelProto) else str(path_or_proto)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)


class ConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.Linear(64, 5)

    def forward(self, x):
        return self.fc(F.max_pool2d(F.relu(self.bn(self.conv(x))), 2).flatten(1))


def test_program_save_writes_the_optimized_model(tmp_path):
    gc.manual_seed(0)
    module = ConvNet()
    module.eval()
    x = gc.input("x", shape=("batch", 3, 8, 8))
    logits = module(x)
    program, raw = gc.compile([x], {"logits": logits}), gc.compile([x], {"logits": logits}, optimize=False)
    program.save(tmp_path / "opt.onnx")
    raw.save(tmp_path / "raw.onnx")
    saved = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert "BatchNormalization" not in saved and "BatchNormalization" in [n.op_type for n in raw.model.graph.node]
    assert any(r.name == "fuse-batchnorm" and r.modified for r in program.export_report)
    feeds = {"x": randn(2, 3, 8, 8)}
    np.testing.assert_allclose(session_outputs(tmp_path / "opt.onnx", feeds)[0],
                               session_outputs(tmp_path / "raw.onnx", feeds)[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(program.run(feeds)["logits"], raw.run(feeds)["logits"], rtol=1e-5, atol=1e-6)


def torch_export(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                                 torch.nn.Flatten(), torch.nn.Linear(144, 5), torch.nn.LayerNorm(5))
    module.eval()
    path = tmp_path / "torch.onnx"
    torch.onnx.export(module, (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"], dynamic_axes={"x": {0: "batch"}}, do_constant_folding=False)
    return path


def test_pipeline_on_a_pytorch_export_keeps_outputs(tmp_path):
    path = torch_export(tmp_path)
    original = onnx.load(str(path))
    optimized, reports = optimize_proto(original)
    onnx.checker.check_model(optimized, full_check=True)
    assert len(optimized.graph.node) <= len(original.graph.node)
    feeds = {"x": randn(3, 3, 8, 8)}
    np.testing.assert_allclose(session_outputs(optimized, feeds)[0], session_outputs(original, feeds)[0],
                               rtol=1e-5, atol=1e-5)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "runtime.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def test_cli_optimize_prints_what_changed_and_writes_a_valid_model(tmp_path):
    gc.manual_seed(0)
    module = ConvNet()
    module.eval()
    x = gc.input("x", shape=("batch", 3, 8, 8))
    raw_path, out = tmp_path / "raw.onnx", tmp_path / "out.onnx"
    gc.compile([x], {"logits": module(x)}, optimize=False).save(raw_path)
    result = run_cli("optimize", raw_path, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "fuse-batchnorm: " in result.stdout and " -> " in result.stdout
    onnx.checker.check_model(str(out), full_check=True)
    feeds = {"x": randn(2, 3, 8, 8)}
    np.testing.assert_allclose(session_outputs(out, feeds)[0], session_outputs(raw_path, feeds)[0], rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("case", ["missing", "malformed", "out_is_folder"])
def test_cli_optimize_bad_input_is_one_line_with_run_exit_codes(tmp_path, case):
    model = tmp_path / "m.onnx"
    if case == "malformed":
        model.write_bytes(b"not a model")
    out = tmp_path if case == "out_is_folder" else tmp_path / "o.onnx"
    if case == "out_is_folder":
        torch_export(tmp_path).rename(model)
    result = run_cli("optimize", model, "--out", out)
    # the codes of `graphc run` on the same file: 2 bad usage or missing input, 1 a malformed model
    expected = 2 if case == "out_is_folder" else run_cli("run", model).returncode
    assert expected in (1, 2) and result.returncode == expected, (result.returncode, result.stderr)
    assert result.stderr.startswith("graphc: error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o.onnx").exists()
