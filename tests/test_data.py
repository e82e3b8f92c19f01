"""Tests for runtime.dataloader.DataLoader: batching, shuffling, resume."""

import json

import numpy as np
import pytest

from runtime.dataloader import DataLoader


def ids(batches):
    """The sample ids (first column / values of the first array) per batch."""
    return [b[0].tolist() for b in batches]


def run_epochs(loader, n):
    return [ids(loader) for _ in range(n)]


def test_batch_counts():
    x = np.arange(10)
    assert len(DataLoader(x, batch_size=3)) == 4
    assert len(DataLoader(x, batch_size=3, drop_last=True)) == 3
    assert len(DataLoader(x, batch_size=5, drop_last=True)) == 2
    assert len(DataLoader(x, batch_size=20, drop_last=True)) == 0
    assert [len(b[0]) for b in DataLoader(x, batch_size=3)] == [3, 3, 3, 1]
    assert [len(b[0]) for b in DataLoader(x, batch_size=3, drop_last=True)] == [3, 3, 3]
    assert ids(DataLoader(x, batch_size=4)) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_tuple_batches_are_paired_and_contiguous():
    X = np.asfortranarray(np.arange(20, dtype=np.float32).reshape(10, 2))
    y = np.arange(10)
    for xb, yb in DataLoader(X, y, batch_size=4, shuffle=True, seed=0):
        assert xb.flags.c_contiguous and yb.flags.c_contiguous
        np.testing.assert_array_equal(xb[:, 0], 2 * yb)
    # a tuple of arrays is the same as positional arrays
    a = [tuple(t.tolist() for t in b) for b in DataLoader((X, y), batch_size=4)]
    b = [tuple(t.tolist() for t in b) for b in DataLoader(X, y, batch_size=4)]
    assert a == b


def test_shuffle_each_sample_once_per_epoch_and_deterministic():
    x = np.arange(23)
    loader = DataLoader(x, batch_size=5, shuffle=True, seed=7)
    epochs = run_epochs(loader, 3)
    for e in epochs:
        assert sorted(sum(e, [])) == list(range(23))
    assert epochs[0] != epochs[1] != epochs[2]  # a new permutation per epoch
    assert sum(epochs[0], []) != list(range(23))
    assert run_epochs(DataLoader(x, batch_size=5, shuffle=True, seed=7), 3) == epochs
    assert run_epochs(DataLoader(x, batch_size=5, shuffle=True, seed=8), 1)[0] != epochs[0]


def test_drop_last_shuffled_drops_different_samples_but_no_repeats():
    loader = DataLoader(np.arange(10), batch_size=4, shuffle=True, drop_last=True, seed=0)
    for _ in range(3):
        flat = sum(ids(loader), [])
        assert len(flat) == 8 and len(set(flat)) == 8


def test_dict_mode():
    data = {"image": np.arange(12).reshape(6, 2), "label": np.arange(6)}
    batches = list(DataLoader(data, batch_size=4, shuffle=True, seed=1))
    assert len(batches) == 2
    for b in batches:
        assert isinstance(b, dict) and list(b) == ["image", "label"]
        np.testing.assert_array_equal(b["image"][:, 0], 2 * b["label"])
    assert sorted(np.concatenate([b["label"] for b in batches]).tolist()) == list(range(6))


def test_errors():
    with pytest.raises(ValueError, match="#0: 5, #1: 4"):
        DataLoader(np.zeros(5), np.zeros(4))
    with pytest.raises(ValueError, match="x: 3, y: 2"):
        DataLoader({"x": np.zeros(3), "y": np.zeros(2)})
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            DataLoader(np.zeros(3), batch_size=bad)
    with pytest.raises(ValueError, match="at least one array"):
        DataLoader()


def test_each_iter_is_a_new_epoch():
    loader = DataLoader(np.arange(8), batch_size=2, shuffle=True, seed=0)
    ref = run_epochs(DataLoader(np.arange(8), batch_size=2, shuffle=True, seed=0), 2)
    first = next(iter(loader))  # peek: starts (and abandons) epoch 0
    assert first[0].tolist() == ref[0][0]
    assert ids(loader) == ref[1]
    assert loader.epoch == 2


def test_superseded_iterator_raises():
    loader = DataLoader(np.arange(8), batch_size=2)
    old = iter(loader)
    next(old)
    new = iter(loader)
    next(new)
    with pytest.raises(RuntimeError, match="superseded"):
        next(old)


def uninterrupted(n_epochs, **kw):
    return run_epochs(DataLoader(np.arange(23), **kw), n_epochs)


@pytest.mark.parametrize("kw", [
    dict(batch_size=5, shuffle=True, seed=3),
    dict(batch_size=5, shuffle=True, seed=None),  # OS-seeded: still resumable from state
    dict(batch_size=4, shuffle=True, drop_last=True, seed=11),
    dict(batch_size=5, shuffle=False),
])
@pytest.mark.parametrize("stop_epoch,stop_batch", [(0, 2), (1, 0), (1, 4), (0, 5)])
def test_resume_equals_uninterrupted(kw, stop_epoch, stop_batch):
    """Stop after `stop_batch` batches of epoch `stop_epoch`, save the state as
    JSON, resume in a fresh loader, and compare with one uninterrupted run."""
    a = DataLoader(np.arange(23), **kw)
    n_batches = len(a)
    stop_batch = min(stop_batch, n_batches)
    seen = []  # batches per epoch, as an uninterrupted run would group them
    for _ in range(stop_epoch):
        seen.append(ids(a))
    partial = []
    it = iter(a)
    for _ in range(stop_batch):
        partial.append(next(it)[0].tolist())
    state = json.loads(json.dumps(a.state_dict()))  # must survive JSON
    assert state["epoch"] == stop_epoch and state["batch"] == stop_batch

    b = DataLoader(np.arange(23), **kw)
    b.load_state_dict(state)
    assert b.epoch == stop_epoch
    seen.append(partial + ids(b))  # the rest of the interrupted epoch
    seen += run_epochs(b, 2)
    if kw.get("seed", 0) is not None:
        assert seen == uninterrupted(stop_epoch + 3, **kw)
    else:  # compare with `a` continuing instead (its seed is random)
        rest = ids(_continue(it))
        cont = [partial + rest] + run_epochs(a, 2)
        assert seen[stop_epoch:] == cont


def _continue(it):
    """Wrap a live iterator so ids() can drain it."""
    yield from it


def test_resume_at_epoch_end_inside_loop():
    """A checkpoint taken inside the loop after the last batch resumes with an
    empty remainder, then the next epoch, exactly as the live loader does."""
    kw = dict(batch_size=5, shuffle=True, seed=2)
    a = DataLoader(np.arange(10), **kw)
    for _ in a:
        state = a.state_dict()
    assert state["batch"] == 2 and state["epoch"] == 0
    b = DataLoader(np.arange(10), **kw)
    b.load_state_dict(state)
    assert ids(b) == []
    assert ids(b) == ids(a)


def test_load_state_dict_validation():
    a = DataLoader(np.arange(10), batch_size=2, shuffle=True, seed=0)
    state = a.state_dict()
    with pytest.raises(ValueError, match="saved num_samples=10 but this loader has num_samples=11"):
        DataLoader(np.arange(11), batch_size=2, shuffle=True).load_state_dict(state)
    with pytest.raises(ValueError, match="batch_size"):
        DataLoader(np.arange(10), batch_size=3, shuffle=True).load_state_dict(state)
    with pytest.raises(ValueError, match="missing keys"):
        a.load_state_dict({"epoch": 0})
    with pytest.raises(ValueError, match="bad position"):
        a.load_state_dict({**state, "batch": 6})
    with pytest.raises(ValueError, match="PCG64 generator state"):
        a.load_state_dict({**state, "rng_state": {"bit_generator": "MT19937"}})


# ---- map-style datasets (objects with __len__ and __getitem__, as torch.utils.data.Dataset) ----------------
class PairDataset:
    """Sample i is (x_i, y_i): x_i = [i, i + 0.5] as float32, y_i = i as a Python int."""

    def __init__(self, n=10):
        self.n = n
        self.calls = []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.calls.append(i)
        if not 0 <= i < self.n:
            raise IndexError(i)
        return np.array([i, i + 0.5], dtype=np.float32), i


def test_map_style_dataset_batches_like_arrays():
    n = 11
    X = np.stack([np.array([i, i + 0.5], dtype=np.float32) for i in range(n)])
    y = np.arange(n)
    for kwargs in (dict(batch_size=4), dict(batch_size=3, shuffle=True, seed=5), dict(batch_size=4, drop_last=True)):
        ours = list(DataLoader(PairDataset(n), **kwargs))
        reference = list(DataLoader(X, y, **kwargs))
        assert len(ours) == len(reference) == len(DataLoader(PairDataset(n), **kwargs))
        for (xb, yb), (xr, yr) in zip(ours, reference):
            assert xb.dtype == np.float32 and yb.dtype == np.int64 and xb.flags.c_contiguous
            np.testing.assert_array_equal(xb, xr)
            np.testing.assert_array_equal(yb, yr)


def test_map_style_dataset_matches_torch_dataloader_order_free_collate():
    torch = pytest.importorskip("torch")
    ds = PairDataset(7)
    theirs = [tuple(t.numpy() for t in b) for b in torch.utils.data.DataLoader(ds, batch_size=3)]
    ours = list(DataLoader(ds, batch_size=3))
    for (xb, yb), (xt, yt) in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(xb, xt)
        np.testing.assert_array_equal(yb, yt)


def test_map_style_single_array_and_dict_samples():
    class Single:
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return np.full((2, 2), i, dtype=np.float32)

    class Dicts:
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return {"x": np.full(3, i, dtype=np.float32), "y": i % 2}

    batches = list(DataLoader(Single(), batch_size=2))
    assert [b.shape for b in batches] == [(2, 2, 2), (2, 2, 2), (1, 2, 2)]  # arrays, as torch yields tensors
    np.testing.assert_array_equal(batches[2], np.full((1, 2, 2), 4))
    batches = list(DataLoader(Dicts(), batch_size=3))
    assert list(batches[0]) == ["x", "y"]
    np.testing.assert_array_equal(batches[1]["x"], [[3, 3, 3], [4, 4, 4]])
    np.testing.assert_array_equal(batches[1]["y"], [1, 0])


def test_map_style_dataset_fetches_only_what_each_batch_needs_and_resumes():
    ds = PairDataset(10)
    loader = DataLoader(ds, batch_size=4, shuffle=True, seed=3)
    it = iter(loader)
    first = next(it)
    assert len(ds.calls) == 4
    state = json.loads(json.dumps(loader.state_dict()))
    rest = [b[1].tolist() for b in it]
    resumed = DataLoader(PairDataset(10), batch_size=4, shuffle=True, seed=0)
    resumed.load_state_dict(state)
    assert [b[1].tolist() for b in resumed] == rest
    assert sorted(first[1].tolist() + sum(rest, [])) == list(range(10))


def test_empty_map_style_dataset_yields_no_batches():
    assert list(DataLoader(PairDataset(0), batch_size=2)) == []


class Inconsistent:
    def __init__(self, bad):
        self.bad = bad

    def __len__(self):
        return 6

    def __getitem__(self, i):
        good = (np.zeros(3, np.float32), 1)
        return self.bad if i == 4 else good


@pytest.mark.parametrize("bad, message", [
    ((np.zeros(3, np.float32), 1, 2), r"dataset\[4\] returned a tuple of 3 items, but dataset\[(0|3)\] returned a "
                                      r"tuple of 2 items; every sample must have the same structure"),
    (np.zeros(3, np.float32), r"dataset\[4\] returned a single array, but dataset\[(0|3)\] returned a tuple of 2"),
    ((np.zeros(4, np.float32), 1), r"item 0 of dataset\[\d\] has shape \(\d,\) and dtype float32, but item 0 of "
                                   r"dataset\[4\] has shape \(4,\) and dtype float32; samples batched together must "
                                   r"match|item 0 of dataset\[4\] has shape \(4,\) and dtype float32, but item 0 of "
                                   r"dataset\[3\] has shape \(3,\)"),
    ((np.zeros(3, np.float64), 1), r"dataset\[4\] has shape \(3,\) and dtype float64"),
    ((np.zeros(3, np.float32), "cat"), r"item 1 of dataset\[4\] is str \(dtype <U3\); samples must hold numbers"),
    ((np.zeros(3, np.float32), None), r"item 1 of dataset\[4\] is NoneType"),
])
def test_inconsistent_samples_are_clear_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        list(DataLoader(Inconsistent(bad), batch_size=3))
    with pytest.raises(ValueError, match=message):  # the same when the bad sample opens a later batch
        list(DataLoader(Inconsistent(bad), batch_size=2))


def test_dataset_errors_name_the_index_and_the_dataset():
    class Short(PairDataset):
        def __len__(self):
            return 12  # claims more samples than __getitem__ serves

    with pytest.raises(IndexError) as info:
        list(DataLoader(Short(10), batch_size=4))
    assert "raised by dataset[10] of Short, fetched by DataLoader" in "".join(info.value.__notes__)

    class BadLen(PairDataset):
        def __len__(self):
            return -1

    with pytest.raises(ValueError, match=r"len\(\) of the dataset \(BadLen\) failed: __len__\(\) should return >= 0"):
        DataLoader(BadLen())
    with pytest.raises(ValueError, match=r"a map-style dataset \(PairDataset\) must be passed alone"):
        DataLoader(PairDataset(), np.arange(10))
    with pytest.raises(ValueError, match="array #0 must hold numbers .* got dtype object; a dataset object needs "
                                         "__len__ and __getitem__"):
        DataLoader(np.array([object()] * 3))
