"""``graphc train``: fine-tunes a graphc export and a PyTorch export end to end; exit codes and one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import graphc as gc
from graphc import nn
from runtime.cli import main as cli

REPO = Path(__file__).resolve().parents[1]
torch = pytest.importorskip("torch")  # the test extra's oracle; CI installs it


def digits(folder: Path, rows: int = 600):
    X, Y = gc.data.load_digits()
    np.savez(folder / "train.npz", x=X[:rows], y=Y[:rows])
    np.savez(folder / "val.npz", x=X[1400:], y=Y[1400:])


def graphc_mlp(folder: Path) -> Path:
    gc.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    x = gc.input("x", shape=("batch", 64))
    gc.compile([x], {"logits": model(x)}).save(folder / "mlp.onnx")
    return folder / "mlp.onnx"


def torch_mlp(folder: Path) -> Path:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)).eval()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (torch.zeros(2, 64),), str(folder / "torch_mlp.onnx"), input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "n"}}, opset_version=17, dynamo=False)
    return folder / "torch_mlp.onnx"


def weights(path: Path) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer
            if t.data_type == TensorProto.FLOAT}


def train(capsys, *argv) -> tuple[int, dict | str, str]:
    code = cli(["train", *map(str, argv), "--no-progress", "--json"])
    out, err = capsys.readouterr()
    return code, json.loads(out) if out.strip() else out, err


def numpy_mlp(w: dict, x: np.ndarray, names) -> np.ndarray:
    """The MLP's forward from its weight arrays: (W1, b1, W2, b2) in PyTorch's (out, in) layout."""
    w1, b1, w2, b2 = (w[n] for n in names)
    return np.maximum(x @ w1.T + b1, 0) @ w2.T + b2


@pytest.mark.parametrize("exporter", ["graphc", "torch"])
def test_fine_tunes_and_the_tuned_model_runs_in_graphc_run(exporter, tmp_path, capsys):
    digits(tmp_path)
    model = graphc_mlp(tmp_path) if exporter == "graphc" else torch_mlp(tmp_path)
    input_name = "x" if exporter == "graphc" else "input"
    if exporter == "torch":  # the .npz arrays are named as the model input
        with np.load(tmp_path / "train.npz") as f:
            np.savez(tmp_path / "train.npz", input=f["x"], y=f["y"])
        with np.load(tmp_path / "val.npz") as f:
            np.savez(tmp_path / "val.npz", input=f["x"], y=f["y"])
    code, summary, err = train(capsys, model, "--data", tmp_path / "train.npz", "--input", input_name,
                               "--target", "y", "--loss", "cross_entropy", "--optim", "adam", "--lr", "1e-2",
                               "--epochs", 3, "--batch-size", 32, "--val", tmp_path / "val.npz",
                               "--out", tmp_path / "tuned.onnx")
    assert code == 0, err
    epochs = summary["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3] and summary["steps"] == 3 * 19
    assert epochs[-1]["loss"] < 0.6 * epochs[0]["loss"]
    assert epochs[-1]["val_loss"] < epochs[0]["val_loss"] and epochs[-1]["val_accuracy"] > 0.7  # chance: 0.1

    before, after = weights(model), weights(tmp_path / "tuned.onnx")
    assert before.keys() == after.keys()
    assert all(not np.array_equal(before[k], after[k]) for k in before)
    tuned = onnx.load(str(tmp_path / "tuned.onnx"))
    original = onnx.load(str(model))
    assert [n.op_type for n in tuned.graph.node] == [n.op_type for n in original.graph.node]

    X, _ = gc.data.load_digits()
    np.save(tmp_path / "x.npy", X[1400:1420])
    assert cli(["run", str(tmp_path / "tuned.onnx"), "--input", f"{input_name}={tmp_path / 'x.npy'}",
                "--output-dir", str(tmp_path / "pred")]) == 0
    capsys.readouterr()
    names = ["0.weight", "0.bias", "2.weight", "2.bias"]  # nn.Sequential's names, in both exports
    np.testing.assert_allclose(np.load(tmp_path / "pred" / "logits.npy"), numpy_mlp(after, X[1400:1420], names),
                               rtol=1e-4, atol=1e-5)


def test_frozen_prefixes_stay_exactly_unchanged(tmp_path, capsys):
    digits(tmp_path, rows=200)
    model = graphc_mlp(tmp_path)
    code, _, err = train(capsys, model, "--data", tmp_path / "train.npz", "--input", "x", "--optim", "sgd",
                         "--momentum", 0.9, "--lr", 0.05, "--epochs", 2, "--freeze", "0.", "--out",
                         tmp_path / "tuned.onnx")
    assert code == 0, err
    before, after = weights(model), weights(tmp_path / "tuned.onnx")
    for name in before:
        if name.startswith("0."):
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
        else:
            assert not np.array_equal(after[name], before[name]), name


def test_resume_equals_an_uninterrupted_run(tmp_path, capsys):
    digits(tmp_path, rows=300)
    model = graphc_mlp(tmp_path)
    common = [model, "--data", tmp_path / "train.npz", "--input", "x", "--lr", "1e-2", "--batch-size", 40,
              "--seed", 5]
    code, whole, err = train(capsys, *common, "--epochs", 3, "--out", tmp_path / "whole.onnx")
    assert code == 0, err
    code, first, err = train(capsys, *common, "--epochs", 1, "--checkpoint", tmp_path / "ck",
                             "--out", tmp_path / "part.onnx")
    assert code == 0, err
    assert (tmp_path / "ck" / "train.ckpt").is_file()
    code, rest, err = train(capsys, *common, "--epochs", 3, "--checkpoint", tmp_path / "ck", "--resume",
                            "--out", tmp_path / "resumed.onnx")
    assert code == 0, err
    assert [e["epoch"] for e in rest["epochs"]] == [2, 3]
    assert [e["loss"] for e in first["epochs"] + rest["epochs"]] == [e["loss"] for e in whole["epochs"]]
    uninterrupted, resumed = weights(tmp_path / "whole.onnx"), weights(tmp_path / "resumed.onnx")
    for name in uninterrupted:
        np.testing.assert_array_equal(resumed[name], uninterrupted[name], err_msg=name)


def det_model(folder: Path) -> Path:
    """x (N,3,3) @ W -> Det: an op without a gradient rule on the parameter's path."""
    import passes.autodiff.rules  # noqa: F401  (registers the rules)
    from passes.autodiff.registry import VJP_RULES

    assert "Det" not in VJP_RULES, "pick another op without a VJP rule for this test"
    w = numpy_helper.from_array(np.eye(3, dtype=np.float32) * 2, "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Det", ["h"], ["d"])],
                              "det", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 3])],
                              [helper.make_tensor_value_info("d", TensorProto.FLOAT, ["n"])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), folder / "det.onnx")
    return folder / "det.onnx"


def bad_cases(tmp_path: Path):
    model = tmp_path / "mlp.onnx"
    data = tmp_path / "train.npz"
    base = [model, "--data", data, "--out", tmp_path / "o.onnx"]
    return {
        "unknown input": ([*base, "--input", "nope"], 2, "--input 'nope': the model has no such input"),
        "missing target array": ([*base, "--input", "x", "--target", "labels"], 2, "no array named 'labels'"),
        "float64 data": ([model, "--data", tmp_path / "f64.npz", "--input", "x", "--out", tmp_path / "o.onnx"], 2,
                         "expected dtype float32"),
        "float64 validation data": ([*base, "--input", "x", "--val", tmp_path / "f64.npz"], 2,
                                    "--val array 'x': expected dtype float32"),
        "freeze matches nothing": ([*base, "--input", "x", "--freeze", "fc9"], 2, "--freeze 'fc9' matches no"),
        "resume without checkpoint": ([*base, "--input", "x", "--resume"], 2, "--resume needs --checkpoint"),
        "bad loss": ([*base, "--input", "x", "--loss", "hinge"], 2, "invalid choice: 'hinge'"),
        "zero lr": ([*base, "--input", "x", "--lr", "0"], 2, "--lr must be a positive number"),
        "missing --out": ([model, "--data", data, "--input", "x"], 2, "the following arguments are required: --out"),
        "mse on class indices": ([*base, "--input", "x", "--loss", "mse"], 2, "mse expects dtype float32"),
        "no such model": ([tmp_path / "none.onnx", "--data", data, "--input", "x", "--out", tmp_path / "o.onnx"],
                          None, "none.onnx"),
        "op without a rule": ([tmp_path / "det.onnx", "--data", tmp_path / "det.npz", "--input", "x", "--loss", "mse",
                               "--target", "y", "--out", tmp_path / "o.onnx"], 1, "Det"),
    }


def test_bad_arguments_exit_with_one_line(tmp_path, capsys):
    digits(tmp_path, rows=50)
    graphc_mlp(tmp_path)
    det_model(tmp_path)
    np.savez(tmp_path / "f64.npz", x=np.zeros((4, 64)), y=np.zeros(4, np.int64))
    np.savez(tmp_path / "det.npz", x=np.ones((4, 3, 3), np.float32), y=np.ones(4, np.float32))
    for case, (argv, code, words) in bad_cases(tmp_path).items():
        got = cli(["train", *map(str, argv), "--no-progress"])
        out, err = capsys.readouterr()
        assert got == code if code is not None else got in (1, 2), (case, got, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("graphc: error:"), (case, err)
        assert words in lines[0], (case, lines[0])
        assert not (tmp_path / "o.onnx").exists(), case


def test_the_console_entry_point_gives_the_same_exit_code_and_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "graphc", "train", str(tmp_path / "m.onnx"), "--data", "d.npz",
                           "--input", "x", "--epochs", "-1", "--out", str(tmp_path / "o.onnx")], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == "graphc: error: --epochs must be >= 0, got -1"
