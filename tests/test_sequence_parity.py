"""PyTorch parity, 8-step Adam trajectories: GRU and RNN classifiers (2 layers, batch_first), and an
Embedding + LayerNorm model (forward, every parameter gradient, trajectory)."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
import graphc.nn.functional as F
from graphc import nn

torch = pytest.importorskip("torch")
TOL = {"rtol": 1e-4, "atol": 1e-5}


def trajectory(model, tmodel, x, y, batches, lr=1e-2):
    trainer = gc.Trainer(F.cross_entropy(model(x), y), gc.optim.Adam(model.parameters(), lr=lr), [x, y])
    topt = torch.optim.Adam(tmodel.parameters(), lr=lr)
    ours, theirs = [], []
    for xb, yb in batches:
        ours.append(trainer.step({"x": xb, "y": yb}))
        topt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(tmodel(torch.from_numpy(xb)), torch.from_numpy(yb))
        tloss.backward()
        topt.step()
        theirs.append(tloss.item())
    np.testing.assert_allclose(ours, theirs, err_msg="losses", **TOL)
    state, tstate = model.state_dict(), tmodel.state_dict()
    for name, value in tstate.items():
        np.testing.assert_allclose(state[name], value.numpy(), err_msg=name, **TOL)


@pytest.mark.parametrize("kind", ["gru", "rnn_tanh", "rnn_relu"])
def test_recurrent_classifier_trajectory_matches_torch(kind):
    layer_args = {"num_layers": 2, "batch_first": True}
    extra = {"nonlinearity": kind[4:]} if kind.startswith("rnn") else {}
    ours_cls, torch_cls = (nn.GRU, torch.nn.GRU) if kind == "gru" else (nn.RNN, torch.nn.RNN)

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = ours_cls(6, 12, **layer_args, **extra)
            self.fc = nn.Linear(12, 4)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1, :])

    class TorchClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rnn = torch_cls(6, 12, **layer_args, **extra)
            self.fc = torch.nn.Linear(12, 4)

        def forward(self, x):
            return self.fc(self.rnn(x)[0][:, -1, :])

    torch.manual_seed(0)
    tmodel, model = TorchClassifier(), Classifier()
    model.load_state_dict(tmodel.state_dict())
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((8, 5, 6)).astype(np.float32), rng.integers(0, 4, 8)) for _ in range(8)]
    trajectory(model, tmodel, gc.input("x", ("batch", 5, 6)), gc.input("y", ("batch",), "int64"), batches)


class TokenModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 8, padding_idx=0)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 3)

    def forward(self, tokens):
        return self.fc(self.norm(self.embed(tokens)).mean(1))


class TorchTokenModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(20, 8, padding_idx=0)
        self.norm = torch.nn.LayerNorm(8)
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, tokens):
        return self.fc(self.norm(self.embed(tokens)).mean(1))


def token_batches(n):
    rng = np.random.default_rng(1)
    return [(rng.integers(0, 20, (6, 5)), rng.integers(0, 3, 6)) for _ in range(n)]


def twins():
    torch.manual_seed(0)
    tmodel, model = TorchTokenModel(), TokenModel()
    with torch.no_grad():  # non-trivial LayerNorm affine parameters, so weight and bias cannot be swapped
        tmodel.norm.weight.uniform_(0.5, 1.5)
        tmodel.norm.bias.uniform_(-0.5, 0.5)
    model.load_state_dict(tmodel.state_dict())
    return model, tmodel


def test_embedding_layernorm_forward_and_gradients_match_torch():
    model, tmodel = twins()
    x, y = gc.input("x", ("batch", 5), "int64"), gc.input("y", ("batch",), "int64")
    loss = F.cross_entropy(model(x), y)
    params = dict(model.named_parameters())
    grads = gc.grad(loss, list(params.values()))
    tokens, labels = token_batches(1)[0]
    out = gc.compile([x, y], {"loss": loss, **{n: g for n, g in zip(params, grads)}}).run({"x": tokens, "y": labels})
    tloss = torch.nn.functional.cross_entropy(tmodel(torch.from_numpy(tokens)), torch.from_numpy(labels))
    tloss.backward()
    np.testing.assert_allclose(out["loss"], tloss.item(), rtol=1e-5)
    for name, tparam in tmodel.named_parameters():
        np.testing.assert_allclose(out[name], tparam.grad.numpy(), err_msg=name, rtol=1e-5, atol=1e-6)
    assert not out["embed.weight"][0].any()  # padding_idx row gets no gradient


def test_embedding_layernorm_trajectory_matches_torch():
    model, tmodel = twins()
    trajectory(model, tmodel, gc.input("x", ("batch", 5), "int64"), gc.input("y", ("batch",), "int64"),
               token_batches(8))
