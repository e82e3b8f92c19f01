"""nn.LSTM, nn.GRU, nn.RNN: PyTorch parity (forward, every gradient, an Adam trajectory), float64 finite
differences, both lowerings (unrolled for a static length, Scan for a symbolic one) and the exported step.

Every graphc layer loads the twin PyTorch layer's ``state_dict`` as is.
Tolerances (float32 both sides): forward rtol 1e-5 / atol 1e-6 and gradients
rtol 1e-4 / atol 1e-5 (sums over steps and batch in different orders);
8-step trajectories rtol 1e-4 / atol 1e-5.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import pytest

import graphc as gc
import graphc.nn.functional as F
from graphc import nn
from graphc.errors import GraphcError, ShapeError
from graphc.nn.recurrent import LayerWeights
from graphc.tensor import emit
from passes.lower_recurrent import LowerRecurrentPass

torch = pytest.importorskip("torch")

FWD = {"rtol": 1e-5, "atol": 1e-6}
GRAD = {"rtol": 1e-4, "atol": 1e-5}
TRAJ = {"rtol": 1e-4, "atol": 1e-5}

MODES = {  # id -> (graphc class, torch class, extra constructor arguments)
    "lstm": (nn.LSTM, torch.nn.LSTM, {}),
    "gru": (nn.GRU, torch.nn.GRU, {}),
    "rnn_tanh": (nn.RNN, torch.nn.RNN, {"nonlinearity": "tanh"}),
    "rnn_relu": (nn.RNN, torch.nn.RNN, {"nonlinearity": "relu"}),
}
I, H, T, B = 3, 5, 4, 2


def twins(mode, seed=0, **kwargs):
    cls, tcls, extra = MODES[mode]
    torch.manual_seed(seed)
    tlayer = tcls(I, H, **extra, **kwargs)
    layer = cls(I, H, **extra, **kwargs)
    layer.load_state_dict(tlayer.state_dict())
    return layer, tlayer


def run_case(mode, num_layers=1, batch_first=False, bidirectional=False, initial=False, seq=T, seed=0, **kw):
    """Forward, and gradients of a loss on every output w.r.t. parameters, input and initial states."""
    layer, tlayer = twins(mode, seed, num_layers=num_layers, batch_first=batch_first,
                          bidirectional=bidirectional, **kw)
    rng = np.random.default_rng(seed)
    dirs = 2 if bidirectional else 1
    xb = rng.standard_normal((B, T, I) if batch_first else (T, B, I)).astype(np.float32)
    x = gc.input("x", ("batch", seq, I) if batch_first else (seq, "batch", I))
    feeds, inputs, hx, thx = {"x": xb}, [x], None, None
    txb = torch.from_numpy(xb).requires_grad_()
    if initial:
        names = ["h0", "c0"] if mode == "lstm" else ["h0"]
        arrays = [rng.standard_normal((num_layers * dirs, B, H)).astype(np.float32) for _ in names]
        states = [gc.input(n, (num_layers * dirs, "batch", H)) for n in names]
        feeds.update(zip(names, arrays))
        inputs += states
        tstates = [torch.from_numpy(a).requires_grad_() for a in arrays]
        hx, thx = (tuple(states), tuple(tstates)) if mode == "lstm" else (states[0], tstates[0])
    out, h_n = layer(x, hx)
    tout, th_n = tlayer(txb, thx)
    outs = {"out": out, **({"h_n": h_n[0], "c_n": h_n[1]} if mode == "lstm" else {"h_n": h_n})}
    touts = {"out": tout, **({"h_n": th_n[0], "c_n": th_n[1]} if mode == "lstm" else {"h_n": th_n})}
    weights = {k: gc.constant(rng.standard_normal(tuple(v.shape)).astype(np.float32)) for k, v in touts.items()}
    loss = sum(((v * weights[k]).sum() for k, v in outs.items()), gc.constant(np.float32(0)))
    tloss = sum((v * torch.from_numpy(weights[k].value.const_value.numpy())).sum() for k, v in touts.items())
    tloss.backward()
    wrt = {n: p for n, p in layer.named_parameters()} | {"x": x}
    if initial:
        wrt |= dict(zip(names, states))
    grads = gc.grad(loss, list(wrt.values()))
    result = gc.compile(inputs, {**outs, **{f"d_{n}": g for n, g in zip(wrt, grads)}}).run(feeds)
    for name, value in touts.items():
        assert result[name].shape == tuple(value.shape), name
        np.testing.assert_allclose(result[name], value.detach().numpy(), err_msg=name, **FWD)
    tgrads = {n: p.grad for n, p in tlayer.named_parameters()} | {"x": txb.grad}
    if initial:
        tgrads |= dict(zip(names, [s.grad for s in tstates]))
    for name, tgrad in tgrads.items():
        np.testing.assert_allclose(result[f"d_{name}"], tgrad.numpy(), err_msg=f"d loss / d {name}", **GRAD)
    return layer, out, h_n


# ---- forward and gradients, static length (unrolled) ---------------------------------
@pytest.mark.parametrize("initial", [False, True], ids=["zero_state", "given_state"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("num_layers", [1, 2], ids=["1layer", "2layers"])
@pytest.mark.parametrize("mode", list(MODES))
def test_forward_and_gradients_match_torch(mode, num_layers, batch_first, bidirectional, initial):
    run_case(mode, num_layers, batch_first, bidirectional, initial)


# ---- symbolic length: the Scan lowering and its VJP rule ------------------------------
@pytest.mark.parametrize("initial", [False, True], ids=["zero_state", "given_state"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("mode", list(MODES))
def test_symbolic_length_scan_matches_torch(mode, batch_first, initial):
    run_case(mode, 2, batch_first, bidirectional=True, initial=initial, seq="seq")


def test_symbolic_length_lowers_to_scan_and_static_length_unrolls():
    """The layer emits ONNX's GRU (what inference runs); the lowering pass (what autodiff runs) unrolls a
    static length and scans a symbolic one."""
    for seq, scans in ((T, 0), ("seq", 2)):
        x = gc.input("x", (seq, "batch", I))
        out, _ = nn.GRU(I, H, bidirectional=True)(x)
        model = ir.serde.deserialize_model(gc.compile([x], {"out": out}, optimize=False).model)
        assert [n.op_type for n in model.graph].count("GRU") == 1
        LowerRecurrentPass()(model)
        ops = [n.op_type for n in model.graph]
        assert ops.count("Scan") == scans and "GRU" not in ops
        # per direction: one input projection, then one Gemm per step but the first (its zero state is skipped)
        assert ops.count("Gemm") == (2 if scans else 2 + 2 * (T - 1))


def test_one_step_sequence_and_no_bias():
    run_case("lstm", 2, batch_first=True, initial=True, bias=False)
    layer, out, _ = run_case("gru", 1, bidirectional=True, bias=False)
    assert [n for n, _ in layer.named_parameters()] == ["weight_ih_l0", "weight_hh_l0", "weight_ih_l0_reverse",
                                                         "weight_hh_l0_reverse"]


def test_lstm_proj_size_matches_torch():
    run_case("lstm", 2, batch_first=True, bidirectional=True, initial=False, proj_size=2)


def test_unbatched_input_matches_torch():
    for mode in ("lstm", "gru"):
        layer, tlayer = twins(mode, num_layers=2, bidirectional=True)
        xb = np.random.default_rng(0).standard_normal((T, I)).astype(np.float32)
        x = gc.input("x", (T, I))
        out, h_n = layer(x)
        h_n = h_n[0] if mode == "lstm" else h_n
        result = gc.compile([x], {"out": out, "h_n": h_n}).run({"x": xb})
        tout, th_n = tlayer(torch.from_numpy(xb))
        th_n = th_n[0] if mode == "lstm" else th_n
        np.testing.assert_allclose(result["out"], tout.detach().numpy(), **FWD)
        np.testing.assert_allclose(result["h_n"], th_n.detach().numpy(), **FWD)


def test_dropout_between_layers_in_training_mode_only():
    """p=1 zeroes the second layer's input in training mode (deterministic, as in torch); eval ignores it."""
    for training in (True, False):
        layer, tlayer = twins("lstm", num_layers=2, dropout=1.0)
        layer.train(training), tlayer.train(training)
        xb = np.random.default_rng(0).standard_normal((T, B, I)).astype(np.float32)
        x = gc.input("x", (T, "batch", I))
        out, _ = layer(x)
        result = gc.compile([x], {"out": out}).run({"x": xb})["out"]
        np.testing.assert_allclose(result, tlayer(torch.from_numpy(xb))[0].detach().numpy(), **FWD)


def test_dropout_draws_masks_only_in_training_mode():
    layer = nn.GRU(I, H, num_layers=3, dropout=0.5)
    x = gc.input("x", (T, "batch", I))
    with pytest.raises(GraphcError, match="dropout"):  # two random masks need the rng_key input
        gc.compile([x], {"out": layer(x)[0]})
    layer.eval()
    gc.compile([x], {"out": layer(x)[0]})


def test_scan_vjp_needs_per_step_states():
    """A hand-built Scan whose carried state has no per-step output: the VJP rule says what it needs."""
    s0, xs = gc.input("s0", (2,)), gc.input("xs", ("seq", 2))
    s, x_t = (gc.Tensor(ir.Value(name=n, shape=ir.Shape([2]), type=ir.TensorType(ir.DataType.FLOAT)))
              for n in ("s", "x_t"))
    total = s + x_t
    y = F.tanh(total)
    body = ir.Graph([s.value, x_t.value], [total.value, y.value], nodes=[total.value.producer(), y.value.producer()])
    final, ys = emit("Scan", [s0, xs], {"body": body, "num_scan_inputs": 1}, shape=(2,), dtype=np.float32,
                     num_outputs=2, extra_outputs=[(("seq", 2), np.float32)])
    with pytest.raises(NotImplementedError, match="per-step value of each carried state"):
        gc.grad(ys.sum(), [s0, xs])


# ---- parameters: names, shapes, init, state_dict ----------------------------------------
@pytest.mark.parametrize("mode", list(MODES))
def test_parameters_match_torch_names_shapes_and_init_range(mode):
    layer, tlayer = twins(mode, num_layers=2, bidirectional=True)
    fresh = MODES[mode][0](I, H, num_layers=2, bidirectional=True, **MODES[mode][2])
    ours, theirs = fresh.state_dict(), tlayer.state_dict()
    assert list(ours) == list(theirs)
    bound = 1 / np.sqrt(H)
    for name, value in theirs.items():
        assert ours[name].shape == tuple(value.shape) and ours[name].dtype == np.float32, name
        assert np.abs(ours[name]).max() <= bound, name
    values = np.concatenate([v.ravel() for v in ours.values()])  # U(-bound, bound): mean 0, std bound/sqrt(3)
    assert abs(values.mean()) < 0.1 * bound and abs(values.std() - bound / np.sqrt(3)) < 0.1 * bound
    assert [len(group) for group in fresh.all_weights] == [4] * 4


def test_bad_inputs_are_build_time_errors():
    layer = nn.LSTM(I, H, num_layers=2)
    with pytest.raises(ShapeError, match="input_size=3"):
        layer(gc.input("x", (T, "batch", I + 1)))
    with pytest.raises(ShapeError, match=r"hidden state of shape \(2, batch, 5\)"):
        h = gc.input("h", (1, "batch", H))
        layer(gc.input("x", (T, "batch", I)), (h, h))
    with pytest.raises(ShapeError, match="tuple"):
        layer(gc.input("x", (T, "batch", I)), gc.input("h", (2, "batch", H)))
    with pytest.raises(ValueError, match="nonlinearity"):
        nn.RNN(I, H, nonlinearity="gelu")
    with pytest.raises(ShapeError, match="dtype"):
        layer(gc.input("x", (T, "batch", I), dtype="float64"))


# ---- float64 gradients against central finite differences ---------------------------------
@pytest.mark.parametrize("seq", [3, "seq"], ids=["unrolled", "scan"])
@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_gradients_match_float64_finite_differences(mode, seq):
    rng = np.random.default_rng(3)
    cls, _, extra = MODES[mode]
    layer = cls(2, 3, num_layers=2, bidirectional=(seq == "seq"), **extra)
    named = {}
    for n, p in layer.named_parameters():
        named[n] = (gc.input(n, p.shape, dtype="float64"), p.data.astype(np.float64))
    weights = [LayerWeights(*[named[f"{kind}_l{k}{suffix}"][0] for kind in
                              ("weight_ih", "weight_hh", "bias_ih", "bias_hh")])
               for k in range(2) for suffix in ([""] + (["_reverse"] if seq == "seq" else []))]
    x = gc.input("x", (seq, "batch", 2), dtype="float64")
    out, _ = layer.forward_with(weights, x)
    probe = gc.constant(rng.standard_normal(out.shape[-1]), dtype="float64")
    loss = (out * probe).sum()
    feeds = {"x": rng.standard_normal((3, 2, 2))} | {n: a for n, (_, a) in named.items()}
    inputs = [x] + [t for t, _ in named.values()]
    grads = gc.grad(loss, inputs)
    program = gc.compile(inputs, {"loss": loss, **{f"d{i}": g for i, g in enumerate(grads)}})
    analytic = program.run(feeds)
    eps = 1e-6
    for i, name in enumerate(feeds):
        numeric = np.zeros_like(feeds[name])
        for index in np.ndindex(feeds[name].shape):
            plus, minus = dict(feeds), dict(feeds)
            plus[name], minus[name] = feeds[name].copy(), feeds[name].copy()
            plus[name][index] += eps
            minus[name][index] -= eps
            numeric[index] = (program.run(plus)["loss"] - program.run(minus)["loss"]) / (2 * eps)
        np.testing.assert_allclose(analytic[f"d{i}"], numeric, rtol=1e-6, atol=1e-8, err_msg=name)


# ---- training: Adam trajectory and the exported step ----------------------------------------
class Classifier(nn.Module):
    def __init__(self, features, hidden, classes):
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, -1, :])


class TorchClassifier(torch.nn.Module):
    def __init__(self, features, hidden, classes):
        super().__init__()
        self.lstm = torch.nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.fc = torch.nn.Linear(hidden, classes)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, -1, :])


def make_trainer(seq):
    torch.manual_seed(0)
    tmodel = TorchClassifier(6, 16, 4)
    model = Classifier(6, 16, 4)
    model.load_state_dict(tmodel.state_dict())
    x = gc.input("x", ("batch", seq, 6))
    y = gc.input("y", ("batch",), dtype="int64")
    loss = F.cross_entropy(model(x), y)
    trainer = gc.Trainer(loss, gc.optim.Adam(model.parameters(), lr=1e-2), inputs=[x, y], seed=0)
    return model, tmodel, trainer


@pytest.mark.parametrize("seq", [7, "seq"], ids=["unrolled", "scan"])
def test_adam_trajectory_of_lstm_classifier_matches_torch(seq):
    model, tmodel, trainer = make_trainer(seq)
    topt = torch.optim.Adam(tmodel.parameters(), lr=1e-2)
    rng = np.random.default_rng(1)
    ours, theirs = [], []
    batches = [(rng.standard_normal((8, 7, 6)).astype(np.float32), rng.integers(0, 4, 8).astype(np.int64))
               for _ in range(2)]
    for step in range(8):
        xb, yb = batches[step % 2]
        ours.append(trainer.step({"x": xb, "y": yb}))
        topt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(tmodel(torch.from_numpy(xb)), torch.from_numpy(yb))
        tloss.backward()
        topt.step()
        theirs.append(tloss.item())
    np.testing.assert_allclose(ours, theirs, err_msg="losses", **TRAJ)
    state, tstate = model.state_dict(), tmodel.state_dict()
    assert list(state) == list(tstate)
    for name, value in tstate.items():
        np.testing.assert_allclose(state[name], value.numpy(), err_msg=name, **TRAJ)
    assert ours[-2] < ours[0] and ours[-1] < ours[1]  # it learns the two batches


def _op_domains(graph: onnx.GraphProto):
    for node in graph.node:
        yield node.domain, node.op_type
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _op_domains(attr.g)


@pytest.mark.parametrize("seq", [7, "seq"], ids=["unrolled", "scan"])
def test_training_step_is_standard_onnx(seq, tmp_path):
    _, _, trainer = make_trainer(seq)
    model = trainer.training_model()
    onnx.checker.check_model(model, full_check=True)
    domains = set(_op_domains(model.graph))
    assert {d for d, _ in domains} <= {"", "ai.onnx"}
    assert ("", "Scan") in domains if seq == "seq" else ("", "Scan") not in domains
    assert not {"LSTM", "GRU", "RNN"} & {op for _, op in domains}
    trainer.save(tmp_path / "step.onnx")
    import onnxruntime as ort
    session = ort.InferenceSession(str(tmp_path / "step.onnx"), providers=["CPUExecutionProvider"])
    state_session = ort.InferenceSession(str(tmp_path / "step.state.onnx"), providers=["CPUExecutionProvider"])
    state = dict(zip([o.name for o in state_session.get_outputs()], state_session.run(None, {})))
    rng = np.random.default_rng(0)
    loss = session.run(["loss"], {"x": rng.standard_normal((3, 7, 6)).astype(np.float32),
                                  "y": np.array([0, 1, 2], dtype=np.int64), **state})[0]
    assert np.isfinite(loss)
