"""MPI for data-parallel training: the world, timed collectives, and failure handling.

Why MPI (mpi4py): the proven engine for CPU and GPU clusters (Horovod and ONNX Runtime's own training used
it); ``mpirun -n N python script.py`` is the launcher people know. mpi4py is imported lazily, only when a
launcher started this process, so ``python script.py`` is a world of 1 with no MPI at all (and no mpi4py
needed).

Why timed collectives: a blocking ``Allreduce`` waits forever for a rank that died or hangs. Every
collective here runs under a watchdog thread: past ``timeout`` seconds in one collective, the rank prints
one line saying so and calls ``MPI.COMM_WORLD.Abort``, which ends every rank. (Non-blocking collectives
polled with ``Test()`` were the first design: on this 2-core machine the step's Allreduce took 0.1 to 9 ms
that way against a steady 0.1 ms blocking, as libnbc advances only inside ``Test`` calls; mpi4py releases
the GIL inside blocking calls, so the watchdog runs alongside.) A rank that raises an uncaught exception does the same
from ``sys.excepthook`` (one line naming the rank and the error after the traceback), so no rank is left
waiting in a collective for a peer that is gone. A rank killed outright (SIGKILL) is noticed by the
launcher (Open MPI's ``mpirun`` ends the job and names the rank); the timeout covers launchers that do not.
"""

from __future__ import annotations

import os
import sys
import threading
import time

import numpy as np

DEFAULT_TIMEOUT = 600.0  # seconds a collective may wait: longer than any sane per-step or checkpoint skew
TIMEOUT_ENV = "GRAPHC_DIST_TIMEOUT"
# Set by the launchers of Open MPI, MPICH/Intel MPI (Hydra), PMIx and Slurm's PMI; GRAPHC_MPI=1 forces MPI.
_LAUNCHER_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK", "MPI_LOCALNRANKS")


class DistributedError(RuntimeError):
    """A collective failed or timed out, or the ranks disagree (different models, data positions)."""


def launched_by_mpi() -> bool:
    """Whether an MPI launcher started this process (else it is a world of 1 without MPI)."""
    return os.environ.get("GRAPHC_MPI") == "1" or any(name in os.environ for name in _LAUNCHER_ENV)


def local_size() -> int:
    """Ranks of this job on this machine (to share its cores between them)."""
    for name in ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE"):
        if os.environ.get(name, "").isdigit():
            return max(1, int(os.environ[name]))
    return 1


class LocalWorld:
    """A world of 1: every collective is the identity. Same interface as :class:`MPIWorld`."""

    rank = 0
    size = 1
    timeout = DEFAULT_TIMEOUT

    def allreduce_sum(self, array: np.ndarray, what: str = "allreduce") -> np.ndarray:
        return array

    def allreduce_min_max(self, array: np.ndarray, what: str = "allreduce") -> tuple[np.ndarray, np.ndarray]:
        return array.copy(), array.copy()

    def broadcast(self, array: np.ndarray, what: str = "broadcast") -> np.ndarray:
        return array

    def broadcast_bytes(self, data: bytes, what: str = "broadcast") -> bytes:
        return data

    def barrier(self, what: str = "barrier") -> None:
        pass

    def abort(self, code: int = 1) -> None:
        raise SystemExit(code)


class MPIWorld:
    """``MPI.COMM_WORLD`` with collectives under a watchdog (see the module docstring)."""

    def __init__(self, timeout: float | None = None):
        from mpi4py import MPI  # lazily: only under a launcher; initialises MPI (thread level "multiple")

        self.MPI = MPI
        self.comm = MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.timeout = float(timeout if timeout is not None else os.environ.get(TIMEOUT_ENV, DEFAULT_TIMEOUT))
        if not self.timeout > 0:
            raise ValueError(f"the collective timeout must be > 0 seconds, got {self.timeout}")
        self._pending: tuple[str, float] | None = None  # (what, when it started) while in a collective
        threading.Thread(target=self._watchdog, name="graphc-mpi-watchdog", daemon=True).start()

    def _watchdog(self) -> None:
        """Abort the job when a collective has waited longer than the timeout (a peer died or hangs)."""
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            pending = self._pending
            if pending is not None and time.monotonic() - pending[1] > self.timeout:
                self.fail(f"timed out after {self.timeout:g} s in {pending[0]}: another rank failed, was killed "
                          f"or hangs (set {TIMEOUT_ENV} or gc.distributed.init(timeout=...) to wait longer)")

    def _collective(self, what: str, call, *args, **kwargs):
        """Run a blocking collective (mpi4py releases the GIL in it) with the watchdog armed."""
        self._pending = (what, time.monotonic())
        try:
            return call(*args, **kwargs)
        finally:
            self._pending = None

    def fail(self, message: str) -> None:
        print(f"graphc.distributed: rank {self.rank} of {self.size}: {message}", file=sys.stderr, flush=True)
        self.abort(1)

    def allreduce_sum(self, array: np.ndarray, what: str = "allreduce") -> np.ndarray:
        """Sum ``array`` (C-contiguous) over all ranks, in place; returns it."""
        self._collective(what, self.comm.Allreduce, self.MPI.IN_PLACE, array, op=self.MPI.SUM)
        return array

    def allreduce_min_max(self, array: np.ndarray, what: str = "allreduce") -> tuple[np.ndarray, np.ndarray]:
        """Element-wise minimum and maximum of ``array`` over the ranks (to check they agree)."""
        low, high = np.array(array, copy=True), np.array(array, copy=True)
        self._collective(what, self.comm.Allreduce, self.MPI.IN_PLACE, low, op=self.MPI.MIN)
        self._collective(what, self.comm.Allreduce, self.MPI.IN_PLACE, high, op=self.MPI.MAX)
        return low, high

    def broadcast(self, array: np.ndarray, what: str = "broadcast") -> np.ndarray:
        """Rank 0's ``array`` on every rank (same shape and dtype everywhere), in place; returns it."""
        self._collective(what, self.comm.Bcast, array, root=0)
        return array

    def broadcast_bytes(self, data: bytes, what: str = "broadcast") -> bytes:
        """Rank 0's ``data`` on every rank (any length; the others pass anything)."""
        length = self.broadcast(np.asarray([len(data)], dtype=np.int64), what)
        buffer = np.frombuffer(data, dtype=np.uint8).copy() if self.rank == 0 else np.empty(int(length[0]), np.uint8)
        return self.broadcast(buffer, what).tobytes()

    def barrier(self, what: str = "barrier") -> None:
        self._collective(what, self.comm.Barrier)

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)


def install_excepthook(world: MPIWorld) -> None:
    """Make an uncaught exception on any rank end the whole job at once (see the module docstring)."""
    previous = sys.excepthook

    def hook(kind, value, traceback):
        previous(kind, value, traceback)  # the failing rank's own traceback, once
        if issubclass(kind, KeyboardInterrupt):
            why = "interrupted (KeyboardInterrupt)"
        else:
            why = f"failed with {kind.__name__}: {str(value).splitlines()[0] if str(value) else ''}".rstrip(": ")
        world.fail(f"{why}; aborting every rank")

    sys.excepthook = hook
