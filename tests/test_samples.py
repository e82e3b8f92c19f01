"""The samples run end to end and reach the accuracies the README promises; their exports run in the CLI."""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest

from runtime.cli import main as cli

SAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samples")


def load(name):
    spec = importlib.util.spec_from_file_location(f"sample_{name}", os.path.join(SAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_linear_regression_recovers_w_and_b():
    w, b = load("linear_regression").main(steps=300)
    assert abs(w - 2.0) < 0.05 and abs(b - 1.0) < 0.05


@pytest.mark.parametrize("name, minimum, model_file, inputs", [
    ("mlp_digits", 0.95, "mlp_digits.onnx", "x_test.npy"),
    ("cnn_digits", 0.97, "cnn_digits.onnx", None),
    ("lstm_digits", 0.95, "lstm_digits.onnx", "x_test_lstm.npy"),
])
def test_digit_samples_reach_their_accuracy_and_their_export_runs(tmp_path, name, minimum, model_file, inputs):
    result = load(name).main(["--out", str(tmp_path), "--no-progress"])
    assert result["accuracy"] >= minimum
    model = tmp_path / model_file
    assert model.is_file()
    x_file = tmp_path / inputs if inputs else next(p for p in tmp_path.glob("x_test*.npy"))
    assert cli(["run", str(model), "--input", f"x={x_file}", "--output-dir", str(tmp_path / "pred")]) == 0
    logits = np.load(tmp_path / "pred" / "logits.npy")
    assert logits.shape == (np.load(x_file).shape[0], 10)


def test_lenet_without_cifar_files_says_how_to_get_them(tmp_path, capsys):
    code = load("lenet_cifar10").main(["--data", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 2
    assert "cifar-10-binary.tar.gz" in captured.out + captured.err
