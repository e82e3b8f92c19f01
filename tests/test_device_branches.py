"""``runtime/device_branches.py``: off the CPU, the MaxPool mask's marked ``If`` runs its then-branch (the
first-maximum mask) unconditionally, with no condition read on the host. Checked on the CPU: the inlined
gradient equals PyTorch's with and without tied windows, unmarked ``If`` nodes stay, and a session created
for a provider other than the CPU gets the inlined model."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

import graphc as gc
import runtime.training_session as training_session
from graphc import nn
from graphc.program import build_model
from passes.names import THEN_ALWAYS_RIGHT_KEY
from passes.pipelines import gradient_pipeline
from runtime.device_branches import then_branches_inlined


def _pool_gradient_model() -> onnx.ModelProto:
    x = gc.input("x", shape=("batch", 2, 4, 4))
    out = nn.MaxPool2d(2)(x)
    cot = np.arange(1, 17, dtype=np.float32).reshape(2, 2, 2, 2)
    model = build_model([x], {"loss": (out * gc.constant(cot)).sum()})
    return ir.serde.serialize_model(gradient_pipeline("loss", ["x"])(model).model), cot


@pytest.mark.parametrize("ties", [False, True])
def test_inlined_mask_gradient_equals_torch(ties):
    proto, cot = _pool_gradient_model()
    ifs = [n for n in proto.graph.node if n.op_type == "If"]
    assert ifs and all(any(p.key == THEN_ALWAYS_RIGHT_KEY for p in n.metadata_props) for n in ifs)
    inlined = then_branches_inlined(proto)
    assert "If" not in [n.op_type for n in inlined.graph.node] and "If" in [n.op_type for n in proto.graph.node]
    onnx.checker.check_model(inlined, full_check=True)
    xb = np.random.default_rng(0).standard_normal((2, 2, 4, 4)).astype(np.float32)
    if ties:
        xb[0, 1, 0:2, 2:4] = [[1.0, 5.0], [5.0, 5.0]]
        xb[1, 0, 2:4, 0:2] = 7.0
    session = ort.InferenceSession(inlined.SerializeToString(), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": xb})))["x.grad"]
    tx = torch.tensor(xb, requires_grad=True)
    (torch.nn.functional.max_pool2d(tx, 2) * torch.tensor(cot)).sum().backward()
    np.testing.assert_array_equal(got, tx.grad.numpy())


def test_unmarked_if_stays_and_a_device_session_gets_the_inlined_model(monkeypatch):
    proto, _ = _pool_gradient_model()
    plain = onnx.ModelProto()
    plain.CopyFrom(proto)
    for node in plain.graph.node:
        del node.metadata_props[:]
    assert then_branches_inlined(plain) is plain
    seen = []
    real = ort.InferenceSession

    def recording(data, *args, **kwargs):
        seen.append([n.op_type for n in onnx.load_from_string(data).graph.node])
        return real(data, *args, **kwargs)

    monkeypatch.setattr(training_session.ort, "InferenceSession", recording)
    training_session.create_session(proto, "cpu")
    training_session.create_session(proto, "auto")  # may take a device: takes no host-read condition
    assert "If" in seen[0] and "If" not in seen[1]
