"""The training step's ONNX Runtime sessions (issue 11, build time of long unrolled steps).

- A pinned session is created from a copy of the step model with the batch dims written in
  (``pinned_model``): the copy has fixed dims, the original keeps its symbolic ones, and the pinned
  session computes what the symbolic one computes.
- A step graph above ``LEAN_SESSION_NODES`` nodes gets ``lean_options`` (no graph optimisations, no
  memory-reuse planning); small graphs keep ORT_ENABLE_ALL. Lean sessions still train as PyTorch does.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import graphc as gc
import graphc.nn.functional as F
from graphc import nn
import runtime.training_session as training_session
from runtime.training_session import LEAN_SESSION_NODES, pinned_model

torch = pytest.importorskip("torch")

FEATURES, HIDDEN, CLASSES = 3, 4, 2


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(FEATURES, HIDDEN, num_layers=2, batch_first=True)
        self.fc = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, -1, :])


class TorchClassifier(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(FEATURES, HIDDEN, num_layers=2, batch_first=True)
        self.fc = torch.nn.Linear(HIDDEN, CLASSES)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, -1, :])


def lstm_trainer(length: int):
    gc.manual_seed(0)
    model = Classifier()
    x = gc.input("x", ("batch", length, FEATURES))
    y = gc.input("y", ("batch",), "int64")
    trainer = gc.Trainer(F.cross_entropy(model(x), y), gc.optim.Adam(model.parameters(), lr=0.05), [x, y])
    return model, trainer


def batches(length: int, sizes):
    rng = np.random.default_rng(3)
    return [{"x": rng.standard_normal((n, length, FEATURES)).astype(np.float32), "y": rng.integers(0, CLASSES, n)}
            for n in sizes]


def torch_trajectory(state, data):
    tmodel = TorchClassifier()
    tmodel.load_state_dict({k: torch.tensor(v) for k, v in state.items()})
    opt = torch.optim.Adam(tmodel.parameters(), lr=0.05)
    losses = []
    for feeds in data:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(tmodel(torch.tensor(feeds["x"])), torch.tensor(feeds["y"]))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, {k: v.detach().numpy() for k, v in tmodel.state_dict().items()}


def symbolic_dims(info) -> list:
    return [d.dim_param or d.dim_value for d in info.type.tensor_type.shape.dim]


def test_the_pinned_copy_has_the_batch_written_in_and_the_original_keeps_it_symbolic():
    _, trainer = lstm_trainer(length=3)
    model = trainer.step_model
    pinned = pinned_model(model, {"batch": 7})
    graph = pinned.graph
    infos = [*graph.input, *graph.output, *graph.value_info]
    assert not any(d.dim_param == "batch" for info in infos for d in info.type.tensor_type.shape.dim)
    x = next(i for i in graph.input if i.name == "x")
    assert symbolic_dims(x) == [7, 3, FEATURES]
    assert sum(d.dim_value == 7 for info in graph.value_info for d in info.type.tensor_type.shape.dim) > 0
    assert symbolic_dims(next(i for i in model.graph.input if i.name == "x")) == ["batch", 3, FEATURES]
    assert len(graph.node) == len(model.graph.node)  # nothing but the dims changed


def test_the_pinned_session_computes_what_the_symbolic_one_computes():
    """One step's every output, run on a session of the pinned copy and of the symbolic model."""
    _, trainer = lstm_trainer(length=4)
    feeds = batches(4, [5])[0]
    trainer.step(feeds)  # creates the pinned session
    (dims, pinned), = trainer.session.sessions()
    assert dims == {"batch": 5} and [i.shape for i in pinned.get_inputs() if i.name == "x"] == [[5, 4, FEATURES]]
    session = trainer.session
    state = {**session._extra_inputs, **session.state}
    symbolic = training_session.create_session(trainer.step_model, "cpu")
    assert [i.shape for i in symbolic.get_inputs() if i.name == "x"] == [["batch", 4, FEATURES]]
    names = [o.name for o in pinned.get_outputs()]
    run = {**feeds, **{i.name: state[i.name] for i in pinned.get_inputs() if i.name not in feeds}}
    for name, a, b in zip(names, pinned.run(names, run), symbolic.run(names, run)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=name)


def test_small_steps_keep_every_optimisation_and_memory_reuse():
    _, trainer = lstm_trainer(length=3)
    assert len(trainer.step_model.graph.node) < LEAN_SESSION_NODES and not trainer.session.lean
    trainer.step(batches(3, [4])[0])
    options = trainer.session.session.get_session_options()
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert options.enable_mem_reuse


def test_a_step_above_the_threshold_gets_a_lean_session_and_trains_as_torch():
    """A 2-layer LSTM unrolled over 120 steps (above LEAN_SESSION_NODES nodes): lean session, torch's losses."""
    length = 120  # ~7800 nodes today: margin for leaner lowerings
    model, trainer = lstm_trainer(length)
    assert len(trainer.step_model.graph.node) > LEAN_SESSION_NODES and trainer.session.lean
    data = batches(length, [6, 6, 4])
    want, want_state = torch_trajectory(model.state_dict(), data)
    got = [trainer.step(feeds) for feeds in data]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(value, want_state[name], rtol=1e-4, atol=1e-5, err_msg=name)
    assert [dims for dims, _ in trainer.session.sessions()] == [{"batch": 6}, {"batch": 4}]
    for _, session in trainer.session.sessions():
        options = session.get_session_options()
        assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        assert not options.enable_mem_reuse


def test_lean_options_are_applied_to_a_symbolic_session_too(monkeypatch):
    """Beyond the pinned few, the shared symbolic session of a large step is lean as well; same losses."""
    monkeypatch.setattr(training_session, "MAX_PINNED_SESSIONS", 0)
    monkeypatch.setattr(training_session, "LEAN_SESSION_NODES", 10)
    model, trainer = lstm_trainer(length=3)
    assert trainer.session.lean
    data = batches(3, [5, 2])
    want, _ = torch_trajectory(model.state_dict(), data)
    np.testing.assert_allclose([trainer.step(feeds) for feeds in data], want, rtol=1e-4, atol=1e-5)
    (dims, session), = trainer.session.sessions()
    assert dims is None and session.get_session_options().graph_optimization_level == \
        ort.GraphOptimizationLevel.ORT_DISABLE_ALL
