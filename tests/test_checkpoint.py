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


# ---- helpers for crafted files -------------------------------------------------------------
def rewrite(path, edit_manifest=None, members=None, fix_digest=True):
    """Rewrite a checkpoint: ``edit_manifest(manifest)`` in place, ``members`` {name: (bytes, compression)}."""
    from runtime.checkpoint import _metadata_digest

    with zipfile.ZipFile(path) as archive:
        contents = {n: (archive.read(n), zipfile.ZIP_STORED) for n in archive.namelist()}
    manifest = json.loads(contents["manifest.json"][0])
    if edit_manifest is not None:
        edit_manifest(manifest)
        if fix_digest:
            manifest["metadata_sha256"] = _metadata_digest(manifest["metadata"])
    contents["manifest.json"] = (json.dumps(manifest).encode(), zipfile.ZIP_STORED)
    contents.update(members or {})
    with zipfile.ZipFile(path, "w") as archive:
        for name, (blob, compression) in contents.items():
            archive.writestr(name, blob, compress_type=compression)


def trained_with_loader(tmp_path, optimizer=gc.optim.Adam):
    """A trainer three steps into an epoch of a DataLoader, checkpointed, then stepped further."""
    X, Y = data()
    model, trainer = make_trainer(optimizer=optimizer)
    loader = gc.data.DataLoader(X, Y, batch_size=16, shuffle=True, seed=1)
    batches = iter(loader)
    for _ in range(3):
        xb, yb = next(batches)
        trainer.step({"x": xb, "y": yb})
    path = tmp_path / "ckpt"
    trainer.save_checkpoint(path, loader=loader)
    xb, yb = next(batches)
    trainer.step({"x": xb, "y": yb})
    return model, trainer, loader, path


def snapshot(model, trainer, loader):
    return (model.state_dict(), trainer.steps_done, trainer.optimizer.lr, trainer.seed, trainer.skipped_steps,
            json.dumps(loader.state_dict(), sort_keys=True))


def assert_same_snapshot(before, after):
    for (name, a), b in zip(before[0].items(), after[0].values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert before[1:] == after[1:]


# ---- item 23: metadata validated before anything changes ----------------------------------------
BAD_METADATA = [
    ("lr", "abc", r"metadata 'lr' must be a finite number >= 0, got 'abc'"),
    ("lr", -0.5, r"'lr' must be a finite number >= 0, got -0.5"),
    ("lr", float("nan"), r"'lr' must be a finite number >= 0, got nan"),
    ("lr", True, r"'lr' must be a finite number >= 0, got True"),
    ("seed", "abc", r"'seed' must be an integer, got 'abc'"),
    ("seed", 1.5, r"'seed' must be an integer, got 1.5"),
    ("skipped_steps", [1], r"'skipped_steps' must be an integer >= 0, got \[1\]"),
    ("steps_done", -1, r"'steps_done' must be an integer >= 0, got -1"),
    ("steps_done", 7, r"the step array says 3, the metadata says steps_done=7"),
    ("optimizer", ["adam"], r"'optimizer' must be an object with 'kind'"),
    ("optimizer", {"kind": "adam", "hparams": 3}, r"'optimizer' must be an object with 'kind'"),
    ("data", "position", r"'data' must be an object \(a data loader position\) or null"),
    ("data", {"epoch": 0}, r"the data position does not fit this loader: .*missing keys"),
    ("schedulers", {"a": 1}, r"'schedulers' must be a list of objects"),
    ("schedulers", [{"type": "StepLR"}], r"holds 1 lr scheduler state\(s\), this optimizer has 0"),
    ("lr", None, r"'lr' must be a finite number >= 0, got None"),
]


@pytest.mark.parametrize("key, value, message", BAD_METADATA)
def test_bad_metadata_is_refused_before_anything_changes(tmp_path, key, value, message):
    model, trainer, loader, path = trained_with_loader(tmp_path)

    def edit(manifest):
        manifest["metadata"][key] = value

    rewrite(path, edit)
    before = snapshot(model, trainer, loader)
    with pytest.raises(CheckpointError, match=message):
        trainer.load_checkpoint(path, loader=loader)
    assert_same_snapshot(before, snapshot(model, trainer, loader))


def test_missing_metadata_field_is_refused(tmp_path):
    model, trainer, loader, path = trained_with_loader(tmp_path)
    rewrite(path, lambda m: m["metadata"].pop("seed"))
    before = snapshot(model, trainer, loader)
    with pytest.raises(CheckpointError, match=r"metadata has no 'seed'"):
        trainer.load_checkpoint(path, loader=loader)
    assert_same_snapshot(before, snapshot(model, trainer, loader))


def test_edited_metadata_fails_its_checksum(tmp_path):
    model, trainer, loader, path = trained_with_loader(tmp_path)
    rewrite(path, lambda m: m["metadata"].update(lr=0.5), fix_digest=False)
    before = snapshot(model, trainer, loader)
    with pytest.raises(CheckpointError, match="the metadata fails its checksum"):
        trainer.load_checkpoint(path, loader=loader)
    assert_same_snapshot(before, snapshot(model, trainer, loader))


def test_version_1_checkpoints_still_load(tmp_path):
    model, trainer, loader, path = trained_with_loader(tmp_path)
    trainer.load_checkpoint(path, loader=loader)
    expected = snapshot(model, trainer, loader)

    def to_version_1(manifest):  # what graphc wrote before the metadata checksum and schedulers
        manifest["version"] = 1
        manifest.pop("metadata_sha256")
        manifest["metadata"].pop("schedulers")

    rewrite(path, to_version_1, fix_digest=False)
    fresh_model, fresh = make_trainer()
    fresh_loader = gc.data.DataLoader(*data(), batch_size=16, shuffle=True, seed=1)
    fresh.load_checkpoint(path, loader=fresh_loader)
    assert_same_snapshot(expected, snapshot(fresh_model, fresh, fresh_loader))


@pytest.mark.parametrize("manifest", [b"[" * 100_000 + b"]" * 100_000, b"\xff\xfe not utf-8", b"{\"format\": 1"])
def test_hostile_manifests_are_checkpoint_errors(tmp_path, manifest):
    path = tmp_path / "ckpt"
    save_checkpoint(path, {"w": np.zeros(3, np.float32)})
    rewrite(path, members={"manifest.json": (manifest, zipfile.ZIP_DEFLATED)})
    with pytest.raises(CheckpointError, match="checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("entry", [["00000.npy"], {"file": 5, "dtype": "<f4", "shape": [3], "sha256": "x"},
                                   {"file": "00000.npy", "dtype": "|O", "shape": [3], "sha256": "x"},
                                   {"file": "00000.npy", "dtype": "<f4", "shape": [-3], "sha256": "x"},
                                   {"file": "00000.npy", "dtype": "<f4", "shape": "3", "sha256": "x"},
                                   {"file": "nope.npy", "dtype": "<f4", "shape": [3], "sha256": "x"}])
def test_malformed_manifest_entries_are_checkpoint_errors(tmp_path, entry):
    path = tmp_path / "ckpt"
    save_checkpoint(path, {"w": np.zeros(3, np.float32)})
    rewrite(path, lambda m: m["arrays"].update(w=entry))
    with pytest.raises(CheckpointError, match=r"checkpoint .*'w'"):
        load_checkpoint(path)


# ---- item 24: a decompression bomb is refused before it is decompressed -------------------------
class OpenSpy:
    """Records which zip members are opened (``ZipFile.read`` goes through ``open`` too)."""

    def __init__(self, monkeypatch):
        self.names = []
        real = zipfile.ZipFile.open

        def spy(archive, name, *args, **kwargs):
            self.names.append(name if isinstance(name, str) else name.filename)
            return real(archive, name, *args, **kwargs)

        monkeypatch.setattr(zipfile.ZipFile, "open", spy)


def npy_bytes(array):
    import io
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def test_a_member_bigger_than_its_shape_is_refused_unread(tmp_path, monkeypatch):
    model, trainer = make_trainer()
    path = tmp_path / "ckpt"
    trainer.save_checkpoint(path)
    name = "0.weight"
    with zipfile.ZipFile(path) as archive:
        member = json.loads(archive.read("manifest.json"))["arrays"][name]["file"]
    header = npy_bytes(np.zeros((16, 8), np.float32))[:-16 * 8 * 4]  # the right header, then 64 MB of zeros
    bomb = header + bytes(64 << 20)
    rewrite(path, members={member: (bomb, zipfile.ZIP_DEFLATED)})
    assert os.path.getsize(path) < 1 << 20  # a small file that would inflate to 64 MB
    before = model.state_dict()
    spy = OpenSpy(monkeypatch)
    with pytest.raises(CheckpointError, match=rf"member '{member}' of array '0.weight' is {len(bomb)} bytes "
                                              rf"uncompressed; float32 \(16, 8\) needs 512 bytes"):
        trainer.load_checkpoint(path)
    assert spy.names == ["manifest.json"]  # no array member was decompressed
    _assert_unchanged(model, trainer, before, 0)


def test_a_checkpoint_of_other_shapes_is_refused_before_any_array_is_read(tmp_path, monkeypatch):
    path = tmp_path / "ckpt"
    _, small = make_trainer(hidden=16)
    small.save_checkpoint(path)
    _, big = make_trainer(hidden=32)
    spy = OpenSpy(monkeypatch)
    with pytest.raises(CheckpointError, match=r"'0.weight' is float32 \(16, 8\), expected float32 \(32, 8\)"):
        big.load_checkpoint(path)
    assert spy.names == ["manifest.json"]


def test_load_checkpoint_compares_expected_names_dtypes_and_shapes(tmp_path):
    path = tmp_path / "ckpt"
    save_checkpoint(path, {"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float32)})
    arrays, _ = load_checkpoint(path, expected={"w": (np.float32, (2, 3)), "b": ("float32", (3,))})
    assert set(arrays) == {"w", "b"}
    with pytest.raises(CheckpointError, match=r"missing \['c'\], unexpected \['b'\]"):
        load_checkpoint(path, expected={"w": (np.float32, (2, 3)), "c": (np.float32, (3,))})
    with pytest.raises(CheckpointError, match=r"'w' is float32 \(2, 3\), expected float64 \(2, 3\)"):
        load_checkpoint(path, expected={"w": (np.float64, (2, 3)), "b": (np.float32, (3,))})


def test_a_member_whose_header_disagrees_with_the_manifest_is_refused(tmp_path):
    path = tmp_path / "ckpt"
    save_checkpoint(path, {"w": np.zeros((2, 3), np.float32)})
    rewrite(path, members={"00000.npy": (npy_bytes(np.zeros((3, 2), np.float32)), zipfile.ZIP_STORED)})
    with pytest.raises(CheckpointError, match=r"array 'w' is float32 \(3, 2\), the manifest says float32 \(2, 3\)"):
        load_checkpoint(path)


# ---- item 25: optimizer hyperparameters; loaders without a position -----------------------------
@pytest.mark.parametrize("saved, current, message", [
    (lambda p, lr: gc.optim.Adam(p, lr=lr), lambda p, lr: gc.optim.Adam(p, lr=lr, betas=(0.9, 0.99)),
     r"optimizer hyperparameter 'betas' was \[0.9, 0.999\] when saved, this adam optimizer has \[0.9, 0.99\]"),
    (lambda p, lr: gc.optim.Adam(p, lr=lr), lambda p, lr: gc.optim.Adam(p, lr=lr, weight_decay=0.01),
     r"'weight_decay' was 0.0 when saved, this adam optimizer has 0.01"),
    (lambda p, lr: gc.optim.SGD(p, lr=lr, momentum=0.9), lambda p, lr: gc.optim.SGD(p, lr=lr, momentum=0.5),
     r"'momentum' was 0.9 when saved, this sgd optimizer has 0.5"),
])
def test_optimizer_hyperparameter_mismatch_is_refused(tmp_path, saved, current, message):
    _, a = make_trainer(optimizer=saved)
    a.step({"x": data()[0][:16], "y": data()[1][:16]})
    a.save_checkpoint(tmp_path / "ckpt")
    model, b = make_trainer(optimizer=current)
    before = model.state_dict()
    with pytest.raises(CheckpointError, match=message):
        b.load_checkpoint(tmp_path / "ckpt")
    _assert_unchanged(model, b, before, 0)


def test_checkpoint_after_fit_on_a_plain_list(tmp_path):
    X, Y = data()
    batches = [(X[i:i + 20], Y[i:i + 20]) for i in range(0, 100, 20)]
    model, trainer = make_trainer()
    trainer.fit(batches, epochs=1, progress=False)
    trainer.save_checkpoint(tmp_path / "ckpt")  # AttributeError: 'list' object has no attribute 'state_dict'
    _, metadata = load_checkpoint(tmp_path / "ckpt")
    assert metadata["data"] is None and metadata["steps_done"] == 5
    model_b, resumed = make_trainer()
    resumed.fit(batches[:1], epochs=1, progress=False)
    resumed.load_checkpoint(tmp_path / "ckpt")  # the list has no position to restore: left alone
    assert resumed.steps_done == 5
    for (name, a), b in zip(model.state_dict().items(), model_b.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)


# ---- lr scheduler persistence -------------------------------------------------------------------
def scheduled_trainer():
    model, trainer = make_trainer(optimizer=lambda p, lr: gc.optim.SGD(p, lr=0.1, momentum=0.9))
    scheduler = gc.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=2, gamma=0.5)
    return model, trainer, scheduler


def test_resume_continues_the_lr_schedule_exactly(tmp_path):
    X, Y = data()

    def epoch(trainer, scheduler, record):
        for i in range(0, 100, 25):
            record.append((trainer.optimizer.lr, trainer.step({"x": X[i:i + 25], "y": Y[i:i + 25]})))
        scheduler.step()

    _, a, sched_a = scheduled_trainer()
    uninterrupted = []
    for index in range(7):
        if index == 3:
            a.save_checkpoint(tmp_path / "ckpt")
        epoch(a, sched_a, uninterrupted)

    _, b, sched_b = scheduled_trainer()
    resumed = []
    b.load_checkpoint(tmp_path / "ckpt")
    assert sched_b.last_epoch == 3 and b.optimizer.lr == 0.05
    for _ in range(3, 7):
        epoch(b, sched_b, resumed)
    assert resumed == uninterrupted[3 * 4:]
    assert [lr for lr, _ in uninterrupted[::4]] == [0.1, 0.1, 0.05, 0.05, 0.025, 0.025, 0.0125]


def test_scheduler_count_and_state_must_match(tmp_path):
    _, a, _ = scheduled_trainer()
    a.save_checkpoint(tmp_path / "with")
    model, plain = make_trainer(optimizer=lambda p, lr: gc.optim.SGD(p, lr=0.1, momentum=0.9))
    with pytest.raises(CheckpointError, match=r"holds 1 lr scheduler state\(s\), this optimizer has 0"):
        plain.load_checkpoint(tmp_path / "with")
    plain.save_checkpoint(tmp_path / "without")
    _, b, _ = scheduled_trainer()
    with pytest.raises(CheckpointError, match=r"holds 0 lr scheduler state\(s\), this optimizer has 1"):
        b.load_checkpoint(tmp_path / "without")

    model, c = make_trainer(optimizer=lambda p, lr: gc.optim.SGD(p, lr=0.1, momentum=0.9))
    other = gc.optim.lr_scheduler.ExponentialLR(c.optimizer, gamma=0.9)
    other.step()
    before = (model.state_dict(), c.optimizer.lr, other.state_dict())
    with pytest.raises(CheckpointError, match=r"scheduler 0 \(ExponentialLR\): .*StepLR"):
        c.load_checkpoint(tmp_path / "with")
    assert (c.optimizer.lr, other.state_dict()) == before[1:]
    _assert_unchanged(model, c, before[0], 0)


def test_saving_into_a_fifo_is_a_checkpoint_error(tmp_path):
    _, trainer = make_trainer()
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint .*pipe.*FIFO"):
        trainer.save_checkpoint(tmp_path / "pipe")
