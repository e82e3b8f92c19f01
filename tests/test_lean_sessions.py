"""Lean session options (``runtime.training_session.lean_options``: no graph optimisations, no memory-reuse
planning), taken by training steps above ``LEAN_SESSION_NODES`` nodes, change how fast a session is
created, never what a step computes: forced on a small LSTM step (the kind of graph that gets them), the
plain and the data-parallel Trainer train as with ONNX Runtime's default options."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
import graphc.nn.functional as F
import runtime.distributed_session as distributed_session
import runtime.training_session as training_session
from graphc import nn


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(5, 8, num_layers=2, batch_first=True)
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, -1, :])


def _train(distributed: bool, steps: int = 3):
    gc.manual_seed(0)
    model = Classifier()
    x = gc.input("x", shape=("batch", 6, 5))
    y = gc.input("y", shape=("batch",), dtype="int64")
    trainer = gc.Trainer(F.cross_entropy(model(x), y), gc.optim.Adam(model.parameters(), lr=0.01),
                         inputs=[x, y], distributed=distributed)
    rng = np.random.default_rng(3)
    losses = [trainer.step({"x": rng.standard_normal((4, 6, 5)).astype(np.float32), "y": rng.integers(0, 3, 4)})
              for _ in range(steps)]
    return trainer, losses, model.state_dict()


@pytest.mark.parametrize("distributed", [False, True])
def test_lean_sessions_train_as_the_default_ones(monkeypatch, distributed):
    trainer, losses, state = _train(distributed)
    lean = []
    real = training_session.create_session

    def recording(*args, **kwargs):
        lean.append(kwargs.get("lean", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(training_session, "LEAN_SESSION_NODES", 0)
    monkeypatch.setattr(distributed_session, "LEAN_SESSION_NODES", 0)
    monkeypatch.setattr(training_session, "create_session", recording)
    monkeypatch.setattr(distributed_session, "create_session", recording)
    lean_trainer, lean_losses, lean_state = _train(distributed)
    assert lean and all(lean), lean  # every step session of the second run was lean
    np.testing.assert_allclose(lean_losses, losses, rtol=1e-6)
    for name, value in state.items():
        np.testing.assert_allclose(lean_state[name], value, rtol=1e-5, atol=1e-7, err_msg=name)
