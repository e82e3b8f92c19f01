"""``ConvFromPatchesPass`` (passes/conv_from_patches.py): the forward Conv computed from its weight gradient's patches.

The pass runs in the training-step pipeline right after the training-step pass: a small step's values are
the same with and without it; LeNet's conv2 becomes a Gemm on the patches, conv1 (the shifted-Gemm weight
gradient, no patches) stays a Conv, and LeNet's Adam trajectory, its parameters and a padded-conv step
still match PyTorch.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import graphc as gc  # noqa: E402
import graphc.nn.functional as F  # noqa: E402
import onnx_ir as ir  # noqa: E402
from graphc import nn  # noqa: E402
from passes.conv_from_patches import ConvFromPatchesPass  # noqa: E402


def _step_outputs(conv_from_patches: bool, monkeypatch) -> tuple[list[str], dict]:
    """The ops of a small padded-conv training step and its outputs on fixed feeds, with or without the pass."""
    if not conv_from_patches:
        monkeypatch.setattr(ConvFromPatchesPass, "call", lambda self, model: ir.passes.PassResult(model, False))
    gc.manual_seed(0)
    conv, fc = nn.Conv2d(2, 4, (5, 3), padding=(2, 1)), nn.Linear(4 * 7 * 6, 3)
    x = gc.input("x", shape=("batch", 2, 7, 6))
    y = gc.input("y", shape=("batch",), dtype="int64")
    trainer = gc.Trainer(F.cross_entropy(fc(F.relu(conv(x)).flatten(1)), y),
                         gc.optim.SGD([*conv.parameters(), *fc.parameters()], lr=0.1), inputs=[x, y])
    rng = np.random.default_rng(4)
    losses = [trainer.step({"x": rng.standard_normal((3, 2, 7, 6)).astype(np.float32), "y": rng.integers(0, 3, 3)})
              for _ in range(2)]
    monkeypatch.undo()
    return [n.op_type for n in trainer.step_model.graph.node], {"losses": losses, **conv.state_dict()}


def test_the_pass_replaces_the_conv_and_keeps_the_step_values(monkeypatch):
    ops, with_pass = _step_outputs(True, monkeypatch)
    plain_ops, without = _step_outputs(False, monkeypatch)
    assert "Conv" in plain_ops and "Conv" not in ops  # the forward conv became the Gemm on the patches
    for name, value in without.items():
        np.testing.assert_allclose(with_pass[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_lenet_adam_trajectory_matches_torch_with_the_pass():
    import test_cnn_parity as parity
    parity.test_lenet_adam_trajectory_matches_torch()


def test_lenet_step_computes_conv2_from_the_patches():
    import test_cnn_parity as parity
    model, _ = parity.twins(parity.LeNet, parity.TorchLeNet)
    x = gc.input("x", shape=("batch", 3, 32, 32))
    y = gc.input("y", shape=("batch",), dtype="int64")
    trainer = gc.Trainer(F.cross_entropy(model(x), y), gc.optim.Adam(model.parameters(), lr=1e-3), inputs=[x, y])
    ops = [node.op_type for node in trainer.step_model.graph.node]
    assert ops.count("Conv") == 1, ops  # conv1 (its dw is the shifted Gemm: no patches to share)
    gemms = [n for n in trainer.step_model.graph.node if n.op_type == "Gemm" and len(n.input) == 3]
    assert any(n.input[1] in {m.output[0] for m in trainer.step_model.graph.node if m.op_type == "Reshape"}
               for n in gemms)


@pytest.mark.parametrize("bias", [True, False])
def test_padded_conv_sgd_steps_match_torch_with_the_pass(bias):
    """A padded 5x3 conv that takes the patches (with and without bias) trained by SGD: PyTorch's losses and weights."""
    torch.manual_seed(0)
    tconv, tfc = torch.nn.Conv2d(2, 4, (5, 3), padding=(2, 1), bias=bias), torch.nn.Linear(4 * 7 * 6, 3)
    conv, fc = nn.Conv2d(2, 4, (5, 3), padding=(2, 1), bias=bias), nn.Linear(4 * 7 * 6, 3)
    conv.load_state_dict(tconv.state_dict())
    fc.load_state_dict(tfc.state_dict())
    x = gc.input("x", shape=("batch", 2, 7, 6))
    y = gc.input("y", shape=("batch",), dtype="int64")
    logits = fc(F.relu(conv(x)).reshape((-1, 4 * 7 * 6)))
    params = list(conv.parameters()) + list(fc.parameters())
    trainer = gc.Trainer(F.cross_entropy(logits, y), gc.optim.SGD(params, lr=0.1), inputs=[x, y])
    assert [n.op_type for n in trainer.step_model.graph.node].count("Conv") == 0
    topt = torch.optim.SGD(list(tconv.parameters()) + list(tfc.parameters()), lr=0.1)
    rng = np.random.default_rng(0)
    for _ in range(3):
        xb, yb = rng.standard_normal((5, 2, 7, 6)).astype(np.float32), rng.integers(0, 3, 5)
        ours = trainer.step({"x": xb, "y": yb})
        topt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(tfc(torch.relu(tconv(torch.from_numpy(xb))).flatten(1)),
                                                  torch.from_numpy(yb))
        tloss.backward()
        topt.step()
        np.testing.assert_allclose(ours, tloss.item(), rtol=1e-5)
    np.testing.assert_allclose(conv.state_dict()["weight"], tconv.weight.detach().numpy(), rtol=1e-4, atol=1e-6)
