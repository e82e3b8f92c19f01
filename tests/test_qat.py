"""Quantization-aware training: fake quantization forward (numpy), straight-through gradients (PyTorch's
fake quantization autograd), observer state carried by the Trainer (a numpy replay of the moving average),
QAT on the digits MLP against float32, and the QDQ export on ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphc as gc
import graphc.nn.functional as F
from graphc import nn
from graphc.quantization import FakeQuantize, activation_qparams, fake_quantize_weight, prepare_qat
from graphc.tensor import emit

torch = pytest.importorskip("torch")


def _np_fake_quant(x, scale, zero_point, qmin, qmax):
    q = np.clip(np.rint(x / np.float32(scale)) + zero_point, qmin, qmax)
    return ((q - zero_point) * np.float32(scale)).astype(np.float32)


def _fake_quant_program(fq: FakeQuantize, shape):
    x = gc.input("x", shape)
    w = gc.input("w", shape)
    out = fq(x)
    (grad,) = gc.grad((out * w).sum(), [x])
    return gc.compile([x, w], {"out": out, "grad": grad}, allow_batch_statistics=True)


def _torch_fake_quant(min_val, max_val, x, w):
    """torch's FakeQuantize (MovingAverageMinMaxObserver, int8 affine) from a given observed range."""
    from torch.ao.quantization import FakeQuantize as TorchFakeQuantize
    from torch.ao.quantization import MovingAverageMinMaxObserver

    fq = TorchFakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8)
    if min_val is not None:
        fq.activation_post_process.min_val.fill_(min_val)
        fq.activation_post_process.max_val.fill_(max_val)
    xt = torch.tensor(x, requires_grad=True)
    out = fq(xt)
    out.backward(torch.tensor(w))
    return out.detach().numpy(), xt.grad.numpy(), fq


def test_first_batch_sets_the_range_forward_matches_numpy_and_torch():
    rng = np.random.default_rng(0)
    x = rng.normal(0.3, 2.0, (16, 5)).astype(np.float32)
    w = rng.normal(size=x.shape).astype(np.float32)
    result = _fake_quant_program(FakeQuantize(), (16, 5)).run({"x": x, "w": w})
    scale, zero_point = activation_qparams(x.min(), x.max())
    np.testing.assert_array_equal(result["out"], _np_fake_quant(x, scale, int(zero_point), -128, 127))
    out_t, grad_t, fq_t = _torch_fake_quant(None, None, x, w)
    np.testing.assert_allclose(float(fq_t.scale), scale, rtol=1e-6)
    assert int(fq_t.zero_point) == int(zero_point)
    np.testing.assert_allclose(result["out"], out_t, atol=1e-6)
    np.testing.assert_allclose(result["grad"], grad_t, atol=0)  # all inside the range: g passes unchanged


def test_straight_through_gradient_zero_outside_the_range_as_torch():
    rng = np.random.default_rng(1)
    x = rng.normal(0.0, 3.0, (8, 6)).astype(np.float32)  # wider than the observed [-1, 1.5]
    w = rng.normal(size=x.shape).astype(np.float32)
    fq = FakeQuantize()
    fq.min_val.data, fq.max_val.data = np.float32(-1.0), np.float32(1.5)
    result = _fake_quant_program(fq, (8, 6)).run({"x": x, "w": w})
    out_t, grad_t, _ = _torch_fake_quant(-1.0, 1.5, x, w)
    np.testing.assert_allclose(result["out"], out_t, atol=1e-6)
    np.testing.assert_array_equal(result["grad"] == 0, grad_t == 0)  # the same elements pass
    np.testing.assert_allclose(result["grad"], grad_t, rtol=1e-6)  # (g * s) / s: one rounding apart
    assert (grad_t == 0).sum() > 5 and (grad_t != 0).sum() > 5  # both sides of the range are exercised


def test_per_channel_quantize_linear_gradients_match_torch():
    """The rules themselves, per axis with given scales: dx (STE) and the scale gradient (LSQ, as torch's
    learnable fake quantization, whose scale gradient equals the two rules composed)."""
    rng = np.random.default_rng(2)
    x = rng.normal(0.0, 2.0, (4, 3, 5)).astype(np.float32)
    scale = np.array([0.01, 0.02, 0.05], np.float32)  # narrow: many elements saturate
    zero_point = np.array([0, 3, -2], np.int8)
    w = rng.normal(size=x.shape).astype(np.float32)
    xi, si = gc.input("x", x.shape), gc.input("s", (3,))
    q = emit("QuantizeLinear", [xi, si, gc.constant(zero_point)], {"axis": 1}, shape=x.shape, dtype=np.int8)
    out = emit("DequantizeLinear", [q, si, gc.constant(zero_point)], {"axis": 1}, shape=x.shape, dtype=np.float32)
    gx, gs = gc.grad((out * gc.constant(w)).sum(), [xi, si])
    result = gc.compile([xi, si], {"out": out, "gx": gx, "gs": gs}).run({"x": x, "s": scale})

    xt, st = torch.tensor(x, requires_grad=True), torch.tensor(scale, requires_grad=True)
    zt = torch.tensor(zero_point.astype(np.float32), requires_grad=False)
    out_t = torch._fake_quantize_learnable_per_channel_affine(xt, st, zt, 1, -128, 127, 1.0)
    out_t.backward(torch.tensor(w))
    np.testing.assert_allclose(result["out"], out_t.detach().numpy(), atol=1e-6)
    np.testing.assert_allclose(result["gx"], xt.grad.numpy(), atol=1e-6)
    np.testing.assert_allclose(result["gs"], st.grad.numpy(), rtol=1e-4, atol=1e-4)
    reference = torch.fake_quantize_per_channel_affine(xt.detach().requires_grad_(), st.detach(),
                                                       zt.to(torch.int32), 1, -128, 127)
    np.testing.assert_allclose(result["out"], reference.detach().numpy(), atol=1e-6)


def test_weight_fake_quant_is_per_channel_symmetric():
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(4, 3, 2, 2)).astype(np.float32)
    wi = gc.input("w", weight.shape)
    out = fake_quantize_weight(wi)
    (grad,) = gc.grad((out * 2.0).sum(), [wi])
    result = gc.compile([wi], {"out": out, "grad": grad}).run({"w": weight})
    scale = np.abs(weight).reshape(4, -1).max(1) / np.float32(127)
    expected = torch.fake_quantize_per_channel_affine(torch.tensor(weight), torch.tensor(scale),
                                                      torch.zeros(4, dtype=torch.int32), 0, -127, 127)
    np.testing.assert_allclose(result["out"], expected.numpy(), atol=1e-7)
    np.testing.assert_array_equal(result["grad"], np.full(weight.shape, 2.0, np.float32))  # all in range


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 128), nn.Linear(128, 64), nn.Linear(64, 10)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def _train_digits(qat: bool, epochs: int = 15):
    gc.manual_seed(0)
    X, y = gc.data.load_digits()
    X_train, X_test, y_train, y_test = gc.data.train_test_split(X, y, test_fraction=0.2, seed=0)
    x, labels = gc.input("x", ("batch", 64)), gc.input("y", ("batch",), "int64")
    model = MLP()
    if qat:
        assert prepare_qat(model) is model
    trainer = gc.Trainer(F.cross_entropy(model(x), labels), gc.optim.Adam(model.parameters(), lr=1e-3),
                         inputs=[x, labels], seed=0)
    batches = []
    for epoch in range(epochs):
        for xb, yb in gc.data.DataLoader(X_train, y_train, batch_size=64, shuffle=True, seed=epoch):
            trainer.step({"x": xb, "y": yb})
            batches.append(xb)
    model.eval()
    program = gc.compile([x], {"logits": model(x)})
    accuracy = float((program.run({"x": X_test})["logits"].argmax(1) == y_test).mean())
    return model, program, accuracy, batches, X_test


@pytest.fixture(scope="module")
def trained():
    return {"fp32": _train_digits(False), "qat": _train_digits(True)}


def test_qat_mlp_within_one_point_of_float(trained):
    fp32_accuracy, qat_accuracy = trained["fp32"][2], trained["qat"][2]
    assert fp32_accuracy > 0.9
    assert qat_accuracy >= fp32_accuracy - 0.01, (qat_accuracy, fp32_accuracy)


def test_observer_state_is_the_moving_average_of_the_batches(trained):
    model, _, _, batches, _ = trained["qat"]
    low, high = batches[0].min(), batches[0].max()
    for batch in batches[1:]:
        low = low + (batch.min() - low) * np.float32(0.01)
        high = high + (batch.max() - high) * np.float32(0.01)
    state = model.state_dict()
    np.testing.assert_allclose(state["fc1.input_fake_quant.min_val"], low, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state["fc1.input_fake_quant.max_val"], high, rtol=1e-5)
    assert np.isfinite(state["fc3.output_fake_quant.max_val"])


def test_qat_export_is_qdq_with_int8_weights_and_runs_in_onnx_runtime(trained, tmp_path):
    model, program, accuracy, _, X_test = trained["qat"]
    path = tmp_path / "mlp.qat.onnx"
    program.save(path)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    types = {init.name: init.data_type for init in proto.graph.initializer}
    int8 = [n for n, t in types.items() if t == onnx.TensorProto.INT8]
    assert sum(int(np.prod(i.dims)) for i in proto.graph.initializer if i.name in int8) >= 64 * 128 + 128 * 64 + 640
    assert not any(t == onnx.TensorProto.FLOAT and int(np.prod(i.dims)) > 128
                   for i in proto.graph.initializer for t in [i.data_type])  # no float weight matrices left
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"x": X_test})[0]
    np.testing.assert_allclose(logits, program.run({"x": X_test})["logits"], atol=1e-5)
    # the export is what the fake quantization trained: int8 weights from the trained float ones
    weight = model.fc1.weight.data
    scale = np.abs(weight).max(1) / np.float32(127)
    stored = next(onnx.numpy_helper.to_array(i) for i in proto.graph.initializer
                  if i.data_type == onnx.TensorProto.INT8 and tuple(i.dims) == weight.shape)
    np.testing.assert_array_equal(stored, np.clip(np.rint(weight / scale[:, None]), -127, 127).astype(np.int8))


def test_qat_conv_trains_and_exports():
    gc.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 10))
    prepare_qat(model)
    assert type(model[0]).__name__ == "QATConv2d"
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "3.weight", "3.bias"]
    x, labels = gc.input("x", ("batch", 1, 8, 8)), gc.input("y", ("batch",), "int64")
    trainer = gc.Trainer(F.cross_entropy(model(x), labels), gc.optim.SGD(model.parameters(), lr=0.1),
                         inputs=[x, labels], seed=0)
    X, y = gc.data.load_digits(flatten=False)
    losses = [trainer.step({"x": X[:64], "y": y[:64]}) for _ in range(5)]
    assert losses[-1] < losses[0]
    model.eval()
    program = gc.compile([x], {"logits": model(x)})
    ops = {n.op_type for n in program.model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    session = ort.InferenceSession(program.model.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": X[:8]})[0], program.run({"x": X[:8]})["logits"], atol=1e-5)


def test_prepare_qat_errors():
    with pytest.raises(ValueError, match="has no nn.Linear or nn.Conv2d"):
        prepare_qat(nn.Sequential(nn.ReLU()))
    with pytest.raises(ValueError, match="only inplace=True"):
        prepare_qat(nn.Sequential(nn.Linear(2, 2)), inplace=False)
    with pytest.raises(TypeError, match="expected an nn.Module, got int"):
        prepare_qat(3)
    model = prepare_qat(nn.Sequential(nn.Linear(2, 2)))
    model.eval()
    with pytest.raises(ValueError, match=r"'0.input_fake_quant.min_val': no range observed yet"):
        model(gc.input("x", ("batch", 2)))
