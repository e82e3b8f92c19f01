"""A Slice that keeps one time step of a lowered recurrent node's Y reads that step's output directly.

A classifier reads only the last step (``out[:, -1, :]``); through the stacked Y its gradient was a
zero-padded (B, T, H) tensor split back into T step gradients, T - 1 of them zeros added to the
recurrent gradients. Values against ONNX Runtime's own op; gradients against PyTorch's autograd.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import graphc as gc
import graphc.nn.functional as F
from graphc import nn
from test_pass_lower_recurrent import B, H, T, feeds_for, lowered, recurrent_model, run, to_layout0

torch = pytest.importorskip("torch")
INT64_MAX = np.iinfo(np.int64).max


def _one_step_model(layout, direction, start, end, transpose, op="LSTM"):
    """The recurrent node's Y, its direction axis squeezed, optionally batch-first, one step sliced out."""
    model, inputs = recurrent_model(op, direction=direction, layout=layout)
    graph = model.graph
    del graph.output[:]
    axis_d, axis_t = (1, 0) if layout == 0 else (2, 1)
    consts = {"axis_d": [axis_d], "start": [start], "end": [end], "perm_t": [1 - axis_t if transpose else axis_t]}
    for name, values in consts.items():
        graph.initializer.append(helper.make_tensor(name, TensorProto.INT64, [1], values))
    graph.node.append(helper.make_node("Squeeze", ["Y", "axis_d"], ["Y3"]))
    source = "Y3"
    if transpose:  # (T, B, H) <-> (B, T, H)
        graph.node.append(helper.make_node("Transpose", ["Y3"], ["Yt"], perm=[1, 0, 2]))
        source = "Yt"
    graph.node.append(helper.make_node("Slice", [source, "start", "end", "perm_t"], ["step"]))
    graph.output.extend([helper.make_tensor_value_info("step", TensorProto.FLOAT, None),
                         helper.make_tensor_value_info("Y_h", TensorProto.FLOAT, None)])
    return model, inputs


def _producers(model: onnx.ModelProto):
    return {o: n for n in model.graph.node for o in n.output}


@pytest.mark.parametrize("transpose", [False, True], ids=["time_major", "transposed"])
@pytest.mark.parametrize("start, end", [(-1, INT64_MAX), (0, 1), (2, 3)], ids=["last", "first", "middle"])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_a_one_step_slice_reads_the_step_output(op, layout, direction, start, end, transpose):
    model, inputs = _one_step_model(layout, direction, start, end, transpose, op)
    feeds = feeds_for(inputs)
    new, _ = lowered(model)
    producers = _producers(new)
    step = producers["step"]
    assert step.op_type == "Unsqueeze"
    # the step's own output (LSTM o * tanh(c), GRU's blend, RNN's activation): no stacked Y in between
    assert producers[step.input[0]].op_type in ("Mul", "Add", "Sub", "Tanh")
    if layout == 0:
        expected = run(model, feeds)
    else:  # ONNX Runtime runs layout 0 only: the same slice of the layout-0 op, batch and time axes swapped back
        reference = run(_one_step_model(0, direction, start, end, transpose, op)[0], to_layout0(feeds))
        expected = {k: np.swapaxes(v, 0, 1) for k, v in reference.items()}
    got = run(new, feeds)
    np.testing.assert_allclose(got["step"], expected["step"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got["Y_h"], expected["Y_h"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("start, end", [(1, 3), (0, INT64_MAX)], ids=["two_steps", "all_steps"])
def test_slices_of_several_steps_keep_reading_y(start, end):
    model, inputs = _one_step_model(0, "forward", start, end, False)
    new, _ = lowered(model)
    assert _producers(new)["step"].op_type == "Slice"
    np.testing.assert_allclose(run(new, feeds_for(inputs))["step"], run(model, feeds_for(inputs))["step"],
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("index", [-1, 1], ids=["last", "middle"])
def test_gradients_through_one_step_match_torch(index):
    gc.manual_seed(0)
    torch.manual_seed(0)
    tlstm, tfc = torch.nn.LSTM(B + 1, H, num_layers=2, batch_first=True), torch.nn.Linear(H, 3)
    lstm, fc = nn.LSTM(B + 1, H, num_layers=2, batch_first=True), nn.Linear(H, 3)
    lstm.load_state_dict(tlstm.state_dict())
    fc.load_state_dict(tfc.state_dict())
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((4, T, B + 1)).astype(np.float32)
    yb = rng.integers(0, 3, 4)
    x, y = gc.input("x", ("batch", T, B + 1)), gc.input("y", ("batch",), dtype="int64")
    loss = F.cross_entropy(fc(lstm(x)[0][:, index, :]), y)
    params = dict(lstm.named_parameters())
    grads = gc.grad(loss, list(params.values()) + [x])
    got = gc.compile([x, y], {f"d{i}": g for i, g in enumerate(grads)}).run({"x": xb, "y": yb})
    tx = torch.from_numpy(xb).requires_grad_()
    torch.nn.functional.cross_entropy(tfc(tlstm(tx)[0][:, index, :]), torch.from_numpy(yb)).backward()
    tparams = dict(tlstm.named_parameters())
    for i, name in enumerate(params):
        np.testing.assert_allclose(got[f"d{i}"], tparams[name].grad.numpy(), rtol=1e-4, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(got[f"d{len(params)}"], tx.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg="x")


def test_the_classifier_step_has_no_zero_padded_step_gradients():
    gc.manual_seed(0)
    lstm, fc = nn.LSTM(3, 8, num_layers=2, batch_first=True), nn.Linear(8, 3)
    x, y = gc.input("x", ("batch", 7, 3)), gc.input("y", ("batch",), dtype="int64")
    loss = F.cross_entropy(fc(lstm(x)[0][:, -1, :]), y)
    trainer = gc.Trainer(loss, gc.optim.Adam(list(lstm.parameters()) + list(fc.parameters())), inputs=[x, y])
    ops = [n.op_type for n in trainer.step_model.graph.node]
    assert "Pad" not in ops and "Slice" not in ops and "Transpose" not in ops
