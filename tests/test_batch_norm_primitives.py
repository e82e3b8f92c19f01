"""``BatchNormTrainingToPrimitivesPass`` (``passes/batch_norm_primitives.py``): for a provider other than the
CPU, the Trainer computes training-mode BatchNorm with primitive ops instead of reading the statistics back
from ONNX Runtime's training-mode node (which GPU kernels refuse or compute otherwise). Checked on the CPU:
the pass alone against numpy (outputs and running outputs, any momentum), and a Trainer built for
``provider="auto"`` (which falls back to the CPU here) training a conv + BatchNorm net as PyTorch does."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import graphc as gc
import graphc.nn.functional as F
from graphc import nn
from passes.batch_norm_primitives import BatchNormTrainingToPrimitivesPass


def _bn_model(shape, momentum):
    c = shape[1]
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"],
                            epsilon=1e-3, momentum=momentum, training_mode=1)
    info = [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
            for n, s in (("x", shape), ("s", [c]), ("b", [c]), ("m", [c]), ("v", [c]))]
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape),
            helper.make_tensor_value_info("rm", TensorProto.FLOAT, [c]),
            helper.make_tensor_value_info("rv", TensorProto.FLOAT, [c])]
    model = helper.make_model(helper.make_graph([node], "bn", info, outs), opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model


@pytest.mark.parametrize("shape", [[6, 3], [4, 3, 5], [4, 2, 3, 3]])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_pass_matches_numpy(shape, momentum):
    rng = np.random.default_rng(0)
    c = shape[1]
    feeds = {"x": rng.normal(2.0, 1.5, shape).astype(np.float32), "s": rng.uniform(0.5, 1.5, c).astype(np.float32),
             "b": rng.normal(size=c).astype(np.float32), "m": rng.normal(size=c).astype(np.float32),
             "v": rng.uniform(0.5, 2, c).astype(np.float32)}
    model = ir.serde.deserialize_model(_bn_model(shape, momentum))
    assert BatchNormTrainingToPrimitivesPass()(model).modified
    assert "BatchNormalization" not in [n.op_type for n in model.graph]
    assert [v.name for v in model.graph.outputs] == ["y", "rm", "rv"]  # graph outputs keep their names
    proto = ir.serde.serialize_model(model)
    out = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        ["y", "rm", "rv"], {k: v.copy() for k, v in feeds.items()})
    axes = tuple(i for i in range(len(shape)) if i != 1)
    x64 = feeds["x"].astype(np.float64)
    mean, var = x64.mean(axis=axes), x64.var(axis=axes)
    per = [1, c] + [1] * (len(shape) - 2)
    y = (x64 - mean.reshape(per)) / np.sqrt(var.reshape(per) + 1e-3) * feeds["s"].reshape(per) + feeds["b"].reshape(per)
    np.testing.assert_allclose(out[0], y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out[1], feeds["m"] * momentum + mean * (1 - momentum), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[2], feeds["v"] * momentum + var * (1 - momentum), rtol=1e-5, atol=1e-6)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 3 * 3, 3)

    def forward(self, x):
        return self.fc(F.max_pool2d(F.relu(self.bn(self.conv(x))), 2).flatten(1))


def test_trainer_for_another_provider_trains_with_primitives_as_torch():
    gc.manual_seed(0)
    model = Net()
    reference = torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3, padding=1, bias=False), torch.nn.BatchNorm2d(4),
                                    torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(36, 3))
    state = model.state_dict()
    names = {"0.weight": "conv.weight", "1.weight": "bn.weight", "1.bias": "bn.bias", "1.running_mean":
             "bn.running_mean", "1.running_var": "bn.running_var", "5.weight": "fc.weight", "5.bias": "fc.bias"}
    reference.load_state_dict({k: torch.from_numpy(np.array(state[v])) for k, v in names.items()}, strict=False)
    x = gc.input("x", ("batch", 2, 6, 6))
    y = gc.input("y", ("batch",), "int64")
    trainer = gc.Trainer(F.cross_entropy(model(x), y), gc.optim.Adam(model.parameters(), lr=0.01), [x, y],
                         provider="auto")
    assert not any(a.name == "training_mode" and a.i == 1 for n in trainer.step_model.graph.node
                   if n.op_type == "BatchNormalization" for a in n.attribute)
    assert "ReduceMean" in [n.op_type for n in trainer.step_model.graph.node]
    optimizer = torch.optim.Adam(reference.parameters(), lr=0.01)
    rng = np.random.default_rng(1)
    for _ in range(4):
        xb, yb = rng.standard_normal((5, 2, 6, 6)).astype(np.float32), rng.integers(0, 3, 5)
        loss = trainer.step({"x": xb, "y": yb})
        optimizer.zero_grad()
        want = torch.nn.functional.cross_entropy(reference(torch.from_numpy(xb)), torch.from_numpy(yb))
        want.backward()
        optimizer.step()
        np.testing.assert_allclose(loss, float(want), rtol=1e-4)
    after = model.state_dict()
    for name, key in (("conv.weight", "0.weight"), ("bn.weight", "1.weight"), ("bn.running_mean", "1.running_mean"),
                      ("bn.running_var", "1.running_var"), ("fc.weight", "5.weight")):
        np.testing.assert_allclose(after[name], reference.state_dict()[key].numpy(), rtol=1e-4, atol=1e-5,
                                   err_msg=name)



def _training_nodes(model) -> int:
    return sum(n.op_type == "BatchNormalization" and any(a.name == "training_mode" and a.i == 1 for a in n.attribute)
               for n in model.graph.node)


def test_portable_step_of_a_cpu_trainer_and_a_gpu_program_have_no_training_mode_node():
    """The CPU Trainer's own step keeps the node (faster there); what may run on another binding or
    provider does not: ``training_model()`` and ``gc.compile(provider != "cpu")``. The portable step's
    values against ``trainer.step``: ``tests/test_portable_python_loop.py`` (its BatchNorm case)."""
    gc.manual_seed(0)
    model = Net()
    x = gc.input("x", ("batch", 2, 6, 6))
    y = gc.input("y", ("batch",), "int64")
    trainer = gc.Trainer(F.cross_entropy(model(x), y), gc.optim.SGD(model.parameters(), lr=0.1), [x, y])
    assert _training_nodes(trainer.step_model) == 1 and _training_nodes(trainer.training_model()) == 0
    xb = np.random.default_rng(2).standard_normal((5, 2, 6, 6)).astype(np.float32)
    y_cpu, mean_cpu, var_cpu = F.batch_norm(x, gc.constant(np.zeros(2, np.float32)), gc.constant(np.ones(2, np.float32)),
                                            training=True)
    outputs = {"y": y_cpu, "mean": mean_cpu, "var": var_cpu}
    cpu = gc.compile([x], outputs, allow_batch_statistics=True)
    other = gc.compile([x], outputs, allow_batch_statistics=True, provider="auto")
    assert _training_nodes(cpu.model) == 1 and _training_nodes(other.model) == 0
    want, got = cpu.run({"x": xb}), other.run({"x": xb})
    for name in outputs:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6, err_msg=name)


def test_unknown_rank_is_refused():
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"], training_mode=1)
    graph = helper.make_graph([node], "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)] +
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [3]) for n in "sbmv"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = ir.serde.deserialize_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    with pytest.raises(ValueError, match="rank is unknown"):
        BatchNormTrainingToPrimitivesPass()(model)
