"""``LowerRecurrentPass``: ONNX's LSTM/GRU/RNN nodes against ONNX Runtime's own op, before and after the
pass; gradients of imported PyTorch ``nn.LSTM``/``nn.GRU`` exports against torch autograd; clear refusals.

ONNX Runtime runs these ops for ``layout=0`` only: a ``layout=1`` model is checked against ONNX Runtime's
op on the same data transposed to layout 0.
"""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import graphc as gc
import graphc.nn.functional as F
from graphc import nn
from passes import IR_VERSION, OPSET
from passes.lower_recurrent import LowerRecurrentPass, RecurrentLoweringError

T, B, I, H = 4, 3, 2, 5
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent_model(op, direction="forward", layout=0, initial=False, symbolic=False, bias=True, **attrs):
    """One ONNX recurrent node over graph inputs (every input fed), all of its outputs as graph outputs."""
    dirs = 2 if direction == "bidirectional" else 1
    g = GATES[op]
    time = "T" if symbolic else T
    x_shape = [time, "B", I] if layout == 0 else ["B", time, I]
    state_shape = [dirs, "B", H] if layout == 0 else ["B", dirs, H]
    inputs = {"X": x_shape, "W": [dirs, g * H, I], "R": [dirs, g * H, H]}
    if bias:
        inputs["B"] = [dirs, 2 * g * H]
    names = ["X", "W", "R", "B" if bias else ""]
    if initial:
        inputs["initial_h"] = state_shape
        names += ["", "initial_h"]
        if op == "LSTM":
            inputs["initial_c"] = state_shape
            names.append("initial_c")
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    node = helper.make_node(op, names, outputs, hidden_size=H, direction=direction, layout=layout, **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                                            for n, s in inputs.items()],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model, inputs


def feeds_for(inputs, seed=0):
    rng = np.random.default_rng(seed)
    return {n: rng.uniform(-1, 1, [T if d == "T" else B if d == "B" else d for d in shape]).astype(np.float32)
            for n, shape in inputs.items()}


def run(model: onnx.ModelProto, feeds):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))


def lowered(model: onnx.ModelProto) -> tuple[onnx.ModelProto, ir.passes.PassResult]:
    result = LowerRecurrentPass()(ir.serde.deserialize_model(model))
    return ir.serde.serialize_model(result.model), result


def to_layout0(feeds):
    """layout 1 feeds (batch first) -> layout 0: X (B, T, I) -> (T, B, I), states (B, D, H) -> (D, B, H)."""
    return {n: np.ascontiguousarray(np.swapaxes(v, 0, 1)) if n in ("X", "initial_h", "initial_c") else v
            for n, v in feeds.items()}


@pytest.mark.parametrize("symbolic", [False, True], ids=["static", "symbolic"])
@pytest.mark.parametrize("initial", [False, True], ids=["zero_state", "initial_state"])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_lowering_matches_onnx_runtimes_op(op, direction, layout, initial, symbolic):
    model, inputs = recurrent_model(op, direction, layout, initial, symbolic)
    feeds = feeds_for(inputs)
    if layout == 0:
        expected = run(model, feeds)
    else:  # ONNX Runtime refuses layout=1: its op on the transposed data, outputs transposed back
        model0, _ = recurrent_model(op, direction, 0, initial, symbolic)
        expected = run(model0, to_layout0(feeds))
        expected = {"Y": np.transpose(expected["Y"], (2, 0, 1, 3)),
                    **{k: np.swapaxes(v, 0, 1) for k, v in expected.items() if k != "Y"}}
    after, result = lowered(model)
    assert result.modified
    op_types = [n.op_type for n in after.graph.node]
    assert op not in op_types
    assert ("Scan" in op_types) == symbolic
    onnx.checker.check_model(after, full_check=True)
    got = run(after, feeds)
    assert set(got) == set(expected)
    for name, value in expected.items():
        assert got[name].shape == value.shape, name
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("case", [
    {"op": "GRU", "linear_before_reset": 1},
    {"op": "GRU", "linear_before_reset": 1, "direction": "bidirectional", "symbolic": True},
    {"op": "GRU", "linear_before_reset": 0, "initial": True, "symbolic": True},
    {"op": "RNN", "activations": ["Relu", "Tanh"], "direction": "bidirectional"},
    {"op": "LSTM", "bias": False, "initial": True},
], ids=["gru_lbr", "gru_lbr_bi_scan", "gru_no_lbr_scan", "rnn_relu_tanh", "lstm_no_bias"])
def test_lowering_of_attribute_variants_matches_onnx_runtime(case):
    case = dict(case)
    model, inputs = recurrent_model(case.pop("op"), **case)
    feeds = feeds_for(inputs, seed=1)
    expected = run(model, feeds)
    after, _ = lowered(model)
    got = run(after, feeds)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_lstm_peepholes_match_onnx_runtime():
    model, inputs = recurrent_model("LSTM", "bidirectional", initial=True)
    node = model.graph.node[0]
    assert list(node.input) == ["X", "W", "R", "B", "", "initial_h", "initial_c"]
    node.input.append("P")
    model.graph.input.append(helper.make_tensor_value_info("P", TensorProto.FLOAT, [2, 3 * H]))
    feeds = feeds_for({**inputs, "P": [2, 3 * H]}, seed=2)
    expected = run(model, feeds)
    got = run(lowered(model)[0], feeds)
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6, err_msg=name)


def test_unused_outputs_are_not_computed_and_other_nodes_are_untouched():
    model, inputs = recurrent_model("LSTM", "bidirectional")
    del model.graph.output[2]  # Y and Y_c are unused: only Y_h is computed
    del model.graph.output[0]
    relu = helper.make_node("Relu", ["X"], ["X_relu"])
    model.graph.node.append(relu)
    model.graph.output.append(helper.make_tensor_value_info("X_relu", TensorProto.FLOAT, None))
    after, _ = lowered(model)
    assert [o.name for o in after.graph.output] == ["Y_h", "X_relu"]
    assert "Relu" in [n.op_type for n in after.graph.node]
    assert [n.op_type for n in after.graph.node].count("Concat") == 1  # Y_h's two directions; no Y
    feeds = feeds_for(inputs)
    np.testing.assert_allclose(run(after, feeds)["Y_h"], run(model, feeds)["Y_h"], rtol=1e-5, atol=1e-6)


def test_a_model_without_recurrent_nodes_is_not_modified():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    assert not LowerRecurrentPass()(ir.serde.deserialize_model(model)).modified


@pytest.mark.parametrize("change, message", [
    ({"clip": 3.0}, r"LSTM node 'cell': clip is not supported .*expected no clip attribute, got clip=3.0"),
    ({"activations": ["HardSigmoid", "Tanh", "Tanh"]},
     r"activations \['HardSigmoid'\] are not supported .*expected Sigmoid, Tanh or Relu"),
    ({"input_forget": 1}, r"input_forget=1 is not supported .*expected 0"),
    ({"sequence_lens": True}, r"sequence_lens is not supported .*got 'lens'"),
])
def test_unsupported_features_are_refused_naming_the_node(change, message):
    change = dict(change)
    lens = change.pop("sequence_lens", False)
    model, _ = recurrent_model("LSTM", **change)
    model.graph.node[0].name = "cell"
    if lens:
        model.graph.node[0].input[:] = ["X", "W", "R", "B", "lens"]
        model.graph.input.append(helper.make_tensor_value_info("lens", TensorProto.INT32, ["B"]))
    with pytest.raises(RecurrentLoweringError, match=message):
        lowered(model)


# ---- gradients of imported PyTorch exports against torch autograd ----------------------------
torch = pytest.importorskip("torch")


class SequenceModel(torch.nn.Module):
    def __init__(self, kind, **kwargs):
        super().__init__()
        self.rnn = getattr(torch.nn, kind)(I, H, **kwargs)

    def forward(self, x):
        out, _ = self.rnn(x)
        return out


def torch_export(module, x):
    buffer = io.BytesIO()
    torch.onnx.export(module, (torch.from_numpy(x),), buffer, input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {1: "batch"}}, dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("kind, kwargs", [
    ("LSTM", {"num_layers": 2}),
    ("LSTM", {"bidirectional": True}),
    ("GRU", {"num_layers": 2, "bidirectional": True}),
    ("GRU", {}),
], ids=["lstm_2layers", "lstm_bi", "gru_2layers_bi", "gru"])
def test_gradients_of_an_imported_pytorch_export_match_torch_autograd(kind, kwargs):
    torch.manual_seed(0)
    module = SequenceModel(kind, **kwargs).eval()
    with torch.no_grad():  # distinct values everywhere: the exporter would merge equal initializers
        for p in module.parameters():
            p.add_(torch.rand_like(p) * 0.1)
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((T, B, I)).astype(np.float32)
    model = torch_export(module, xb)
    assert kind in {n.op_type for n in model.graph.node}
    imported = gc.load_onnx(model)
    x = gc.input("x", (T, "batch", I))
    y = imported(x)
    probe = rng.standard_normal(tuple(module(torch.from_numpy(xb)).shape)).astype(np.float32)
    loss = (y * gc.constant(probe)).sum()
    names = [n for n, _ in imported.named_parameters()]
    grads = gc.grad(loss, [p for _, p in imported.named_parameters()] + [x])
    got = gc.compile([x], {"loss": loss, **{f"d{i}": g for i, g in enumerate(grads)}}).run({"x": xb})

    tx = torch.from_numpy(xb).requires_grad_()
    tloss = (module(tx) * torch.from_numpy(probe)).sum()
    tloss.backward()
    np.testing.assert_allclose(got["loss"], tloss.item(), rtol=1e-5)
    np.testing.assert_allclose(got[f"d{len(names)}"], tx.grad.numpy(), rtol=1e-4, atol=1e-5, err_msg="d x")
    # The export re-lays PyTorch's parameters into ONNX's W/R/B initializers: compare through the
    # same re-layout, which torch autograd runs as well (the initializers as leaves).
    tparams = _export_initializers_as_torch(model, module)
    for i, name in enumerate(names):
        if name in tparams:
            np.testing.assert_allclose(got[f"d{i}"], tparams[name], rtol=1e-4, atol=1e-5, err_msg=name)
    layers = module.rnn.num_layers
    assert len(tparams) == 3 * layers and set(tparams) <= set(names)  # W, R, B of every layer compared


def _export_initializers_as_torch(model: onnx.ModelProto, module) -> dict[str, np.ndarray]:
    """Gradient w.r.t. each W/R/B initializer of the export, by torch autograd on PyTorch's own
    parameters: the initializer is a gate permutation of PyTorch's weights, so its gradient is the same
    permutation of PyTorch's gradient."""
    grads = {n: p.grad.numpy() for n, p in module.named_parameters()}
    kind = type(module.rnn).__name__
    order = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2]}[kind]
    hidden = module.rnn.hidden_size
    rows = np.concatenate([np.arange(g * hidden, (g + 1) * hidden) for g in order])
    found = {}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != kind:
            continue
        # The layer index: the W initializer equals layer k's weight_ih in ONNX's gate order.
        for layer in range(module.rnn.num_layers):
            suffixes = [f"_l{layer}"] + ([f"_l{layer}_reverse"] if module.rnn.bidirectional else [])
            w = np.stack([getattr(module.rnn, "weight_ih" + s).detach().numpy()[rows] for s in suffixes])
            if node.input[1] in inits and np.array_equal(inits[node.input[1]], w):
                found[node.input[1]] = np.stack([grads["rnn.weight_ih" + s][rows] for s in suffixes])
                found[node.input[2]] = np.stack([grads["rnn.weight_hh" + s][rows] for s in suffixes])
                found[node.input[3]] = np.stack([np.concatenate([grads["rnn.bias_ih" + s][rows],
                                                                 grads["rnn.bias_hh" + s][rows]])
                                                 for s in suffixes])
    return found


# ---- graphc's layers: ONNX's op for inference, the lowering for training ----------------------
def test_layers_emit_the_onnx_op_and_the_training_step_lowers_it_with_fused_weight_gradients():
    gc.manual_seed(0)
    lstm, fc = nn.LSTM(6, 8, num_layers=2, batch_first=True), nn.Linear(8, 3)  # train mode
    x, y = gc.input("x", ("batch", 7, 6)), gc.input("y", ("batch",), dtype="int64")
    logits = fc(lstm(x)[0][:, -1, :])
    inference = gc.compile([x], {"logits": logits}).model
    assert [n.op_type for n in inference.graph.node].count("LSTM") == 2
    trainer = gc.Trainer(F.cross_entropy(logits, y), gc.optim.Adam(list(lstm.parameters()) + list(fc.parameters())),
                         inputs=[x, y])
    graph = trainer.step_model.graph
    producer = {o: n for n in graph.node for o in n.output}
    assert "LSTM" not in {n.op_type for n in graph.node}
    # FuseGradientSumsPass still applies: each layer's R gradient is one Gemm over concatenated steps
    fused = [n for n in graph.node if n.op_type == "Gemm"
             and all(i in producer and producer[i].op_type == "Concat" for i in n.input[:2])]
    assert len(fused) == 2
