"""Scenarios of data-parallel training, run by tests/test_distributed.py with and without ``mpirun -n 2``.

    python ddp_check.py reference OUT        # one process, batch 64: the equivalence reference
    mpirun -n 2 python ddp_check.py all OUT  # per-rank batch 32 + every multi-rank check; OUT/rank<r>.npz
    mpirun -n 2 python ddp_check.py raise|kill|hang OUT   # rank 1 fails at step 5
"""

from __future__ import annotations

import os
import signal
import sys
import time

import numpy as np

import graphc as gc
import graphc.nn.functional as F
from graphc import nn

STEPS = 20


def make_model(kind: str, seed: int):
    gc.manual_seed(seed)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    if kind == "cnn":  # no BatchNorm: exactly equivalent to one process with the whole batch
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(8 * 4 * 4, 10))
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Flatten(), nn.Dropout(0.25), nn.Linear(8 * 4 * 4, 10))


def data(kind: str):
    X, Y = gc.data.load_digits(flatten=kind == "mlp")
    return X, Y


def trainer_for(kind: str, seed: int = 0, distributed: bool = True, **kwargs):
    model = make_model(kind, seed)
    x = gc.input("x", shape=("batch", 64) if kind == "mlp" else ("batch", 1, 8, 8))
    y = gc.input("y", shape=("batch",), dtype="int64")
    logits = model(x)
    accuracy = (logits.argmax(1) == y).astype("float32").mean()
    trainer = gc.Trainer(F.cross_entropy(logits, y), gc.optim.Adam(model.parameters(), lr=1e-2), inputs=[x, y],
                         seed=0, metrics={"acc": accuracy}, distributed=distributed, threads=1, **kwargs)
    return model, trainer


def run_steps(trainer, loader, n: int) -> list[float]:
    losses = []
    while len(losses) < n:
        for batch in loader:
            losses.append(trainer.step(batch))
            if len(losses) == n:
                break
    return losses


def state_of(model, trainer) -> dict:
    return {**{f"param.{k}": v for k, v in model.state_dict().items()},
            **{f"state.{k}": trainer.session.read(k) for k in trainer.session.state_names()}}


def reference(out: str) -> None:
    """One process, batch 64, plain Trainer (and distributed=True, a world of 1): the equivalence anchor."""
    results = {}
    for kind in ("mlp", "cnn"):
        X, Y = data(kind)
        for distributed in (False, True):
            model, trainer = trainer_for(kind, distributed=distributed)
            loader = gc.data.DataLoader(X, Y, batch_size=64, shuffle=True, seed=0)
            losses = run_steps(trainer, loader, STEPS)
            tag = f"{kind}.{'dist1' if distributed else 'plain'}"
            results[f"{tag}.losses"] = np.asarray(losses)
            results[f"{tag}.acc"] = trainer.last_metrics["acc"]
            results.update({f"{tag}.{k}": v for k, v in model.state_dict().items()})
    np.savez(os.path.join(out, "reference.npz"), **results)


def all_checks(out: str) -> None:
    world = gc.distributed.init()
    rank, size = gc.distributed.rank(), gc.distributed.world_size()
    assert size == 2 and world.size == 2, size
    results = {}
    # 1. equivalence (2 x 32 against 1 x 64) and identical state on both ranks, BatchNorm and dropout included
    for kind in ("mlp", "cnn", "cnnbn"):
        X, Y = data(kind)
        model, trainer = trainer_for(kind, seed=rank)  # rank 1 starts elsewhere: the build broadcasts rank 0's
        loader = gc.data.DataLoader(X, Y, batch_size=32, shuffle=True, seed=0, shard=(rank, size))
        results[f"{kind}.losses"] = np.asarray(run_steps(trainer, loader, STEPS))
        results[f"{kind}.acc"] = trainer.last_metrics["acc"]
        results.update({f"{kind}.{k}": v for k, v in state_of(model, trainer).items()})
    # 2. checkpoint at step 10 and resume (fresh trainer, model and loader) = uninterrupted, across an epoch end
    X, Y = data("cnnbn")
    path = os.path.join(out, "ckpt")
    loaders = [gc.data.DataLoader(X, Y, batch_size=64, shuffle=True, seed=3, shard=(rank, size)) for _ in range(3)]
    model, trainer = trainer_for("cnnbn", seed=5)
    run_steps(trainer, loaders[0], STEPS)
    results.update({f"straight.{k}": v for k, v in state_of(model, trainer).items()})
    model, trainer = trainer_for("cnnbn", seed=5)
    run_steps(trainer, loaders[1], 10)
    trainer.save_checkpoint(path, loader=loaders[1])
    model, trainer = trainer_for("cnnbn", seed=7)  # other initial values: the checkpoint must replace them
    trainer.load_checkpoint(path, loader=loaders[2])
    run_steps(trainer, loaders[2], STEPS - 10)
    results.update({f"resumed.{k}": v for k, v in state_of(model, trainer).items()})
    # 3. a NaN batch on rank 1 only: both ranks refuse the same step (raise, then skip)
    X, Y = data("mlp")
    for policy in ("raise", "skip"):
        model, trainer = trainer_for("mlp", nan_policy=policy)
        trainer.step((X[:32], Y[:32]))
        before = state_of(model, trainer)
        bad = X[32:64].copy()
        if rank == 1:
            bad[0, 0] = np.nan
        try:
            trainer.step((bad, Y[32:64]))
            raised = 0
        except gc.NonFiniteLossError:
            raised = 1
        after = state_of(model, trainer)
        results[f"nan.{policy}.raised"] = np.asarray(raised)
        results[f"nan.{policy}.skipped"] = np.asarray(trainer.skipped_steps)
        results[f"nan.{policy}.unchanged"] = np.asarray(all(np.array_equal(before[k], after[k]) for k in before))
        results[f"nan.{policy}.steps"] = np.asarray(trainer.steps_done)
    # 4. fit: one progress bar (rank 0), early stopping on rank 0's value even where rank 1's differs
    model, trainer = trainer_for("mlp")
    loader = gc.data.DataLoader(X, Y, batch_size=300, shuffle=True, seed=0, shard=(rank, size))
    epochs = iter(range(1, 100))
    history = trainer.fit(loader, epochs=5, patience=1,
                          validate=lambda: {"val_loss": 1.0 if rank == 0 else 1.0 - 0.1 * next(epochs)})
    results["fit.epochs"] = np.asarray(len(history))
    results["fit.loss"] = np.asarray([r["loss"] for r in history])
    # 5. rank-0-only writes: each rank asks for its own file name, only rank 0's appears
    trainer.save(os.path.join(out, f"step_from_rank{rank}.onnx"))
    np.savez(os.path.join(out, f"rank{rank}.npz"), **results)


def failing(mode: str, out: str) -> None:
    gc.distributed.init(timeout=4 if mode == "hang" else None)
    rank = gc.distributed.rank()
    X, Y = data("mlp")
    model, trainer = trainer_for("mlp")
    loader = gc.data.DataLoader(X, Y, batch_size=8, shuffle=True, seed=0, shard=(rank, 2))
    for step, batch in enumerate(loader, 1):
        if rank == 1 and step == 5:
            if mode == "raise":
                raise ValueError("a bad batch on purpose at step 5")
            if mode == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if mode == "hang":
                time.sleep(60)
        trainer.step(batch)
    print("finished without noticing the failure", flush=True)


if __name__ == "__main__":
    mode, out = sys.argv[1], sys.argv[2]
    if mode == "reference":
        reference(out)
    elif mode == "all":
        all_checks(out)
    else:
        failing(mode, out)
