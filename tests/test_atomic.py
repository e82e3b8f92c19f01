"""Atomic writes: what may be replaced (regular files only), the mode of what is written, and
``Program.save(external_data=True)`` writing both files from scratch."""

from __future__ import annotations

import os
import stat

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphc as gc
from graphc import nn
from runtime import atomic
from runtime.atomic import UnsafeTargetError, atomic_write
from runtime.checkpoint import CheckpointError, save_checkpoint


def write_hello(handle):
    handle.write(b"hello")


@pytest.fixture
def umask():
    """Set the process umask for one test, restored afterwards."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def tiny_program():
    gc.manual_seed(0)
    x = gc.input("x", ("batch", 40))
    model = nn.Sequential(nn.Linear(40, 300), nn.ReLU(), nn.Linear(300, 20))  # 12,000 + 6,000 floats
    return gc.compile([x], {"y": model(x)}), x


# ---- item 19: only regular files are replaced --------------------------------------------
def test_a_fifo_is_refused_and_left_a_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeTargetError, match=r"refusing to write '.*pipe': it is a FIFO \(named pipe\), "
                                                r"expected a regular file or a new path"):
        atomic_write(fifo, write_hello)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["pipe"]  # no temporary file left behind


def test_a_device_is_refused_before_anything_is_written(monkeypatch):
    # As root the old code renamed a regular file over /dev/null; never let this test do that.
    monkeypatch.setattr(atomic.os, "replace", lambda *a: pytest.fail("os.replace reached for a device"))
    monkeypatch.setattr(atomic.tempfile, "mkstemp", lambda *a, **k: pytest.fail("a temporary file was made"))
    with pytest.raises(UnsafeTargetError, match=r"'/dev/null': it is a character device, expected a regular file"):
        atomic_write("/dev/null", write_hello)
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


def test_a_symlink_is_refused_even_to_a_regular_file(tmp_path):
    target = tmp_path / "real.onnx"
    target.write_bytes(b"old")
    link = tmp_path / "link.onnx"
    link.symlink_to(target)
    with pytest.raises(UnsafeTargetError, match=r"it is a symbolic link, expected a regular file or a new path "
                                                r"\(pass the path it points to, '.*real.onnx'\)"):
        atomic_write(link, write_hello)
    assert link.is_symlink() and target.read_bytes() == b"old"


def test_a_directory_is_refused(tmp_path):
    with pytest.raises(UnsafeTargetError, match="it is a directory"):
        atomic_write(tmp_path, write_hello)


def test_checkpoint_and_program_saves_refuse_a_fifo(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint '.*pipe': refusing .* FIFO"):
        save_checkpoint(fifo, {"w": np.zeros(3, np.float32)})
    prog, _ = tiny_program()
    for external in (False, True):
        with pytest.raises(UnsafeTargetError, match="FIFO"):
            prog.save(fifo, external_data=external)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["pipe"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")

    def broken(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["model.onnx"]


# ---- item 20: modes ------------------------------------------------------------------------
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_file_gets_the_umask_mode(tmp_path, umask, mask, mode):
    umask(mask)
    atomic_write(tmp_path / "new", write_hello)
    save_checkpoint(tmp_path / "ckpt", {"w": np.zeros(3, np.float32)})
    prog, _ = tiny_program()
    prog.save(tmp_path / "m.onnx")
    prog.save(tmp_path / "e.onnx", external_data=True)
    for name in ("new", "ckpt", "m.onnx", "e.onnx", "e.onnx.data"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == mode, name


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o600, 0o755])
def test_a_replaced_file_keeps_its_mode(tmp_path, umask, mode):
    umask(0o077)  # would give 0600 to a new file: the old mode must win
    path = tmp_path / "model.onnx"
    path.write_bytes(b"old")
    os.chmod(path, mode)
    atomic_write(path, write_hello)
    assert path.read_bytes() == b"hello"
    assert stat.S_IMODE(os.stat(path).st_mode) == mode


def test_trainer_save_and_checkpoints_keep_a_replaced_files_mode(tmp_path, umask):
    import graphc.nn.functional as F

    umask(0o077)
    x = gc.input("x", ("batch", 4))
    y = gc.input("y", ("batch",), "int64")
    model = nn.Linear(4, 3)
    trainer = gc.Trainer(F.cross_entropy(model(x), y), gc.optim.SGD(model.parameters(), lr=0.1), [x, y])
    for name, save in (("step.onnx", trainer.save), ("ckpt", trainer.save_checkpoint)):
        (tmp_path / name).write_bytes(b"old")
        os.chmod(tmp_path / name, 0o644)
        save(tmp_path / name)
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name


# ---- item 21: external data written from scratch, atomically ------------------------------------
def test_external_data_save_does_not_grow_and_runs_in_onnxruntime(tmp_path):
    prog, _ = tiny_program()
    path = tmp_path / "m.onnx"
    weights = sum(len(t.raw_data) for t in prog.model.graph.initializer if len(t.raw_data) >= 1024)
    assert weights >= 18_000 * 4
    batch = np.random.default_rng(0).standard_normal((5, 40)).astype(np.float32)
    for _ in range(3):
        prog.save(path, external_data=True)
        assert os.path.getsize(str(path) + ".data") == weights  # 72,000 -> 144,000 -> ... before
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        np.testing.assert_array_equal(session.run(None, {"x": batch})[0], prog.run({"x": batch})["y"])
    saved = onnx.load(str(path), load_external_data=False)
    locations = {e.value for t in saved.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"m.onnx.data"}
    assert os.path.getsize(path) < 10_000  # the weights are not in the model file
    assert all(len(t.raw_data) > 0 for t in prog.model.graph.initializer if t.dims)  # in-memory model untouched
    assert sorted(os.listdir(tmp_path)) == ["m.onnx", "m.onnx.data"]  # no temporaries left


def test_external_data_save_replaces_a_stale_bigger_data_file(tmp_path):
    prog, _ = tiny_program()
    path = tmp_path / "m.onnx"
    (tmp_path / "m.onnx.data").write_bytes(b"\xff" * 1_000_000)
    prog.save(path, external_data=True)
    batch = np.ones((2, 40), np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": batch})[0], prog.run({"x": batch})["y"])
    assert os.path.getsize(tmp_path / "m.onnx.data") < 1_000_000


def test_external_data_refuses_a_symlinked_data_file(tmp_path):
    prog, _ = tiny_program()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(b"keep")
    (tmp_path / "m.onnx.data").symlink_to(elsewhere)
    with pytest.raises(UnsafeTargetError, match="m.onnx.data': it is a symbolic link"):
        prog.save(tmp_path / "m.onnx", external_data=True)
    assert elsewhere.read_bytes() == b"keep" and not (tmp_path / "m.onnx").exists()
