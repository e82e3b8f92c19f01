"""Run a data-parallel training step: gradient graph -> one Allreduce -> update graph.

The two graphs come from ``passes.split_step`` (as ``ModelProto``s; runtime imports no ``passes``). Per
step, on every rank:

1. the gradient session runs on this rank's batch; its ``reduce.buffer`` output holds
   ``(flat gradients, loss, scalar metrics) / world_size``;
2. one ``Allreduce(SUM)`` of that buffer, in place (``runtime.mpi``: non-blocking and timed);
3. the update session runs the optimizer on the summed buffer: the mean gradient, so every rank computes
   the same new parameters from the same inputs; the loss and metrics read from the buffer's tail are
   the global means.

Every rank therefore sees the same loss and the same ``grad_check`` (a NaN or Inf anywhere reaches every
rank through the sum) and decides alike to adopt, skip or raise, so the ranks never part ways. State is
kept as in ``TrainingSession``'s plain-feeds path: numpy arrays fed back, adopted with one assignment
after a good step. At build, rank 0's state is broadcast to every rank (after checking that every rank
built the same state names, shapes and dtypes), so all start from rank 0's parameters.

BatchNorm running statistics are per rank (computed from the rank's own batch, as PyTorch DDP without
SyncBatchNorm); they are not averaged. ``save``/checkpoints take rank 0's.
"""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import onnx

from passes.names import (
    BATCH_INPUTS_KEY,
    GRAD_CHECK,
    GRAD_SCALE,
    LOSS,
    LR,
    REDUCE_BUFFER,
    REDUCED,
    STATE_PAIRS_KEY,
    STEP,
)
from runtime.input_files import input_specs
from runtime.mpi import DistributedError, LocalWorld
from runtime.run_errors import run_session
from runtime.training_session import LEAN_SESSION_NODES, NonFiniteLossError, _Adopted, _FastFeedCheck, create_session

_RANK_MIX = 0x9E3779B97F4A7C15  # spreads rank r's random key far from rank 0's (splitmix64's increment)


class DistributedSession:
    """The data-parallel counterpart of ``TrainingSession`` (same methods, used by ``gc.Trainer``)."""

    def __init__(self, grad_model: onnx.ModelProto, update_model: onnx.ModelProto,
                 initial_values: dict[str, np.ndarray], *, reduced_names: list[str], gradient_size: int,
                 metric_names: list[str], world=None, provider: str = "cpu", nan_policy: str = "raise",
                 threads: int | None = None, random_key: str | None = None):
        if nan_policy not in ("raise", "skip"):
            raise ValueError(f"nan_policy must be 'raise' or 'skip', got {nan_policy!r}")
        self.world = world if world is not None else LocalWorld()
        self.provider, self.nan_policy = provider, nan_policy
        self.skipped_steps = 0
        self._grad_model, self._update_model = grad_model, update_model
        # Very large steps (long unrolled recurrences) get lean options, as TrainingSession's (see there);
        # the batch dims stay symbolic here: the ranks' gradient session takes every batch size.
        self.grad_session = create_session(grad_model, provider, threads,
                                           lean=len(grad_model.graph.node) > LEAN_SESSION_NODES)
        self.update_session = create_session(update_model, provider, threads,
                                             lean=len(update_model.graph.node) > LEAN_SESSION_NODES)
        self._grad_outputs = [o.name for o in self.grad_session.get_outputs()]
        self._update_outputs = [o.name for o in self.update_session.get_outputs()]
        self._grad_pairs = [tuple(p) for p in _meta(grad_model, STATE_PAIRS_KEY)]
        self._update_pairs = [tuple(p) for p in _meta(update_model, STATE_PAIRS_KEY)]
        self.batch_inputs = _meta(grad_model, BATCH_INPUTS_KEY)
        self._check = _FastFeedCheck([s for s in input_specs(grad_model) if s.name in set(self.batch_inputs)])
        self._reduced_names, self._gradient_size = list(reduced_names), int(gradient_size)
        self._metric_names = list(metric_names)
        self._random_key = random_key
        grad_inputs = [i.name for i in self.grad_session.get_inputs()]
        update_inputs = [i.name for i in self.update_session.get_inputs()]
        self._grad_state = [n for n in grad_inputs if n in initial_values]
        self._update_state = [n for n in update_inputs if n in initial_values and n != LR]
        self._extra_inputs = {LR: np.asarray(initial_values[LR])}
        names = [n for n in initial_values if n != LR]
        missing = set(self._grad_state + self._update_state) - set(names)
        if missing:
            raise ValueError(f"no initial value for state inputs {sorted(missing)}")
        scale_input = next(i for i in grad_model.graph.input if i.name == GRAD_SCALE)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(scale_input.type.tensor_type.elem_type)
        self._scale = np.asarray(1.0 / self.world.size, dtype=dtype)
        state = {n: np.array(initial_values[n], order="C", copy=True) for n in names}
        self._dtypes = {n: a.dtype for n, a in state.items()}
        self._broadcast_from_rank_zero(state)
        self._now = _Adopted(state, 0, int(state.get(STEP, 0)))

    def _broadcast_from_rank_zero(self, state: dict[str, np.ndarray]) -> None:
        """Every rank takes rank 0's state, after checking all ranks built the same state layout."""
        layout = json.dumps([[n, str(a.dtype), list(a.shape)] for n, a in state.items()]).encode()
        digest = np.frombuffer(hashlib.sha256(layout).digest()[:8], dtype=np.int64).copy()
        low, high = self.world.allreduce_min_max(digest, "the check that every rank built the same model")
        if low[0] != high[0]:
            raise DistributedError(f"rank {self.world.rank}: the ranks built different training steps (state "
                                   f"names, shapes or dtypes differ); every rank must build the same model, "
                                   f"optimizer and inputs")
        for name, array in state.items():
            self.world.broadcast(array, f"the broadcast of {name!r} from rank 0")

    @property
    def steps(self) -> int:
        return self._now.steps

    @steps.setter
    def steps(self, value: int) -> None:
        self._now = self._now._replace(steps=int(value))

    @property
    def state(self) -> dict:
        return self._now.arrays

    # ---- one step -----------------------------------------------------
    def run(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One data-parallel step; returns the global mean loss and metrics, like ``TrainingSession.run``."""
        batch = self._check(batch)
        now = self._now
        feeds = {**batch, **{n: now.arrays[n] for n in self._grad_state}, GRAD_SCALE: self._scale}
        if self._random_key is not None and self.world.rank:  # rank 0 keeps the key a single process uses
            key = int(feeds[self._random_key]) ^ ((self.world.rank * _RANK_MIX) & 0xFFFFFFFFFFFFFFFF)
            feeds[self._random_key] = np.asarray(key - (1 << 64) if key >= 1 << 63 else key, dtype=np.int64)
        grad = dict(zip(self._grad_outputs, run_session(self.grad_session, self._grad_outputs, feeds,
                                                        self._grad_model, "training step (gradients)")))
        buffer = np.ascontiguousarray(grad[REDUCE_BUFFER])
        self.world.allreduce_sum(buffer, f"the gradient Allreduce of step {now.steps + 1}")
        feeds = {REDUCED: buffer, **self._extra_inputs, **{n: now.arrays[n] for n in self._update_state}}
        update = dict(zip(self._update_outputs, run_session(self.update_session, self._update_outputs, feeds,
                                                            self._update_model, "training step (update)")))
        tail = buffer[self._gradient_size:]
        reduced = {name: np.asarray(tail[i]) for i, name in enumerate(self._reduced_names)}
        results = {LOSS: reduced[LOSS]}
        for name in self._metric_names:
            results[name] = reduced[name] if name in reduced else (grad[name] if name in grad else update[name])
        results[GRAD_CHECK] = update[GRAD_CHECK]
        if self._finite(float(results[LOSS]), float(update[GRAD_CHECK]), now.steps):
            new = dict(now.arrays)
            new.update({inp: grad[out] for inp, out in self._grad_pairs})
            new.update({inp: update[out] for inp, out in self._update_pairs})
            self._now = _Adopted(new, 0, now.steps + 1)  # the one assignment that adopts the step
        return results

    def _finite(self, loss: float, check: float, steps: int) -> bool:
        if math.isfinite(loss) and math.isfinite(check):
            return True
        if self.nan_policy == "skip":
            self.skipped_steps += 1
            return False
        what = f"the global mean loss is {loss}" if not math.isfinite(loss) else \
            f"the loss is finite ({loss}) but a gradient is not (NaN or infinite elements on some rank)"
        raise NonFiniteLossError(
            f"{what} at step {steps + 1}; every rank refused the update: parameters and optimizer state keep "
            f"their values from before this step (use nan_policy='skip' to skip such steps)")

    # ---- state access --------------------------------------------------
    def read(self, name: str) -> np.ndarray:
        return np.array(self.state[name], copy=True)

    def write(self, name: str, array: np.ndarray) -> None:
        array = np.require(np.asarray(array, dtype=self._dtypes[name]), requirements="C")
        now = self._now
        steps = int(array) if name == STEP else now.steps
        self._now = _Adopted({**now.arrays, name: np.array(array, copy=True)}, 0, steps)

    def set_input(self, name: str, value) -> None:
        if name not in self._extra_inputs:
            raise KeyError(f"{name!r} is not a settable input; settable: {sorted(self._extra_inputs)}")
        self._extra_inputs[name] = np.asarray(value, dtype=self._extra_inputs[name].dtype)

    def state_names(self) -> list[str]:
        return list(self.state)


def _meta(model: onnx.ModelProto, key: str):
    return json.loads({p.key: p.value for p in model.metadata_props}[key])
