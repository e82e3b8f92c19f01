"""A PyTorch-like DataLoader over in-memory numpy arrays, with resumable position.

Why not torch's: graphc trains on ONNX Runtime and must not depend on torch.
Why resumable: a checkpoint records where the data stream was (epoch, batch
within the epoch, shuffle generator state), so a resumed run sees exactly the
batches an uninterrupted run would have seen.

Epoch semantics (as in PyTorch): each ``iter(loader)`` starts a new epoch with
a fresh permutation, so peeking with ``next(iter(loader))`` or breaking out
of a loop abandons the rest of that epoch. The one exception is right after
``load_state_dict``: the next ``iter`` continues the saved epoch from the
saved batch with the saved permutation. Only the most recent iterator is
live; advancing an older one raises.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np

__all__ = ["DataLoader"]

_STATE_KEYS = ("epoch", "batch", "rng_state", "num_samples", "batch_size", "shuffle", "drop_last")


class DataLoader:
    """Batches over arrays that share their first dimension.

    ``DataLoader(X, y, batch_size=32, shuffle=True, seed=0)`` yields tuples
    ``(xb, yb)``; ``DataLoader({"x": X, "y": y}, ...)`` yields dicts with the
    same keys; a single tuple/list of arrays behaves like passing them
    positionally. Batches are C-contiguous numpy arrays (they go straight to
    ONNX Runtime); unshuffled batches may be views of the input arrays.
    """

    def __init__(self, *arrays, batch_size: int = 1, shuffle: bool = False,
                 drop_last: bool = False, seed: int | None = None):
        if len(arrays) == 1 and isinstance(arrays[0], Mapping):
            self._keys: tuple | None = tuple(arrays[0].keys())
            arrays = tuple(arrays[0].values())
        else:
            if len(arrays) == 1 and isinstance(arrays[0], (tuple, list)):
                arrays = tuple(arrays[0])
            self._keys = None
        if not arrays:
            raise ValueError("DataLoader needs at least one array")
        self._arrays = tuple(np.asarray(a) for a in arrays)
        names = self._keys or tuple(f"#{i}" for i in range(len(self._arrays)))
        for name, a in zip(names, self._arrays):
            if a.ndim == 0:
                raise ValueError(f"DataLoader: array {name} is a scalar; arrays need a first (sample) dimension")
        sizes = {name: a.shape[0] for name, a in zip(names, self._arrays)}
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{k}: {v}" for k, v in sizes.items())
            raise ValueError(f"DataLoader: arrays must share their first dimension, got sizes {listed}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"DataLoader: batch_size must be a positive integer, got {batch_size!r}")

        self.num_samples = int(self._arrays[0].shape[0])
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self._rng = np.random.default_rng(seed)
        # Position: the current epoch, batches of it already handed out, and the
        # generator state from *before* its permutation was drawn (so the
        # permutation can be redrawn on resume).
        self._epoch = 0
        self._batch = 0
        self._rng_state = self._rng.bit_generator.state
        self._order: np.ndarray | None = None
        self._resume = True  # next iter() continues (here: begins) epoch self._epoch
        self._live: object | None = None

    def __len__(self) -> int:
        """Number of batches per epoch."""
        if self.drop_last:
            return self.num_samples // self.batch_size
        return -(-self.num_samples // self.batch_size)

    @property
    def epoch(self) -> int:
        """Index of the epoch in progress, or of the next one if none is."""
        return self._epoch

    def _begin_epoch(self) -> None:
        """Restore the generator to the epoch's start and draw its order; when
        resuming this reproduces the permutation and leaves the generator where
        the uninterrupted run had it."""
        self._rng.bit_generator.state = self._rng_state
        self._order = self._rng.permutation(self.num_samples) if self.shuffle else None

    def _next_epoch(self) -> None:
        self._epoch += 1
        self._batch = 0
        self._rng_state = self._rng.bit_generator.state
        self._order = None

    def _take(self, b: int):
        start, stop = b * self.batch_size, min((b + 1) * self.batch_size, self.num_samples)
        index = slice(start, stop) if self._order is None else self._order[start:stop]
        batch = tuple(np.ascontiguousarray(a[index]) for a in self._arrays)
        return dict(zip(self._keys, batch)) if self._keys is not None else batch

    def __iter__(self) -> Iterator[Any]:
        token = object()
        self._live = token
        return self._epoch_iter(token)

    def _epoch_iter(self, token) -> Iterator[Any]:
        if self._live is not token:
            raise RuntimeError("DataLoader: this iterator was superseded by a newer iter(loader)")
        if not self._resume:  # the previous epoch was started (and maybe abandoned)
            self._next_epoch()
        self._resume = False
        self._begin_epoch()
        while self._batch < len(self):
            b = self._batch
            self._batch += 1  # count it before yielding: a checkpoint taken now resumes after it
            yield self._take(b)
            if self._live is not token:
                raise RuntimeError("DataLoader: this iterator was superseded by a newer iter(loader)")
        self._next_epoch()
        self._resume = True

    # ---- checkpoint / resume

    def state_dict(self) -> dict:
        """Position as a JSON-serialisable dict (ints, bools, strings only)."""
        return {
            "epoch": self._epoch,
            "batch": self._batch,
            "rng_state": _plain(self._rng_state),
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
        }

    def load_state_dict(self, state: Mapping) -> None:
        """Restore a position from ``state_dict``; the next ``iter`` yields the
        rest of the saved epoch, and later epochs match an uninterrupted run.
        The loader must be built over the same data with the same settings."""
        missing = [k for k in _STATE_KEYS if k not in state]
        if missing:
            raise ValueError(f"DataLoader.load_state_dict: missing keys {missing}")
        for key in ("num_samples", "batch_size", "shuffle", "drop_last"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"DataLoader.load_state_dict: saved {key}={state[key]!r} but this loader has "
                    f"{key}={getattr(self, key)!r}; resuming would not reproduce the saved order"
                )
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if epoch < 0 or not 0 <= batch <= len(self):
            raise ValueError(f"DataLoader.load_state_dict: bad position epoch={epoch}, batch={batch} "
                             f"(this loader has {len(self)} batches per epoch)")
        rng_state = state["rng_state"]
        kind = type(self._rng.bit_generator).__name__
        if not isinstance(rng_state, Mapping) or rng_state.get("bit_generator") != kind:
            raise ValueError(f"DataLoader.load_state_dict: expected a {kind} generator state, "
                             f"found {rng_state!r:.200}")
        self._rng.bit_generator.state = dict(rng_state)  # validates the contents
        self._epoch, self._batch = epoch, batch
        self._rng_state = self._rng.bit_generator.state
        self._order = None
        self._resume = True
        self._live = None


def _plain(obj):
    """Deep copy into plain Python types (numpy ints -> int) so json.dumps works."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj
