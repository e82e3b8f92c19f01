"""``gc.distributed``: data-parallel training over MPI, in the spirit of ``torch.distributed`` + DDP.

    mpirun -n 2 python train.py          # or: python train.py (a world of 1, no MPI needed)

    import graphc as gc
    gc.distributed.init()
    rank, world = gc.distributed.rank(), gc.distributed.world_size()
    loader = gc.data.DataLoader(X, Y, batch_size=32, shuffle=True, seed=0, shard=(rank, world))
    trainer = gc.Trainer(loss, opt, inputs=[x, y], distributed=True)   # gradients averaged across ranks
    trainer.fit(loader, epochs=10)       # one progress bar (rank 0); checkpoints written by rank 0

``init`` reads rank and world size from the MPI launcher (``mpirun``/``mpiexec``/``srun``); without one it
is a world of 1 and imports no MPI. Under a launcher with more than one rank it installs an exception
hook: an uncaught exception on any rank prints its traceback and one line naming the rank, then aborts
every rank (``MPI.COMM_WORLD.Abort``), and every collective is timed (``timeout`` seconds, default 600 or
``$GRAPHC_DIST_TIMEOUT``), so no rank hangs waiting for a failed one. See ``docs/distributed.md``.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from runtime.mpi import DistributedError, LocalWorld, MPIWorld, install_excepthook, launched_by_mpi, local_size

__all__ = ["init", "rank", "world_size", "is_initialized", "barrier", "DistributedError"]

_world = None


def init(timeout: float | None = None):
    """Join the MPI world the launcher started (a world of 1 without one); idempotent.

    ``timeout``: seconds any collective may wait before this rank gives up and aborts the job.
    """
    global _world
    if _world is None:
        if launched_by_mpi():
            _world = MPIWorld(timeout)
            if _world.size > 1:
                install_excepthook(_world)
        else:
            _world = LocalWorld()
    if timeout is not None:
        if not timeout > 0:
            raise ValueError(f"gc.distributed.init: timeout must be > 0 seconds, got {timeout!r}")
        _world.timeout = float(timeout)
    return _world


def is_initialized() -> bool:
    return _world is not None


def _require() -> object:
    if _world is None:
        raise RuntimeError("gc.distributed is not initialized: call gc.distributed.init() first")
    return _world


def rank() -> int:
    """This process's rank, 0 .. world_size() - 1."""
    return _require().rank


def world_size() -> int:
    return _require().size


def barrier() -> None:
    """Wait until every rank arrives (timed, as every collective)."""
    _require().barrier("gc.distributed.barrier()")


# ---- what gc.Trainer(distributed=True) uses ---------------------------------------------------------

def default_threads(threads: int | None) -> int | None:
    """ONNX Runtime threads per rank: the machine's cores shared between the ranks on it (unless given)."""
    if threads is not None or local_size() == 1:
        return threads
    return max(1, (os.cpu_count() or 1) // local_size())


def build_session(forward, trained: list[str], frozen: list[str], state_updates: dict, optimizer_config,
                  initial: dict, build_args: dict, session_args: dict, random_key: str | None):
    """The data-parallel session for a Trainer: the split step (``passes.split_step``) on the MPI world.

    ``initial`` holds the one-graph step's state values (maybe carried over from a rebuild); the split
    step has the same state names, so they are taken over as they are.
    """
    from graphc.program import to_proto
    from passes.split_step import build_split_step
    from runtime.distributed_session import DistributedSession

    world = init()
    split = build_split_step(forward, trained, optimizer_config, max_grad_norm=build_args["max_grad_norm"],
                             state_updates=state_updates, frozen=frozen,
                             fuse_update=build_args.get("fuse_update", False))
    values = {name: initial.get(name, value) for name, value in split.initial_values.items()}
    metric_names = split.extra_outputs + (["grad_norm"] if build_args["max_grad_norm"] is not None else [])
    if session_args.get("io_binding"):
        raise ValueError("distributed=True keeps the state in host arrays between the gradient and update "
                         "graphs (the Allreduce reads host memory); io_binding=True is not supported with it")
    return DistributedSession(to_proto(split.grad_model), to_proto(split.update_model), values,
                              reduced_names=split.reduced_names, gradient_size=split.gradient_size,
                              metric_names=metric_names, world=world, provider=session_args["provider"],
                              nan_policy=session_args["nan_policy"],
                              threads=default_threads(session_args.get("threads")), random_key=random_key)


def _trainer_world(trainer):
    return _world if getattr(trainer, "_distributed", False) and _world is not None else None


def is_rank_zero(trainer) -> bool:
    world = _trainer_world(trainer)
    return world is None or world.rank == 0


def rank_zero_value(trainer, value):
    """Rank 0's ``value`` (a float) on every rank: decisions such as early stopping come out the same."""
    world = _trainer_world(trainer)
    if world is None or world.size == 1:
        return value
    return float(world.broadcast(np.asarray([value], dtype=np.float64), "the early-stopping decision")[0])


def rank_zero_writes(what: str):
    """Decorate a Trainer method that writes files: on a distributed Trainer rank 0 writes, the others wait.

    Every rank first checks that all are at the same step (a checkpoint of a rank that is ahead would not
    be the job's state). Rank 0's failure is raised on every rank, naming rank 0 and the error, so no
    rank carries on alone.
    """

    def decorate(method):
        @functools.wraps(method)
        def wrapper(self, *args, **kwargs):
            world = _trainer_world(self)
            if world is None or world.size == 1:
                return method(self, *args, **kwargs)
            # A rebuild (a parameter frozen since the last step) broadcasts: every rank must do it, not
            # rank 0 alone inside the method.
            self._follow_requires_grad()
            low, high = world.allreduce_min_max(np.asarray([self.steps_done], dtype=np.int64), f"{what} (sync)")
            if low[0] != high[0]:
                raise DistributedError(f"{what}: the ranks are at different steps ({int(low[0])} .. "
                                       f"{int(high[0])}); every rank must call it at the same point of training")
            error, message = None, b""
            if world.rank == 0:
                try:
                    method(self, *args, **kwargs)
                except Exception as exc:  # noqa: BLE001 - shared with the other ranks, then re-raised
                    error, message = exc, f"{type(exc).__name__}: {exc}".encode()
            message = world.broadcast_bytes(message, f"{what} (rank 0 writing)")
            if error is not None:
                raise error
            if message:
                raise DistributedError(f"{what} failed on rank 0, which writes for every rank: "
                                       f"{message.decode(errors='replace')}")
        return wrapper

    return decorate
