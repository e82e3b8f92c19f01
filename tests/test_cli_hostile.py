"""The `graphc` command line under hostile conditions: planted links, a full disk, closed or broken
standard streams, Ctrl-C during start-up, malformed models and headers, telemetry, `info` counts."""

import json
import os
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from runtime import providers
from runtime.cli import main

REPO = Path(__file__).resolve().parents[1]
W = (np.arange(12, dtype=np.float32).reshape(4, 3) - 5) / 7


def identity_model(path, output_name="y", shape=("batch", 4)):
    """y = x (float32); the output's size is whatever the input's is."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], [output_name])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, list(shape))],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), path)
    return path


@pytest.fixture
def case(tmp_path):
    """(model path, x.npy path, x) for y = x."""
    x = np.arange(8, dtype=np.float32).reshape(2, 4) / 3
    np.save(tmp_path / "x.npy", x)
    return identity_model(tmp_path / "m.onnx"), tmp_path / "x.npy", x


def cli(*argv, env_extra=None, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("GRAPHC_DEBUG", None)
    env.update(env_extra or {})
    kwargs.setdefault("capture_output", True)
    return subprocess.run([sys.executable, "-m", "runtime.cli", *map(str, argv)], cwd=REPO, env=env,
                          timeout=120, **kwargs)


# ---------------------------------------------------------------- 22: outputs written atomically

def test_hard_link_at_the_output_name_is_replaced_not_written_through(tmp_path, case, capsys):
    model, x_file, x = case
    victim = tmp_path / "victim.npy"
    np.save(victim, np.array([42.0]))
    out = tmp_path / "out"
    out.mkdir()
    os.link(victim, out / "y.npy")
    assert main(["run", str(model), "-i", f"x={x_file}", "-o", str(out)]) == 0, capsys.readouterr().err
    np.testing.assert_array_equal(np.load(victim), [42.0])
    np.testing.assert_array_equal(np.load(out / "y.npy"), x)
    assert os.stat(out / "y.npy").st_nlink == 1


def test_full_disk_leaves_the_previous_output_whole(tmp_path):
    model = identity_model(tmp_path / "m.onnx", shape=("n",))
    np.save(tmp_path / "big.npy", np.arange(100_000, dtype=np.float32))  # 400 kB output
    out = tmp_path / "out"
    out.mkdir()
    previous = np.arange(3, dtype=np.float32)
    np.save(out / "y.npy", previous)

    def limit_file_size():  # writes past 64 kB fail with EFBIG, as on a full disk (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    result = cli("run", model, "-i", f"x={tmp_path / 'big.npy'}", "-o", out, text=True, preexec_fn=limit_file_size)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("graphc: error: cannot write output 'y'") and result.stderr.count("\n") == 1
    np.testing.assert_array_equal(np.load(out / "y.npy"), previous)
    assert sorted(p.name for p in out.iterdir()) == ["y.npy"]  # no temporary file left behind


# ---------------------------------------------------------------- 27: standard streams and Ctrl-C

def test_closed_stderr_still_runs_and_reports_by_exit_code(tmp_path, case):
    model, x_file, x = case
    ok = cli("run", model, "-i", f"x={x_file}", "-o", tmp_path / "out", preexec_fn=lambda: os.close(2))
    assert ok.returncode == 0, ok.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "y.npy"), x)
    bad = cli("run", model, "-i", f"z={x_file}", "-o", tmp_path / "out2", "--json", preexec_fn=lambda: os.close(2))
    assert bad.returncode == 2
    assert json.loads(bad.stdout)["exit_code"] == 2


def test_stdout_on_a_full_device_is_one_line_and_exit_1(tmp_path, case):
    model, x_file, _ = case
    with open("/dev/full", "w") as full:
        result = cli("run", model, "-i", f"x={x_file}", "-o", tmp_path / "out", "--json", stdout=full, stderr=subprocess.PIPE, capture_output=False, text=True)
    assert result.returncode == 1
    assert result.stderr == "graphc: error: cannot write to standard output: No space left on device\n"


def test_broken_pipe_ends_quietly(tmp_path, case):
    model, x_file, _ = case
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written, like `| head -1` that finished
    try:
        result = cli("run", model, "-i", f"x={x_file}", "-o", tmp_path / "out", "--json",
                     stdout=write_end, stderr=subprocess.PIPE, capture_output=False, text=True)
    finally:
        os.close(write_end)
    assert result.returncode == 141
    assert result.stderr == ""


def test_ascii_terminal_gets_escaped_names_not_an_error(tmp_path, case):
    model, x_file, x = case
    identity_model(model, output_name="\u00e9t\u00e9")
    result = cli("run", model, "-i", f"x={x_file}", "-o", tmp_path / "out", env_extra={"PYTHONIOENCODING": "ascii"}, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("\\xe9t\\xe9: shape (2, 4) float32 -> ")
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "_t_.npy"), x)


def test_ctrl_c_during_imports_is_one_line_and_130(tmp_path, case):
    model, _, _ = case
    fake = tmp_path / "fake"
    (fake / "numpy").mkdir(parents=True)
    (fake / "numpy" / "__init__.py").write_text("raise KeyboardInterrupt\n")  # as if Ctrl-C hit while importing
    result = cli("info", model, env_extra={"PYTHONPATH": f"{fake}{os.pathsep}{REPO}"}, text=True)
    assert result.returncode == 130
    assert result.stderr == "graphc: error: interrupted\n"
    # ``python -m graphc`` imports the graphc package first: the same one line and 130 there
    env = {**os.environ, "PYTHONPATH": f"{fake}{os.pathsep}{REPO}", "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("GRAPHC_DEBUG", None)
    result = subprocess.run([sys.executable, "-m", "graphc", "info", str(model)], cwd=REPO, env=env, timeout=120,
                            capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (130, "graphc: error: interrupted\n")
    # a user's own import still raises KeyboardInterrupt (only the CLI turns it into an exit code)
    result = subprocess.run([sys.executable, "-c", "import graphc"], cwd=REPO, env=env, timeout=120,
                            capture_output=True, text=True)
    assert result.returncode != 0 and "KeyboardInterrupt" in result.stderr


# ---------------------------------------------------------------- 28: exit 2, one line, JSON errors

def _model_bytes_with_name(tmp_path, raw: bytes, where: str):
    model = tmp_path / "bad.onnx"
    identity_model(model, output_name="y_PLACEHOLDER")
    data = model.read_bytes()
    if where == "input":
        proto = onnx.load(model)
        proto.graph.input[0].name = proto.graph.node[0].input[0] = "x_PLACEHOLDER"
        data = proto.SerializeToString()
    model.write_bytes(data.replace(b"_PLACEHOLDER", raw.ljust(len(b"_PLACEHOLDER"), b"z")))
    return model


@pytest.mark.parametrize("where", ["output", "input"])
def test_names_that_are_not_utf8_exit_2(tmp_path, case, capsys, where):
    _, x_file, _ = case
    model = _model_bytes_with_name(tmp_path, b"\xff\xfe", where)
    for argv in (["run", model, "-i", f"x={x_file}", "-o", tmp_path / "out"], ["info", model]):
        code = main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1, err
        assert err.startswith(f"graphc: error: {model}: ") and "is not valid UTF-8" in err and "unexpected" not in err


def test_undefined_elem_type_exits_2(tmp_path, case, capsys):
    model, x_file, _ = case
    proto = onnx.load(model)
    proto.graph.input[0].type.tensor_type.elem_type = 99
    model.write_bytes(proto.SerializeToString())
    for argv in (["run", model, "-i", f"x={x_file}", "-o", tmp_path / "out"], ["info", model, "--json"]):
        code = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        assert code == 2 and err.count("\n") == 1 and "elem_type 99, which ONNX does not define" in err
    assert json.loads(out) == {"error": err.removeprefix("graphc: error: ").rstrip("\n"), "exit_code": 2}


def _npy_with_shape(path, shape_text):
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': %s, }" % shape_text
    header = header.ljust(117) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 64)
    return path


@pytest.mark.parametrize("shape_text", ["(True, 4)", "(-1, 4)", "(2.5, 4)"])
def test_npy_header_with_non_integer_dims_exits_2(tmp_path, case, capsys, shape_text):
    model, _, _ = case
    bad = _npy_with_shape(tmp_path / "bad.npy", shape_text)
    code = main(["run", str(model), "-i", f"x={bad}", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(f"graphc: error: input 'x': {bad} is not a valid .npy array") and err.count("\n") == 1


def test_output_dir_component_too_long_exits_2_with_json(tmp_path, case, capsys):
    model, x_file, _ = case
    too_long = tmp_path / ("d" * 300) / "out"
    code = main(["run", str(model), "-i", f"x={x_file}", "-o", str(too_long), "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and err.count("\n") == 1 and "File name too long" in err and "unexpected" not in err
    assert json.loads(out)["exit_code"] == 2 and "--output-dir" in json.loads(out)["error"]


def test_npz_bomb_through_the_cli_is_refused_before_inflating(tmp_path, case, capsys, monkeypatch):
    model, _, _ = case
    bomb = tmp_path / "bomb.npz"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("x.npy", "w", force_zip64=True) as member:
        np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": (2**24,)})
        for _ in range(16):
            member.write(bytes(1 << 22))  # 64 MiB of zeros, a few kB compressed
    monkeypatch.setattr(np.lib.format, "read_array", lambda *a, **k: pytest.fail("the member was inflated"))
    code = main(["run", str(model), "-i", f"x={bomb}", "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "got (16777216,) float32: rank 1 is not 2" in err and err.count("\n") == 1


def test_usage_error_with_json_is_a_json_object(capsys):
    assert main(["run", "--json"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out)["exit_code"] == 2 and err.startswith("graphc: error:")


# ---------------------------------------------------------------- 31: info counts

def _save(tmp_path, nodes, initializers, name="q.onnx"):
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        initializers,
    )
    path = tmp_path / name
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10), path)
    return path


def test_info_counts_quantized_weights_not_scales(tmp_path, capsys):
    w1 = np.arange(32, dtype=np.int8).reshape(4, 8)
    b1 = np.arange(8, dtype=np.int32)
    w2 = np.arange(24, dtype=np.int8).reshape(8, 3)
    b2 = np.ones(3, np.float32)
    scale = lambda n: numpy_helper.from_array(np.full(n, 0.02, np.float32), f"s{n}")  # noqa: E731
    nodes = [
        helper.make_node("DequantizeLinear", ["w1", "s1", "z1"], ["w1f"]),
        helper.make_node("DequantizeLinear", ["b1", "s8"], ["b1f"], axis=0),
        helper.make_node("DequantizeLinear", ["w2", "s3"], ["w2f"], axis=1),
        helper.make_node("MatMul", ["x", "w1f"], ["h"]), helper.make_node("Add", ["h", "b1f"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["r"]), helper.make_node("MatMul", ["r", "w2f"], ["o"]),
        helper.make_node("Add", ["o", "b2"], ["y"]),
    ]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(b1, "b1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(b2, "b2"), numpy_helper.from_array(np.float32(0.1), "s1"),
             numpy_helper.from_array(np.int8(0), "z1"), scale(8), scale(3)]
    path = _save(tmp_path, nodes, inits)
    assert main(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == w1.size + b1.size + w2.size + b2.size  # 67: scales and zero points excluded
    assert info["initializers"] == 8


@pytest.mark.parametrize("dims", [[2**62, 8], [-3, 5], [2**40, 2**40]])
def test_info_refuses_malformed_dims(tmp_path, capsys, dims):
    weight = numpy_helper.from_array(np.zeros(0, np.float32), "W")
    del weight.dims[:]
    weight.dims.extend(dims)
    path = _save(tmp_path, [helper.make_node("MatMul", ["x", "W"], ["y"])], [weight])
    assert main(["info", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"tensor 'W' has dims {dims}" in err and err.count("\n") == 1


# ---------------------------------------------------------------- 33: telemetry

def test_no_telemetry_files_under_home(tmp_path, case):
    model, x_file, _ = case
    home = tmp_path / "home"
    home.mkdir()
    # The test process itself has ORT_DISABLE_TELEMETRY set (importing runtime sets it): the children must not.
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    env.update(HOME=str(home), XDG_CACHE_HOME=str(home / ".cache"), PYTHONPATH=str(REPO))
    for argv in (["info", model], ["run", model, "-i", f"x={x_file}", "-o", tmp_path / "out"]):
        result = subprocess.run([sys.executable, "-m", "runtime.cli", *map(str, argv)], cwd=REPO, timeout=120,
                                env=env, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    script = ("import numpy as np, graphc as gc\n"
              "x = gc.input('x', shape=('batch', 4))\n"
              "print(gc.compile(inputs=[x], outputs={'y': x * 2}).run({'x': np.ones((1, 4), np.float32)})['y'])\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=120, capture_output=True, text=True,
                            env=env)
    assert result.returncode == 0 and "[[2. 2. 2. 2.]]" in result.stdout, result.stderr
    assert [p for p in home.rglob("*") if p.is_file()] == []


# ---------------------------------------------------------------- 32 (part): provider "auto" from Python

def test_auto_provider_from_python_says_so_once(monkeypatch, capfd):
    gc = pytest.importorskip("graphc")
    monkeypatch.setattr(providers, "_announced", set())
    x = gc.input("x", shape=("batch", 4))
    feeds = {"x": np.ones((2, 4), np.float32)}
    for factor in (2.0, 3.0):
        prog = gc.compile(inputs=[x], outputs={"y": x * factor}, provider="auto")
        np.testing.assert_allclose(prog.run(feeds)["y"], feeds["x"] * factor)
        prog.run(feeds)
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("graphc: provider auto -> ")]
    assert len(lines) == 1, err
