"""The IOBinding (device-resident, double-buffered) path of the training session, exercised on CPU.

On CUDA this path is the only one; running it on CPU checks its bookkeeping (binding order, buffer
swaps, non-finite steps not adopted, reads and writes) against the plain-feeds path.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
import graphc.nn.functional as F
from graphc import nn


def build(io_binding, nan_policy="raise"):
    gc.manual_seed(0)
    x = gc.input("x", ("batch", 6))
    y = gc.input("y", ("batch",), "int64")
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 3))
    loss = F.cross_entropy(model(x), y)
    trainer = gc.Trainer(loss, gc.optim.Adam(model.parameters(), lr=0.05), [x, y], io_binding=io_binding,
                         nan_policy=nan_policy)
    return model, trainer


def batches(n=6):
    rng = np.random.default_rng(0)
    return [{"x": rng.standard_normal((5, 6)).astype(np.float32), "y": rng.integers(0, 3, 5)} for _ in range(n)]


def test_bound_path_matches_plain_feeds():
    model_a, feeds = build(io_binding=False)
    model_b, bound = build(io_binding=True)
    assert bound.session.io_binding and not feeds.session.io_binding
    assert [feeds.step(b) for b in batches()] == [bound.step(b) for b in batches()]
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_bound_path_keeps_state_on_a_non_finite_loss_and_accepts_writes():
    model, trainer = build(io_binding=True)
    data = batches()
    trainer.step(data[0])
    before = model.state_dict()
    bad = dict(data[1], x=np.full((5, 6), np.nan, np.float32))
    with pytest.raises(gc.NonFiniteLossError, match="step 2"):
        trainer.step(bad)
    for (name, a), b in zip(model.state_dict().items(), before.values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert trainer.steps_done == 1
    model.load_state_dict({k: np.zeros_like(v) for k, v in before.items()})
    assert all(not v.any() for v in model.state_dict().values())
    trainer.step(data[2])
    assert trainer.steps_done == 2


def test_auto_provider_says_which_provider_it_picked(capsys, monkeypatch):
    from runtime import providers
    monkeypatch.setattr(providers, "_announced", set())  # said once per process: as in a fresh process
    x = gc.input("x", ("batch", 2))
    program = gc.compile([x], {"y": x * 2.0}, provider="auto")
    program.run({"x": np.ones((1, 2), np.float32)})
    err = capsys.readouterr().err
    assert "provider auto -> " in err
    picked = "cuda" if "CUDAExecutionProvider" in program.session.get_providers() else "cpu"
    assert f"auto -> {picked}" in err


def test_zero_size_batches_give_empty_results_or_a_clear_error():
    model, trainer = build(io_binding=False)
    x = gc.input("x", ("batch", 6))
    program = gc.compile([x], {"y": x * 2.0})
    assert program.run({"x": np.zeros((0, 6), np.float32)})["y"].shape == (0, 6)
    # An empty batch has no mean loss (0/0): the step is refused as non-finite and nothing changes.
    before = model.state_dict()
    with pytest.raises(gc.NonFiniteLossError):
        trainer.step({"x": np.zeros((0, 6), np.float32), "y": np.zeros((0,), np.int64)})
    for (name, a), b in zip(model.state_dict().items(), before.values()):
        np.testing.assert_array_equal(a, b, err_msg=name)


@pytest.mark.parametrize("io_binding", [False, True])
def test_an_interrupt_anywhere_in_a_step_leaves_the_old_or_the_new_state_never_a_mix(io_binding):
    """A KeyboardInterrupt is injected at every line and every bytecode of runtime/training_session.py
    that a step executes (sys.settrace with opcode events), one run per injection point. After each,
    the state (all arrays and the step count) must be wholly the state before the step or wholly the
    state after an uninterrupted step. Before the fix, adoption looped over the arrays and then
    incremented the count: an interrupt inside that loop left step N and N+1 arrays mixed."""
    import sys

    import runtime.training_session as training_session

    x = gc.input("x", ("batch", 6))
    y = gc.input("y", ("batch",), "int64")
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    trainer = gc.Trainer(F.cross_entropy(model(x), y), gc.optim.Adam(model.parameters(), lr=0.05), [x, y],
                         io_binding=io_binding)
    session = trainer.session
    data = batches(2)
    session.run(data[0])

    def snapshot():
        return {name: session.read(name) for name in session.state_names()}, session.steps

    old_record, old = session._now, snapshot()
    session.run(data[1])
    new = snapshot()
    assert new[1] == old[1] + 1 and any((new[0][n] != old[0][n]).any() for n in old[0])

    def same(a, b):
        return a[1] == b[1] and all(np.array_equal(a[0][n], b[0][n]) for n in a[0])

    outcomes = {"old": 0, "new": 0}
    point = 0
    while True:
        point += 1
        session._now = old_record  # back to the state before the step (the record is immutable)
        events = 0

        def local(frame, event, arg):
            nonlocal events
            if event in ("line", "opcode"):
                events += 1
                if events == point:
                    raise KeyboardInterrupt
            return local

        def tracer(frame, event, arg):
            if frame.f_code.co_filename != training_session.__file__:
                return None
            frame.f_trace_opcodes = True
            return local

        previous = sys.gettrace()  # a coverage tracer, if any, comes back afterwards
        sys.settrace(tracer)
        try:
            session.run(data[1])
            interrupted = False
        except KeyboardInterrupt:
            interrupted = True
        finally:
            sys.settrace(previous)
        state = snapshot()
        if same(state, old):
            outcomes["old"] += 1
        else:
            assert same(state, new), f"a mix of old and new state after an interrupt at trace event {point}"
            outcomes["new"] += 1
        if not interrupted:
            break
    assert point > 50 and outcomes["old"] > 0 and outcomes["new"] > 0


# ---- lazy sessions, pinned per batch shape (issue 11: session creation under a symbolic batch) ----
def torch_losses(state, feeds_list, lr=0.05):
    """The independent reference: the same network and Adam in PyTorch, fed the same batches."""
    import torch
    tmodel = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    tmodel.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
    opt = torch.optim.Adam(tmodel.parameters(), lr=lr)
    losses = []
    for feeds in feeds_list:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(tmodel(torch.tensor(feeds["x"])), torch.tensor(feeds["y"]))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, {k: v.detach().numpy() for k, v in tmodel.state_dict().items()}


def plain_mlp(io_binding):
    gc.manual_seed(0)
    x = gc.input("x", ("batch", 6))
    y = gc.input("y", ("batch",), "int64")
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    trainer = gc.Trainer(F.cross_entropy(model(x), y), gc.optim.Adam(model.parameters(), lr=0.05), [x, y],
                         io_binding=io_binding)
    return model, trainer


def sized(sizes):
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((n, 6)).astype(np.float32), "y": rng.integers(0, 3, n)} for n in sizes]


@pytest.mark.parametrize("io_binding", [False, True])
def test_two_batch_sizes_in_a_row_train_as_torch_each_on_a_session_pinned_to_its_size(io_binding, monkeypatch):
    import runtime.training_session as training_session
    model, trainer = plain_mlp(io_binding)
    assert trainer.session.session is None and trainer.session.sessions() == []  # nothing built before a step
    data = sized([8, 3, 8, 3, 8])
    want, want_state = torch_losses(model.state_dict(), data)
    got = [trainer.step(feeds) for feeds in data]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for name, value in model.state_dict().items():  # the one carried state, shared by both sessions
        np.testing.assert_allclose(value, want_state[name], rtol=1e-5, atol=1e-6, err_msg=name)
    built = trainer.session.sessions()
    assert [dims for dims, _ in built] == [{"batch": 8}, {"batch": 3}]
    for dims, session in built:  # the override is applied: ONNX Runtime reports the pinned dim
        shapes = {i.name: i.shape for i in session.get_inputs()}
        assert shapes["x"] == [dims["batch"], 6] and shapes["y"] == [dims["batch"]]
    # The same steps with every session symbolic (as before the change): the same losses.
    monkeypatch.setattr(training_session, "MAX_PINNED_SESSIONS", 0)
    _, symbolic = plain_mlp(io_binding)
    np.testing.assert_allclose([symbolic.step(feeds) for feeds in data], got, rtol=1e-6, atol=1e-7)
    assert [dims for dims, _ in symbolic.session.sessions()] == [None]


def test_shapes_beyond_the_pinned_few_share_one_symbolic_session_and_still_train_as_torch():
    from runtime.training_session import MAX_PINNED_SESSIONS
    assert MAX_PINNED_SESSIONS == 4
    model, trainer = plain_mlp(io_binding=False)
    data = sized([8, 3, 5, 7, 2, 8, 6, 2, 9, 3])
    want, _ = torch_losses(model.state_dict(), data)
    np.testing.assert_allclose([trainer.step(feeds) for feeds in data], want, rtol=1e-5, atol=1e-6)
    built = trainer.session.sessions()
    assert [dims for dims, _ in built] == [{"batch": 8}, {"batch": 3}, {"batch": 5}, {"batch": 7}, None]
    assert built[-1][1].get_inputs()[0].shape == ["batch", 6]  # 2, 6 and 9 ran on the symbolic session


def test_cuda_that_cannot_load_is_still_reported_when_the_trainer_is_built():
    """Step sessions are lazy; a probe session settles the provider at construction, as before."""
    from runtime.providers import ProviderError
    x = gc.input("x", ("batch", 6))
    layer = nn.Linear(6, 3)
    try:
        trainer = gc.Trainer(layer(x).sum(), gc.optim.SGD(layer.parameters(), lr=0.1), [x], provider="cuda")
    except ProviderError as exc:
        assert "CUDA" in str(exc)
        return
    assert trainer.session.device == "cuda" and trainer.session.io_binding  # CUDA loads here
