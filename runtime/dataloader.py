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

    A map-style dataset (any object with ``__len__`` and ``__getitem__``, as
    ``torch.utils.data.DataLoader(MyDataset())`` takes) is batched by calling
    ``dataset[i]`` per sample and stacking, as torch's default collate does:
    samples that are tuples/lists of arrays give tuples of batches, dicts give
    dicts, a single array (or number) gives one batch array. Every sample must
    have the same structure, and within a batch the same shapes and dtypes.

    Sharding for data-parallel training, ``shard=(rank, world_size)``, as ``DistributedSampler``: every
    rank draws the same epoch order (the same ``seed`` everywhere) and takes every ``world_size``-th
    sample of it from position ``rank``, so the shards are disjoint and batch ``b`` of all ranks together
    is batch ``b`` of one loader with ``world_size`` times the batch size. Every rank gets the same number
    of samples, hence of steps: with ``drop_last=False`` the epoch order is padded by repeating its first
    samples up to a multiple of ``world_size`` (a few samples count twice per epoch, as in PyTorch); with
    ``drop_last=True`` its tail is cut to a multiple of ``world_size`` and each shard's incomplete last
    batch is dropped. ``seed=None`` is refused with a shard: the ranks would shuffle differently.
    """

    def __init__(self, *arrays, batch_size: int = 1, shuffle: bool = False,
                 drop_last: bool = False, seed: int | None = None, shard: tuple[int, int] | None = None):
        self.dataset = None
        self._structure: tuple | None = None  # the sample structure of a map-style dataset, once seen
        if any(_is_dataset(a) for a in arrays) and len(arrays) > 1:
            kind = type(next(a for a in arrays if _is_dataset(a))).__name__
            raise ValueError(f"DataLoader: a map-style dataset ({kind}) must be passed alone (its __getitem__ "
                             f"returns every field of a sample)")
        if len(arrays) == 1 and _is_dataset(arrays[0]):
            self.dataset = arrays[0]
            self._keys, self._arrays = None, ()
            num_samples = _dataset_len(self.dataset)
        elif len(arrays) == 1 and isinstance(arrays[0], Mapping):
            self._keys: tuple | None = tuple(arrays[0].keys())
            arrays = tuple(arrays[0].values())
        else:
            if len(arrays) == 1 and isinstance(arrays[0], (tuple, list)):
                arrays = tuple(arrays[0])
            self._keys = None
        if self.dataset is None:
            num_samples = self._init_arrays(arrays)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
            raise ValueError(f"DataLoader: batch_size must be a positive integer, got {batch_size!r}")

        self.num_samples = num_samples
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        self.shard = _check_shard(shard, shuffle, seed)
        world = 1 if self.shard is None else self.shard[1]
        # Samples this loader (this shard) yields per epoch: see "Sharding" in the class docstring.
        self._shard_samples = num_samples // world if self.drop_last else -(-num_samples // world)
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

    def _init_arrays(self, arrays) -> int:
        """Check and keep in-memory arrays; returns the number of samples."""
        if not arrays:
            raise ValueError("DataLoader needs at least one array")
        self._arrays = tuple(np.asarray(a) for a in arrays)
        names = self._keys or tuple(f"#{i}" for i in range(len(self._arrays)))
        for name, a in zip(names, self._arrays):
            if a.ndim == 0:
                raise ValueError(f"DataLoader: array {name} is a scalar; arrays need a first (sample) dimension")
            if a.dtype.kind not in "biuf":
                raise ValueError(f"DataLoader: array {name} must hold numbers (bool, int or float), got dtype "
                                 f"{a.dtype}; a dataset object needs __len__ and __getitem__")
        sizes = {name: a.shape[0] for name, a in zip(names, self._arrays)}
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{k}: {v}" for k, v in sizes.items())
            raise ValueError(f"DataLoader: arrays must share their first dimension, got sizes {listed}")
        return int(self._arrays[0].shape[0])

    def __len__(self) -> int:
        """Number of batches per epoch."""
        if self.drop_last:
            return self._shard_samples // self.batch_size
        return -(-self._shard_samples // self.batch_size)

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
        if self.shard is not None:  # pad (repeating from the start) or cut to whole rounds, then stride
            rank, world = self.shard
            order = self._order if self._order is not None else np.arange(self.num_samples)
            self._order = np.resize(order, self._shard_samples * world)[rank::world]

    def _next_epoch(self) -> None:
        self._epoch += 1
        self._batch = 0
        self._rng_state = self._rng.bit_generator.state
        self._order = None

    def _take(self, b: int):
        start, stop = b * self.batch_size, min((b + 1) * self.batch_size, self._shard_samples)
        index = slice(start, stop) if self._order is None else self._order[start:stop]
        if self.dataset is not None:
            return self._collate(range(start, stop) if self._order is None else index)
        batch = tuple(np.ascontiguousarray(a[index]) for a in self._arrays)
        return dict(zip(self._keys, batch)) if self._keys is not None else batch

    def _collate(self, indices):
        """Fetch ``dataset[i]`` for each index and stack them field by field (torch's default collate)."""
        samples = []
        for i in indices:
            try:
                samples.append(self.dataset[int(i)])
            except Exception as error:
                error.add_note(f"(raised by dataset[{int(i)}] of {type(self.dataset).__name__}, "
                               f"fetched by DataLoader)")
                raise
        first = int(indices[0])
        structure = _structure(samples[0])
        if self._structure is None:
            self._structure = (structure, first)
        elif structure != self._structure[0]:
            raise ValueError(f"DataLoader: dataset[{first}] returned {_describe(structure)}, but "
                             f"dataset[{self._structure[1]}] returned {_describe(self._structure[0])}; every "
                             f"sample must have the same structure")
        fields = _fields(samples[0], structure)
        columns = {key: [] for key in fields}
        for i, sample in zip(indices, samples):
            got = _structure(sample)
            if got != structure:
                raise ValueError(f"DataLoader: dataset[{int(i)}] returned {_describe(got)}, but dataset[{first}] "
                                 f"returned {_describe(structure)}; every sample must have the same structure")
            for key, value in _fields(sample, structure).items():
                columns[key].append(value)
        stacked = {key: _stack(values, key, [int(i) for i in indices]) for key, values in columns.items()}
        if structure[0] == "array":
            return stacked[None]
        if structure[0] == "dict":
            return stacked
        return tuple(stacked.values())

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
            # Only the world size, not the rank: every shard is at the same position, so one rank's
            # saved position restores every rank (gc.Trainer saves rank 0's). Absent when unsharded.
            **({"shard_world_size": self.shard[1]} if self.shard is not None else {}),
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
        saved_world, world = state.get("shard_world_size", 1), 1 if self.shard is None else self.shard[1]
        if saved_world != world:
            raise ValueError(f"DataLoader.load_state_dict: saved with shards over a world of {saved_world!r} "
                             f"process(es), this loader is sharded over {world}; resuming would not reproduce "
                             f"the saved order")
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


def _check_shard(shard, shuffle: bool, seed) -> tuple[int, int] | None:
    """``shard`` as ``(rank, world_size)`` ints with 0 <= rank < world_size, or None; else a ValueError."""
    if shard is None:
        return None
    ok = isinstance(shard, (tuple, list)) and len(shard) == 2 and all(
        isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in shard)
    if not ok or not 0 <= shard[0] < shard[1]:
        raise ValueError(f"DataLoader: shard must be (rank, world_size) with 0 <= rank < world_size, "
                         f"got {shard!r}")
    if shuffle and seed is None:
        raise ValueError("DataLoader: shard with shuffle=True needs a seed, the same on every rank (with "
                         "seed=None each rank would draw its own order and the shards would overlap)")
    return int(shard[0]), int(shard[1])


def _is_dataset(obj) -> bool:
    """A map-style dataset: indexable with a length, and not something numpy reads as an array."""
    return (hasattr(obj, "__len__") and hasattr(obj, "__getitem__") and not hasattr(obj, "__array__")
            and not isinstance(obj, (np.ndarray, Mapping, tuple, list, str, bytes)))


def _dataset_len(dataset) -> int:
    try:
        n = len(dataset)
    except Exception as error:
        raise ValueError(f"DataLoader: len() of the dataset ({type(dataset).__name__}) failed: {error}") from error
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"DataLoader: len() of the dataset ({type(dataset).__name__}) must be an integer >= 0, "
                         f"got {n!r}")
    return int(n)


def _structure(sample) -> tuple:
    """("tuple", n) | ("dict", keys) | ("array",): what a sample is, to check every sample agrees."""
    if isinstance(sample, (tuple, list)):
        return ("tuple", len(sample))
    if isinstance(sample, Mapping):
        return ("dict", tuple(sample.keys()))
    return ("array",)


def _describe(structure: tuple) -> str:
    if structure[0] == "tuple":
        return f"a tuple of {structure[1]} items"
    if structure[0] == "dict":
        return f"a dict with keys {list(structure[1])}"
    return "a single array"


def _fields(sample, structure: tuple) -> dict:
    if structure[0] == "tuple":
        return {f"item {k}": v for k, v in enumerate(sample)}
    if structure[0] == "dict":
        return {key: sample[key] for key in structure[1]}
    return {None: sample}


def _stack(values: list, key, indices: list[int]) -> np.ndarray:
    """One batch array from one field of each sample; shapes and dtypes must agree."""
    where = "" if key is None else (f"{key} of " if isinstance(key, str) and key.startswith("item ") else
                                    f"key {key!r} of ")
    arrays = []
    for i, value in zip(indices, values):
        array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
        if array.dtype.kind not in "biuf":
            raise ValueError(f"DataLoader: {where}dataset[{i}] is {type(value).__name__} "
                             f"(dtype {array.dtype}); samples must hold numbers (arrays, ints or floats)")
        arrays.append(array)
    for i, array in zip(indices, arrays):
        if array.shape != arrays[0].shape or array.dtype != arrays[0].dtype:
            raise ValueError(f"DataLoader: {where}dataset[{i}] has shape {array.shape} and dtype {array.dtype}, "
                             f"but {where}dataset[{indices[0]}] has shape {arrays[0].shape} and dtype "
                             f"{arrays[0].dtype}; samples batched together must match")
    return np.ascontiguousarray(np.stack(arrays))


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
