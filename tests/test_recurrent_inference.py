"""Eval-mode recurrent layers emit ONNX's own LSTM/GRU/RNN ops (faster inference) and match PyTorch."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import graphc as gc
from graphc import nn

torch = pytest.importorskip("torch")

MODES = {"lstm": (nn.LSTM, torch.nn.LSTM, {}, "LSTM"), "gru": (nn.GRU, torch.nn.GRU, {}, "GRU"),
         "rnn_tanh": (nn.RNN, torch.nn.RNN, {"nonlinearity": "tanh"}, "RNN"),
         "rnn_relu": (nn.RNN, torch.nn.RNN, {"nonlinearity": "relu"}, "RNN")}
I, H, T, B = 3, 5, 4, 2


@pytest.mark.parametrize("initial", [False, True], ids=["zero_state", "given_state"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("mode", list(MODES))
def test_eval_mode_uses_the_onnx_op_and_matches_torch(tmp_path, mode, num_layers, batch_first, bidirectional,
                                                      initial):
    cls, tcls, extra, op_type = MODES[mode]
    torch.manual_seed(0)
    kwargs = dict(num_layers=num_layers, batch_first=batch_first, bidirectional=bidirectional, **extra)
    tlayer, layer = tcls(I, H, **kwargs).eval(), cls(I, H, **kwargs)
    layer.load_state_dict(tlayer.state_dict())
    layer.eval()
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(np.float32)
    x = gc.input("x", ("batch", "seq", I) if batch_first else ("seq", "batch", I))
    inputs, feeds, hx, thx = [x], {"x": xb}, None, None
    if initial:
        names = ["h0", "c0"] if mode == "lstm" else ["h0"]
        arrays = {n: rng.standard_normal((num_layers * (1 + bidirectional), B, H)).astype(np.float32)
                  for n in names}
        states = [gc.input(n, (num_layers * (1 + bidirectional), "batch", H)) for n in names]
        inputs += states
        feeds.update(arrays)
        tstates = [torch.from_numpy(arrays[n]) for n in names]
        hx, thx = (tuple(states), tuple(tstates)) if mode == "lstm" else (states[0], tstates[0])
    out, h_n = layer(x, hx)
    outputs = {"out": out, **({"h_n": h_n[0], "c_n": h_n[1]} if mode == "lstm" else {"h_n": h_n})}
    program = gc.compile(inputs, outputs)
    assert op_type in {n.op_type for n in program.model.graph.node}
    program.save(tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    with torch.no_grad():
        tout, th = tlayer(torch.from_numpy(xb), thx)
    expected = {"out": tout, **({"h_n": th[0], "c_n": th[1]} if mode == "lstm" else {"h_n": th})}
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_gradients_through_an_eval_mode_layer_match_torch():
    """The ONNX op has no gradient rule: autodiff lowers it first (passes/lower_recurrent.py)."""
    torch.manual_seed(0)
    tlayer, layer = torch.nn.LSTM(I, H).eval(), nn.LSTM(I, H)
    layer.load_state_dict(tlayer.state_dict())
    layer.eval()
    x = gc.input("x", (T, "batch", I))
    out, _ = layer(x)
    names = [n for n, _ in layer.named_parameters()]
    grads = gc.grad(out.sum(), [p for _, p in layer.named_parameters()])
    xb = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
    got = gc.compile([x], dict(zip(names, grads))).run({"x": xb})
    tlayer(torch.from_numpy(xb))[0].sum().backward()
    for name, p in tlayer.named_parameters():
        np.testing.assert_allclose(got[name], p.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    onnx.checker.check_model(gc.compile([x], {"out": out}).model, full_check=True)
