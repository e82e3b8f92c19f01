"""Black-box tests of the `graphc` command line (runtime.cli.main and `python -m runtime.cli`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime import providers
from runtime.cli import main, safe_file_names
from runtime.model_loading import make_session
from runtime.providers import ProviderError

REPO = Path(__file__).resolve().parents[1]
W = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5) / 7
B = np.array([0.5, -1.0, 2.0], dtype=np.float32)


def expected(x):
    return x.astype(np.float32) @ W + B


def linear_model(output_name="y", ir_version=10, opset=21, op="Add", domain=""):
    """y = x @ W + b with x: (batch, 4) float32, as every case below uses it."""
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node(op, ["h", "b"], [output_name], domain=domain),
    ]
    graph = helper.make_graph(
        nodes, "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(B, "b")],
    )
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=ir_version, producer_name="tests")


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "linear.onnx"
    onnx.save(linear_model(), path)
    return path


@pytest.fixture
def x():
    return np.arange(8, dtype=np.float32).reshape(2, 4) / 3


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- run: each input format

def test_run_npy_writes_outputs_matching_numpy(tmp_path, model_path, x, capsys):
    np.save(tmp_path / "x.npy", x)
    out_dir = tmp_path / "out" / "nested"
    code, out, err = run_cli(capsys, "run", model_path, "--input", f"x={tmp_path / 'x.npy'}", "--output-dir", out_dir)
    assert code == 0, err
    np.testing.assert_allclose(np.load(out_dir / "y.npy"), expected(x), rtol=1e-6)
    assert "y: shape (2, 3) float32" in out
    assert err == ""


def test_run_npz_by_name_and_single_array(tmp_path, model_path, x, capsys):
    np.savez(tmp_path / "named.npz", other=np.zeros(3), x=x)
    code, _, err = run_cli(capsys, "run", model_path, "-i", f"x={tmp_path / 'named.npz'}", "-o", tmp_path / "a")
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "a" / "y.npy"), expected(x), rtol=1e-6)

    np.savez(tmp_path / "single.npz", whatever=x * 2)
    code, _, err = run_cli(capsys, "run", model_path, "-i", f"x={tmp_path / 'single.npz'}", "-o", tmp_path / "b")
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "b" / "y.npy"), expected(x * 2), rtol=1e-6)


def test_run_npz_without_the_name_lists_its_arrays(tmp_path, model_path, x, capsys):
    np.savez(tmp_path / "two.npz", a=x, b=x)
    code, _, err = run_cli(capsys, "run", model_path, "-i", f"x={tmp_path / 'two.npz'}", "-o", tmp_path)
    assert code == 2
    assert "no array named 'x'" in err and "a, b" in err


def test_run_json_input_converted_to_declared_dtype(tmp_path, model_path, capsys):
    (tmp_path / "x.json").write_text("[[1, 2, 3, 4], [0.5, -1, 0, 2]]")
    code, out, err = run_cli(capsys, "run", model_path, "-i", f"x={tmp_path / 'x.json'}", "-o", tmp_path, "--json")
    assert code == 0, err
    want = expected(np.array([[1, 2, 3, 4], [0.5, -1, 0, 2]], dtype=np.float32))
    result = np.load(tmp_path / "y.npy")
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, want, rtol=1e-6)
    summary = json.loads(out)
    assert summary["y"]["shape"] == [2, 3] and summary["y"]["dtype"] == "float32"
    assert summary["y"]["file"] == str(tmp_path / "y.npy")
    np.testing.assert_allclose(summary["y"]["values"], want, rtol=1e-6)


def test_json_summary_omits_values_of_large_outputs(tmp_path, model_path, capsys):
    np.save(tmp_path / "x.npy", np.ones((50, 4), np.float32))
    code, out, _ = run_cli(capsys, "run", model_path, "-i", f"x={tmp_path / 'x.npy'}", "-o", tmp_path, "--json")
    assert code == 0
    assert json.loads(out)["y"] == {"shape": [50, 3], "dtype": "float32", "file": str(tmp_path / "y.npy")}


@pytest.mark.parametrize("text, message", [
    ("[[1, 2, NaN, 4]]", "NaN is not allowed"),
    ("[[1, 2, 3, Infinity]]", "Infinity is not allowed"),
    ("[[1, 2, 3, 4], [1, 2]]", "ragged"),
    ('[[1, 2, "3", 4]]', "expected numbers"),
    ("[[1, 2, 3, 4]", "not valid numeric JSON"),
])
def test_run_json_refusals(tmp_path, model_path, capsys, text, message):
    (tmp_path / "x.json").write_text(text)
    code, _, err = run_cli(capsys, "run", model_path, "-i", f"x={tmp_path / 'x.json'}", "-o", tmp_path)
    assert code == 2
    assert err.startswith("graphc: error: input 'x'") and message in err
    assert not (tmp_path / "y.npy").exists()


# ---------------------------------------------------------------- run: bad input

def test_wrong_shape_names_input_expected_and_given(tmp_path, model_path, capsys):
    np.save(tmp_path / "x.npy", np.ones((2, 5), np.float32))
    code, _, err = run_cli(capsys, "run", model_path, "-i", f"x={tmp_path / 'x.npy'}", "-o", tmp_path)
    assert code == 2
    assert "input 'x': expected shape (batch=2, 4) float32, got (2, 5) float32" in err
    assert err.count("\n") == 1


def test_wrong_rank(tmp_path, model_path, capsys):
    np.save(tmp_path / "x.npy", np.ones(4, np.float32))
    code, _, err = run_cli(capsys, "run", model_path, "-i", f"x={tmp_path / 'x.npy'}", "-o", tmp_path)
    assert code == 2 and "rank 1 is not 2" in err and "got (4,) float32" in err


def test_wrong_dtype_refused_then_cast(tmp_path, model_path, x, capsys):
    np.save(tmp_path / "x.npy", x.astype(np.float64))
    code, _, err = run_cli(capsys, "run", model_path, "-i", f"x={tmp_path / 'x.npy'}", "-o", tmp_path)
    assert code == 2
    assert "input 'x': expected shape (batch, 4) float32, got (2, 4) float64" in err and "--cast" in err
    code, _, err = run_cli(capsys, "run", model_path, "-i", f"x={tmp_path / 'x.npy'}", "-o", tmp_path, "--cast")
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected(x), rtol=1e-6)


def test_unknown_input_name_lists_valid_names(tmp_path, model_path, x, capsys):
    np.save(tmp_path / "x.npy", x)
    code, _, err = run_cli(capsys, "run", model_path, "-i", f"images={tmp_path / 'x.npy'}", "-o", tmp_path)
    assert code == 2
    assert "unknown input 'images'" in err and "inputs are: 'x'" in err


def test_missing_required_input_is_named(tmp_path, model_path, capsys):
    code, _, err = run_cli(capsys, "run", model_path, "-o", tmp_path)
    assert code == 2 and "missing required input 'x' (batch, 4) float32" in err


def test_missing_input_file(tmp_path, model_path, capsys):
    code, _, err = run_cli(capsys, "run", model_path, "-i", f"x={tmp_path / 'nope.npy'}", "-o", tmp_path)
    assert code == 2 and "file not found" in err and "nope.npy" in err


def test_unsupported_input_extension(tmp_path, model_path, capsys):
    (tmp_path / "x.csv").write_text("1,2,3,4")
    code, _, err = run_cli(capsys, "run", model_path, "-i", f"x={tmp_path / 'x.csv'}", "-o", tmp_path)
    assert code == 2 and "unsupported file type '.csv'" in err


@pytest.mark.parametrize("arg", ["x.npy", "=x.npy", "x="])
def test_malformed_input_argument(tmp_path, model_path, capsys, arg):
    code, _, err = run_cli(capsys, "run", model_path, "-i", arg, "-o", tmp_path)
    assert code == 2 and "--input expects NAME=FILE" in err


class _WritesFileWhenUnpickled:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_pickle_payload_is_never_unpickled(tmp_path, model_path, capsys, suffix):
    marker = tmp_path / "pwned"
    payload = np.empty(1, dtype=object)
    payload[0] = _WritesFileWhenUnpickled(str(marker))
    path = tmp_path / f"x{suffix}"
    if suffix == ".npy":
        np.save(path, payload, allow_pickle=True)
    else:
        np.savez(path, x=payload)
    code, _, err = run_cli(capsys, "run", model_path, "-i", f"x={path}", "-o", tmp_path)
    assert code == 2 and "object array" in err
    assert not marker.exists()


def test_npy_header_claiming_more_than_the_file_holds(tmp_path, model_path, capsys):
    path = tmp_path / "x.npy"
    with open(path, "wb") as stream:
        np.lib.format.write_array_header_1_0(
            stream, {"descr": "<f4", "fortran_order": False, "shape": (200000000000, 4)})
        stream.write(b"\0" * 32)
    code, _, err = run_cli(capsys, "run", model_path, "-i", f"x={path}", "-o", tmp_path)
    assert code == 2 and "truncated" in err and "200000000000" in err


# ---------------------------------------------------------------- run: bad models

@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"hello world this is garbage", "not a valid ONNX model"),
    (onnx.ModelProto(ir_version=10, producer_name="x").SerializeToString(), "no graph"),
])
def test_bad_model_bytes(tmp_path, x, capsys, content, message):
    model = tmp_path / "bad.onnx"
    model.write_bytes(content)
    np.save(tmp_path / "x.npy", x)
    code, _, err = run_cli(capsys, "run", model, "-i", f"x={tmp_path / 'x.npy'}", "-o", tmp_path)
    assert code == 1
    assert err.startswith(f"graphc: error: {model}") and message in err


def test_truncated_model(tmp_path, x, capsys):
    data = linear_model().SerializeToString()
    np.save(tmp_path / "x.npy", x)
    for cut in (len(data) // 3, len(data) // 2, len(data) - 3):
        model = tmp_path / f"cut{cut}.onnx"
        model.write_bytes(data[:cut])
        code, _, err = run_cli(capsys, "run", model, "-i", f"x={tmp_path / 'x.npy'}", "-o", tmp_path)
        assert code == 1, cut
        assert str(model) in err and "Traceback" not in err
        code, _, err = run_cli(capsys, "info", model)
        assert code == 1 and "truncated or corrupt" in err


def test_directory_and_missing_model(tmp_path, capsys):
    code, _, err = run_cli(capsys, "run", tmp_path)
    assert code == 1 and "is a directory" in err
    code, _, err = run_cli(capsys, "info", tmp_path / "absent.onnx")
    assert code == 1 and "model file not found" in err


@pytest.mark.parametrize("kwargs, message", [
    ({"op": "FooBar", "domain": "my.ops"}, "FooBar"),
    ({"ir_version": 14}, "IR version"),
    ({"opset": 99}, "Opset 99"),
])
def test_model_ort_cannot_load(tmp_path, x, capsys, kwargs, message):
    model = tmp_path / "m.onnx"
    onnx.save(linear_model(**kwargs), model)
    np.save(tmp_path / "x.npy", x)
    code, _, err = run_cli(capsys, "run", model, "-i", f"x={tmp_path / 'x.npy'}", "-o", tmp_path)
    assert code == 1
    assert err.startswith(f"graphc: error: {model}: ONNX Runtime cannot load this model") and message in err
    assert err.count("\n") == 1 and "/onnxruntime_src/" not in err


def test_runtime_failure_exit_1(tmp_path, capsys):
    # Reshape to a fixed 7 elements fails at run time for any batch but shape (7,).
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [7])],
        [numpy_helper.from_array(np.array([7], np.int64), "shape")],
    )
    model = tmp_path / "r.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), model)
    np.save(tmp_path / "x.npy", np.ones(5, np.float32))
    code, _, err = run_cli(capsys, "run", model, "-i", f"x={tmp_path / 'x.npy'}", "-o", tmp_path)
    assert code == 1 and err.startswith(f"graphc: error: running {model} failed") and err.count("\n") == 1
    assert not (tmp_path / "y.npy").exists()


# ---------------------------------------------------------------- outputs

def test_output_name_with_path_separators_stays_in_output_dir(tmp_path, x, capsys):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    model = work / "m.onnx"
    onnx.save(linear_model(output_name="../../evil/y"), model)
    np.save(work / "x.npy", x)
    out_dir = work / "out"
    code, out, err = run_cli(capsys, "run", model, "-i", f"x={work / 'x.npy'}", "-o", out_dir)
    assert code == 0, err
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".npy" and p.name != "x.npy"]
    assert len(files) == 1 and files[0].parent == out_dir
    np.testing.assert_allclose(np.load(files[0]), expected(x), rtol=1e-6)
    assert not (tmp_path / "evil").exists()
    assert "../../evil/y: shape (2, 3) float32" in out


def test_safe_file_names_are_plain_and_unique():
    names = safe_file_names(["../../x", "a/b", "a_b", "A_B", ".hidden", "", "ok-1.2"])
    assert list(names.values()) == ["_._.._x.npy", "a_b.npy", "a_b_2.npy", "A_B_3.npy", "_hidden.npy", "output.npy", "ok-1.2.npy"]
    assert all("/" not in n and "\\" not in n and not n.startswith(".") for n in names.values())


def test_output_symlink_is_not_followed(tmp_path, model_path, x, capsys):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "y.npy").symlink_to(victim)
    np.save(tmp_path / "x.npy", x)
    code, _, err = run_cli(capsys, "run", model_path, "-i", f"x={tmp_path / 'x.npy'}", "-o", out_dir)
    assert code == 1 and "cannot write output 'y'" in err
    assert victim.read_text() == "keep me"


def test_output_dir_that_is_a_file(tmp_path, model_path, x, capsys):
    np.save(tmp_path / "x.npy", x)
    code, _, err = run_cli(capsys, "run", model_path, "-i", f"x={tmp_path / 'x.npy'}", "-o", tmp_path / "x.npy")
    assert code == 2 and "is not a folder" in err


# ---------------------------------------------------------------- providers

def _cuda_loads() -> bool:
    try:
        make_session(linear_model(), "cuda")
        return True
    except ProviderError:
        return False


def test_cuda_requested_where_it_cannot_load_is_a_clear_error(tmp_path, model_path, x, capsys):
    if _cuda_loads():
        pytest.skip("the CUDA provider loads on this machine")
    np.save(tmp_path / "x.npy", x)
    code, _, err = run_cli(capsys, "run", model_path, "-i", f"x={tmp_path / 'x.npy'}", "-o", tmp_path, "--provider", "cuda")
    assert code == 1
    assert err.startswith("graphc: error: CUDA was requested") and "available providers" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "y.npy").exists()


@pytest.mark.cuda
def test_cuda_run_matches_numpy(tmp_path, model_path, x, capsys):
    if not _cuda_loads():
        pytest.skip("the CUDA provider does not load here")
    np.save(tmp_path / "x.npy", x)
    code, _, err = run_cli(capsys, "run", model_path, "-i", f"x={tmp_path / 'x.npy'}", "-o", tmp_path, "--provider", "cuda")
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected(x), rtol=1e-5)


def test_auto_provider_runs(tmp_path, model_path, x, capsys, monkeypatch):
    monkeypatch.setattr(providers, "_announced", set())  # said once per process: as in a fresh `graphc` process
    np.save(tmp_path / "x.npy", x)
    code, _, err = run_cli(capsys, "run", model_path, "-i", f"x={tmp_path / 'x.npy'}", "-o", tmp_path, "--provider", "auto")
    assert code == 0, err
    assert err.startswith("graphc: provider auto -> ") and err.count("\n") == 1  # one line: what it picked
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), expected(x), rtol=1e-5)


# ---------------------------------------------------------------- info and usage

def test_info_text(model_path, capsys):
    code, out, err = run_cli(capsys, "info", model_path)
    assert code == 0, err
    assert "ir_version: 10" in out and "producer: tests" in out and "opsets: ai.onnx 21" in out
    assert "  x: float32 (batch, 4)" in out and "  y: float32 (batch, 3)" in out
    assert "  MatMul: 1" in out and "  Add: 1" in out and "operators (2 nodes)" in out
    assert "initializers: 2" in out and "parameters: 15" in out


def test_info_json_counts_ops_and_parameters(tmp_path, capsys):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Relu", ["r"], ["s"]), helper.make_node("Gather", ["s", "idx"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", None])],
        [numpy_helper.from_array(np.ones((10, 20), np.float32), "W"),
         numpy_helper.from_array(np.array([0, 1], np.int64), "idx")],
    )
    path = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), path)
    code, out, err = run_cli(capsys, "info", path, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["operators"] == {"Relu": 2, "MatMul": 1, "Gather": 1}
    assert info["parameters"] == 200  # the int64 indices are not parameters
    assert info["initializers"] == 2
    assert info["opsets"] == {"ai.onnx": 21} and info["ir_version"] == 10
    assert info["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["batch", 10]}]
    assert info["outputs"] == [{"name": "y", "dtype": "float32", "shape": ["batch", None]}]


def test_info_counts_subgraph_nodes(tmp_path, capsys):
    branch = lambda name, op: helper.make_graph(  # noqa: E731
        [helper.make_node(op, ["x"], [name])], name, [],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [3])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=branch("t", "Relu"), else_branch=branch("e", "Neg"))],
        "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []),
         helper.make_tensor_value_info("x", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])],
    )
    path = tmp_path / "if.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), path)
    code, out, _ = run_cli(capsys, "info", path, "--json")
    assert code == 0 and json.loads(out)["operators"] == {"If": 1, "Relu": 1, "Neg": 1}


def test_usage_errors_exit_2_with_one_line(capsys):
    for argv in ([], ["run"], ["frobnicate"], ["run", "m.onnx", "--provider", "tpu"]):
        code, _, err = run_cli(capsys, *argv)
        assert code == 2, argv
        assert err.startswith("graphc: error:") and err.count("\n") == 1, err


def test_help_exits_0(capsys):
    code, out, _ = run_cli(capsys, "run", "--help")
    assert code == 0 and "--cast" in out and "values" in out


# ---------------------------------------------------------------- real subprocess

def _subprocess(*argv):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("GRAPHC_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "runtime.cli", *map(str, argv)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)


def test_subprocess_success_and_failures(tmp_path, model_path, x):
    np.save(tmp_path / "x.npy", x)
    ok = _subprocess("run", model_path, "--input", f"x={tmp_path / 'x.npy'}", "--output-dir", tmp_path / "out")
    assert ok.returncode == 0, ok.stderr
    np.testing.assert_allclose(np.load(tmp_path / "out" / "y.npy"), expected(x), rtol=1e-6)

    bad_input = _subprocess("run", model_path, "--input", f"z={tmp_path / 'x.npy'}")
    assert bad_input.returncode == 2
    assert bad_input.stderr.startswith("graphc: error: unknown input 'z'") and "Traceback" not in bad_input.stderr

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x08\x07garbage" * 10)
    bad_model = _subprocess("run", garbage, "--input", f"x={tmp_path / 'x.npy'}")
    assert bad_model.returncode == 1
    assert bad_model.stderr.startswith("graphc: error:") and "Traceback" not in bad_model.stderr

    cuda = _subprocess("run", model_path, "--input", f"x={tmp_path / 'x.npy'}", "-o", tmp_path / "c", "--provider", "cuda")
    assert cuda.returncode in (0, 1) and "Traceback" not in cuda.stderr
    if cuda.returncode == 1:
        assert "CUDA" in cuda.stderr and cuda.stderr.count("\n") == 1


def test_scalar_and_unknown_shape_inputs(tmp_path, capsys):
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("s", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), model)
    (tmp_path / "x.json").write_text("[[1, 2], [3, 4]]")
    (tmp_path / "s.json").write_text("2.5")
    (tmp_path / "s1.json").write_text("[2.5]")
    code, _, err = run_cli(capsys, "run", model, "-i", f"x={tmp_path / 'x.json'}", "-i", f"s={tmp_path / 's.json'}", "-o", tmp_path)
    assert code == 0, err
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), [[2.5, 5], [7.5, 10]])
    code, _, err = run_cli(capsys, "run", model, "-i", f"x={tmp_path / 'x.json'}", "-i", f"s={tmp_path / 's1.json'}", "-o", tmp_path)
    assert code == 2 and "input 's': expected shape () float32, got (1,) float32" in err
