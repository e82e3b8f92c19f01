"""Checkpoints: exact resume, atomic writes, and refusal of damaged or mismatched files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import zipfile

import numpy as np
import pytest

import graphc as gc
import graphc.nn.functional as F
from graphc import nn
from runtime.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_trainer(hidden: int = 16, optimizer=gc.optim.Adam):
    gc.manual_seed(0)
    x = gc.input("x", ("batch", 8))
    y = gc.input("y", ("batch",), "int64")
    model = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 3))
    trainer = gc.Trainer(F.cross_entropy(model(x), y), optimizer(model.parameters(), lr=1e-2), [x, y])
    return model, trainer


def data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((100, 8)).astype(np.float32), rng.integers(0, 3, 100)


def test_resume_mid_epoch_reproduces_the_uninterrupted_run(tmp_path):
    X, Y = data()
    model_a, trainer_a = make_trainer()
    loader_a = gc.data.DataLoader(X, Y, batch_size=16, shuffle=True, seed=1)
    batches = iter(loader_a)
    for _ in range(3):
        xb, yb = next(batches)
        trainer_a.step({"x": xb, "y": yb})
    trainer_a.save_checkpoint(tmp_path / "ckpt", loader=loader_a)
    expected = [trainer_a.step({"x": xb, "y": yb}) for xb, yb in batches]
    expected += [trainer_a.step({"x": xb, "y": yb}) for xb, yb in loader_a]

    model_b, trainer_b = make_trainer()
    loader_b = gc.data.DataLoader(X, Y, batch_size=16, shuffle=True, seed=1)
    trainer_b.load_checkpoint(tmp_path / "ckpt", loader=loader_b)
    assert trainer_b.steps_done == 3
    resumed = [trainer_b.step({"x": xb, "y": yb}) for xb, yb in loader_b]
    resumed += [trainer_b.step({"x": xb, "y": yb}) for xb, yb in loader_b]
    assert resumed == expected
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)


def _assert_unchanged(model, trainer, before_params, before_step):
    for (name, a), b in zip(model.state_dict().items(), before_params.values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert trainer.steps_done == before_step


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "newer_version", "not_a_zip", "missing"])
def test_damaged_checkpoints_are_refused_and_change_nothing(tmp_path, damage):
    X, Y = data()
    model, trainer = make_trainer()
    trainer.step({"x": X[:16], "y": Y[:16]})
    path = tmp_path / "ckpt"
    trainer.save_checkpoint(path)
    trainer.step({"x": X[16:32], "y": Y[16:32]})
    before, step = model.state_dict(), trainer.steps_done
    raw = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "bitflip":
        with zipfile.ZipFile(path) as archive:
            offset = archive.getinfo("00000.npy").header_offset + 200
        flipped = bytearray(raw)
        flipped[offset] ^= 0x01
        path.write_bytes(bytes(flipped))
    elif damage == "newer_version":
        arrays, metadata = load_checkpoint(path)
        save_checkpoint(path, arrays, metadata)
        with zipfile.ZipFile(path) as archive:
            members = {n: archive.read(n) for n in archive.namelist()}
        manifest = json.loads(members["manifest.json"])
        manifest["version"] = 99
        members["manifest.json"] = json.dumps(manifest).encode()
        with zipfile.ZipFile(path, "w") as archive:
            for name, blob in members.items():
                archive.writestr(name, blob)
    elif damage == "not_a_zip":
        path.write_bytes(b"this is not a checkpoint")
    elif damage == "missing":
        path.unlink()
    with pytest.raises(CheckpointError, match="checkpoint") as info:
        trainer.load_checkpoint(path)
    if damage == "newer_version":
        assert "version 99" in str(info.value)
    _assert_unchanged(model, trainer, before, step)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    _, small = make_trainer(hidden=16)
    small.save_checkpoint(tmp_path / "ckpt")
    model, big = make_trainer(hidden=32)
    before = model.state_dict()
    with pytest.raises(CheckpointError, match=r"checkpoint .*optimizer.exp_avg|checkpoint .*0\.weight"):
        big.load_checkpoint(tmp_path / "ckpt")
    _assert_unchanged(model, big, before, 0)


def test_checkpoint_of_another_optimizer_is_refused(tmp_path):
    _, sgd = make_trainer(optimizer=lambda p, lr: gc.optim.SGD(p, lr=lr, momentum=0.9))
    sgd.save_checkpoint(tmp_path / "ckpt")
    _, adam = make_trainer()
    with pytest.raises(CheckpointError, match="checkpoint"):
        adam.load_checkpoint(tmp_path / "ckpt")


def test_object_arrays_are_never_saved_or_unpickled(tmp_path):
    with pytest.raises(CheckpointError, match="object"):
        save_checkpoint(tmp_path / "ckpt", {"bad": np.array([{"a": 1}], dtype=object)})
    assert not (tmp_path / "ckpt").exists()


KILL_LOOP = r"""
import sys, numpy as np
sys.path.insert(0, {root!r})
from runtime.checkpoint import save_checkpoint
i = 0
while True:
    i += 1
    save_checkpoint({path!r}, {{"w": np.full((256, 256), i, np.float32), "step": np.asarray(i)}}, {{"i": i}})
    print(i, flush=True)
"""


def test_sigkill_during_writes_leaves_a_loadable_checkpoint(tmp_path):
    path = str(tmp_path / "ckpt")
    rng = np.random.default_rng(0)
    for _ in range(5):
        proc = subprocess.Popen([sys.executable, "-c", KILL_LOOP.format(root=ROOT, path=path)],
                                stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # at least one complete checkpoint exists
        try:
            proc.wait(timeout=float(rng.uniform(0.01, 0.2)))
        except subprocess.TimeoutExpired:
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        arrays, metadata = load_checkpoint(path)
        assert arrays["w"][0, 0] == metadata["i"] == int(arrays["step"])
        assert np.all(arrays["w"] == metadata["i"])


def test_saving_into_a_missing_folder_is_a_checkpoint_error(tmp_path):
    _, trainer = make_trainer()
    with pytest.raises(CheckpointError, match="does not exist"):
        trainer.save_checkpoint(tmp_path / "missing" / "ckpt")
