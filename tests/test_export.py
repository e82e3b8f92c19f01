"""Exported models are standard ONNX: checker, default domain only, plain ONNX Runtime, the CLI, and PyTorch.

- ``Program.save``: the inference model with its weights.
- ``Trainer.save``: the training step (state as plain inputs) and ``.state.onnx`` (the current state);
  one plain ``InferenceSession.run`` on the batch plus that state is one training step.
"""

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

import graphc as gc  # noqa: E402
import graphc.nn.functional as F  # noqa: E402
from graphc import nn  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DOMAINS = ("", "ai.onnx")
MAX_IR_VERSION = 13  # the newest ONNX Runtime 1.2x accepts (onnx 1.23 would write 14)


class MLP(nn.Module):
    def __init__(self, sizes=(784, 128, 64, 10)):
        super().__init__()
        self.fc1 = nn.Linear(sizes[0], sizes[1])
        self.fc2 = nn.Linear(sizes[1], sizes[2])
        self.fc3 = nn.Linear(sizes[2], sizes[3])

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class TorchMLP(torch.nn.Module):
    def __init__(self, sizes=(784, 128, 64, 10)):
        super().__init__()
        self.fc1 = torch.nn.Linear(sizes[0], sizes[1])
        self.fc2 = torch.nn.Linear(sizes[1], sizes[2])
        self.fc3 = torch.nn.Linear(sizes[2], sizes[3])

    def forward(self, x):
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


SMALL = (20, 16, 12, 5)


def twin_models(sizes=SMALL, seed=0):
    torch.manual_seed(seed)
    tmodel = TorchMLP(sizes)
    model = MLP(sizes)
    model.load_state_dict(tmodel.state_dict())
    return model, tmodel


def batch(sizes=SMALL, n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, sizes[0])).astype(np.float32), rng.integers(0, sizes[-1], n).astype(np.int64)


def assert_standard_onnx(model: onnx.ModelProto):
    """Only ai.onnx, an IR version ONNX Runtime accepts, named nodes, a description."""
    assert {o.domain for o in model.opset_import} <= set(DEFAULT_DOMAINS), model.opset_import
    for node in model.graph.node:
        assert node.domain in DEFAULT_DOMAINS, (node.name, node.op_type, node.domain)
        assert not node.domain.startswith("com.microsoft")
    assert model.ir_version <= MAX_IR_VERSION
    assert all(node.name for node in model.graph.node), "every node has a name"
    assert len({node.name for node in model.graph.node}) == len(model.graph.node), "node names are unique"
    assert model.doc_string.strip()


def plain_session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def run_saved_step(path, batch_feeds: dict) -> dict:
    """One step of a saved training step: its state from ``<stem>.state.onnx``, then the step, by name."""
    state_session = plain_session(str(path)[: -len(".onnx")] + ".state.onnx")
    state = dict(zip([o.name for o in state_session.get_outputs()], state_session.run(None, {})))
    session = plain_session(path)
    return dict(zip([o.name for o in session.get_outputs()], session.run(None, {**batch_feeds, **state})))


# ---- Program.save ----------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist_mlp(tmp_path_factory):
    model, tmodel = twin_models((784, 128, 64, 10))
    x = gc.input("x", shape=("batch", 784))
    prog = gc.compile([x], {"logits": model(x)})
    path = tmp_path_factory.mktemp("export") / "mlp.onnx"
    prog.save(path)
    return prog, tmodel, path


def test_program_save_is_standard_onnx(mnist_mlp):
    _, _, path = mnist_mlp
    onnx.checker.check_model(str(path), full_check=True)
    loaded = onnx.load(str(path))
    assert_standard_onnx(loaded)
    assert [i.name for i in loaded.graph.input] == ["x"]
    assert [o.name for o in loaded.graph.output] == ["logits"]
    initializers = {t.name for t in loaded.graph.initializer}
    assert {"fc1.weight", "fc1.bias", "fc3.weight"} <= initializers


def test_program_save_runs_in_plain_onnxruntime_like_prog_run_and_torch(mnist_mlp):
    prog, tmodel, path = mnist_mlp
    xb = np.random.default_rng(1).random((7, 784), dtype=np.float32)
    session = plain_session(path)
    (ort_logits,) = session.run(None, {"x": xb})
    np.testing.assert_array_equal(ort_logits, prog.run({"x": xb})["logits"])
    with torch.no_grad():
        expected = tmodel(torch.from_numpy(xb)).numpy()
    np.testing.assert_allclose(ort_logits, expected, rtol=1e-5, atol=1e-5)


def test_symbolic_batch_dim_is_kept(mnist_mlp):
    _, _, path = mnist_mlp
    session = plain_session(path)
    assert session.get_inputs()[0].shape[0] in ("batch", None)
    for n in (1, 3):
        (out,) = session.run(None, {"x": np.zeros((n, 784), np.float32)})
        assert out.shape == (n, 10)


def test_program_model_equals_saved_file(mnist_mlp):
    prog, _, path = mnist_mlp
    from graphc.program import for_export  # the written file: the model without in-memory source lines
    assert onnx.load(str(path)).SerializeToString() == for_export(prog.model).SerializeToString()


# ---- Trainer.save ----------------------------------------------------------------
def make_trainer(opt_cls=gc.optim.Adam, **hparams):
    model, tmodel = twin_models()
    x = gc.input("x", shape=("batch", SMALL[0]))
    y = gc.input("y", shape=("batch",), dtype="int64")
    loss = F.cross_entropy(model(x), y)
    opt = opt_cls(model.parameters(), **hparams)
    return gc.Trainer(loss, opt, inputs=[x, y], provider="cpu", seed=0), model, opt


@pytest.mark.parametrize("opt_cls, hparams", [
    (gc.optim.Adam, {"lr": 1e-2}),
    (gc.optim.SGD, {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    (gc.optim.RMSprop, {"lr": 1e-3, "centered": True, "momentum": 0.5}),
    (gc.optim.Adagrad, {"lr": 0.05, "lr_decay": 0.1}),
], ids=["adam", "sgd_nesterov", "rmsprop", "adagrad"])
def test_trainer_save_is_one_training_step_in_plain_onnxruntime(tmp_path, opt_cls, hparams):
    trainer, model, _ = make_trainer(opt_cls, **hparams)
    for seed in range(3):  # non-trivial optimizer state and step count
        xb, yb = batch(seed=seed)
        trainer.step({"x": xb, "y": yb})
    path = tmp_path / "step.onnx"
    trainer.save(path)
    onnx.checker.check_model(str(path), full_check=True)
    saved = onnx.load(str(path))
    assert_standard_onnx(saved)

    session = plain_session(path)
    outputs = session.get_outputs()
    assert outputs[0].name == "loss"
    assert not {i.name for i in saved.graph.input} & {t.name for t in saved.graph.initializer}, \
        "state inputs are plain inputs (onnxruntime-node ignores feeds for initializer-backed ones)"
    xb, yb = batch(seed=10)
    results = run_saved_step(path, {"x": xb, "y": yb})
    expected_loss = trainer.step({"x": xb, "y": yb})
    np.testing.assert_allclose(results["loss"], expected_loss, rtol=1e-6, atol=1e-7)
    # the updated parameters that the file returns are the ones the trainer now holds
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(results[name + ".updated"], value, rtol=1e-6, atol=1e-7, err_msg=name)


def test_trainer_save_carries_the_current_lr(tmp_path):
    trainer, model, opt = make_trainer(gc.optim.SGD, lr=0.1)
    opt.lr = 0.0
    path = tmp_path / "step.onnx"
    trainer.save(path)
    xb, yb = batch()
    results = run_saved_step(path, {"x": xb, "y": yb})
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(results[name + ".updated"], value, err_msg=name)


def test_trainer_save_matches_torch_step(tmp_path):
    """The saved step, run by plain ONNX Runtime, computes PyTorch's loss and SGD update."""
    trainer, model, _ = make_trainer(gc.optim.SGD, lr=0.1, momentum=0.9)
    _, tmodel = twin_models()
    path = tmp_path / "step.onnx"
    trainer.save(path)
    xb, yb = batch(seed=4)
    results = run_saved_step(path, {"x": xb, "y": yb})
    topt = torch.optim.SGD(tmodel.parameters(), lr=0.1, momentum=0.9)
    tloss = torch.nn.functional.cross_entropy(tmodel(torch.from_numpy(xb)), torch.from_numpy(yb))
    tloss.backward()
    topt.step()
    np.testing.assert_allclose(results["loss"], tloss.item(), rtol=1e-5, atol=1e-6)
    for name, value in tmodel.state_dict().items():
        np.testing.assert_allclose(results[name + ".updated"], value.numpy(), rtol=1e-5, atol=1e-6, err_msg=name)


def test_no_com_microsoft_anywhere_in_training_step(tmp_path):
    trainer, _, _ = make_trainer(gc.optim.AdamW)
    path = tmp_path / "step.onnx"
    trainer.save(path)
    text = path.read_bytes()
    assert b"com.microsoft" not in text
    assert_standard_onnx(onnx.load(str(path)))


# ---- the CLI on exported models ----------------------------------------------------
def run_cli(*argv):
    return subprocess.run([sys.executable, "-m", "graphc", *map(str, argv)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_cli_info_and_run_on_exported_program(mnist_mlp, tmp_path):
    prog, _, path = mnist_mlp
    info = run_cli("info", path)
    assert info.returncode == 0, info.stderr
    for word in ("x", "logits", "Gemm", "Relu", "batch"):
        assert word in info.stdout

    xb = np.random.default_rng(2).random((5, 784), dtype=np.float32)
    np.save(tmp_path / "x.npy", xb)
    out_dir = tmp_path / "out"
    result = run_cli("run", path, "--input", f"x={tmp_path / 'x.npy'}", "--output-dir", out_dir)
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(out_dir / "logits.npy"), prog.run({"x": xb})["logits"])


def test_cli_runs_the_saved_training_step(tmp_path):
    trainer, _, _ = make_trainer(gc.optim.Adam, lr=1e-2)
    path = tmp_path / "step.onnx"
    trainer.save(path)
    xb, yb = batch(seed=3)
    np.save(tmp_path / "x.npy", xb)
    np.save(tmp_path / "y.npy", yb)
    state = run_cli("run", tmp_path / "step.state.onnx", "--output-dir", tmp_path / "state")  # one NAME.npy each
    assert state.returncode == 0, state.stderr
    state_inputs = [arg for name in (o.name for o in onnx.load(str(tmp_path / "step.state.onnx")).graph.output)
                    for arg in ("--input", f"{name}={tmp_path / 'state' / (name + '.npy')}")]
    result = run_cli("run", path, "--input", f"x={tmp_path / 'x.npy'}", "--input", f"y={tmp_path / 'y.npy'}",
                     *state_inputs, "--output-dir", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    np.testing.assert_allclose(np.load(tmp_path / "out" / "loss.npy"), trainer.step({"x": xb, "y": yb}),
                               rtol=1e-6, atol=1e-7)


# ---- models with dropout: the random key travels with the saved step ------------------
def dropout_trainer():
    gc.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 5))
    x = gc.input("x", shape=("batch", 20))
    y = gc.input("y", shape=("batch",), dtype="int64")
    trainer = gc.Trainer(F.cross_entropy(model(x), y), gc.optim.Adam(model.parameters(), lr=1e-2),
                         inputs=[x, y], seed=3)
    return trainer, model


def test_trainer_save_with_dropout_draws_the_masks_of_the_next_step(tmp_path):
    """Regression: the saved step needed an 'rng_key' feed; it now derives it from its seed and step."""
    trainer, model = dropout_trainer()
    for seed in range(2):
        xb, yb = batch(seed=seed)
        trainer.step({"x": xb, "y": yb})
    path = tmp_path / "step.onnx"
    trainer.save(path)
    onnx.checker.check_model(str(path), full_check=True)
    assert_standard_onnx(onnx.load(str(path)))
    xb, yb = batch(seed=5)
    results = run_saved_step(path, {"x": xb, "y": yb})
    assert trainer.step({"x": xb, "y": yb}) == pytest.approx(float(results["loss"]), rel=1e-6, abs=1e-7)
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(results[name + ".updated"], value, rtol=1e-6, atol=1e-7, err_msg=name)


def test_program_of_eval_mode_dropout_model_is_deterministic_and_matches_torch(tmp_path):
    torch.manual_seed(2)
    tmodel = torch.nn.Sequential(torch.nn.Linear(20, 32), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                                 torch.nn.Linear(32, 5)).eval()
    model = nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Dropout(0.5), nn.Linear(32, 5))
    model.load_state_dict(tmodel.state_dict())
    model.eval()
    x = gc.input("x", shape=("batch", 20))
    prog = gc.compile([x], {"logits": model(x)})
    path = tmp_path / "eval.onnx"
    prog.save(path)
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["x"]
    xb, _ = batch()
    (logits,) = plain_session(path).run(None, {"x": xb})
    with torch.no_grad():
        np.testing.assert_allclose(logits, tmodel(torch.from_numpy(xb)).numpy(), rtol=1e-5, atol=1e-5)
