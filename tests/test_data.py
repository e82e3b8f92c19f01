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
