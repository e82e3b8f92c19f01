"""Parity with PyTorch: forward, gradients, losses, optimizer trajectories and gradient clipping.

Every graphc model here starts from a PyTorch model's ``state_dict``, so any
difference comes from graphc's forward, autodiff or optimizer graphs.

Tolerances (float32 on both sides):
- forward and single gradients: rtol 1e-5 / atol 1e-6; ONNX Runtime's Gemm and
  PyTorch's matmul sum in different orders, which moves the last bit or two.
  The 784-wide MLP's logits use atol 1e-5: 784-term dot products near zero
  have absolute rounding differences of a few 1e-6.
- 15-step trajectories: rtol 1e-4 / atol 1e-5 on losses and final parameters;
  those last-bit differences are fed back through 15 updates.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import graphc as gc  # noqa: E402
import graphc.nn.functional as F  # noqa: E402
from graphc import nn  # noqa: E402

TNN = torch.nn
TF = torch.nn.functional

FWD = {"rtol": 1e-5, "atol": 1e-6}
TRAJ = {"rtol": 1e-4, "atol": 1e-5}


# ---- models: the same architecture and parameter names on both sides ----------
class MLP(nn.Module):
    def __init__(self, sizes=(784, 128, 64, 10), act=F.relu):
        super().__init__()
        self.act = act
        self.fc1 = nn.Linear(sizes[0], sizes[1])
        self.fc2 = nn.Linear(sizes[1], sizes[2])
        self.fc3 = nn.Linear(sizes[2], sizes[3])

    def forward(self, x):
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


class TorchMLP(TNN.Module):
    def __init__(self, sizes=(784, 128, 64, 10), act=torch.relu):
        super().__init__()
        self.act = act
        self.fc1 = TNN.Linear(sizes[0], sizes[1])
        self.fc2 = TNN.Linear(sizes[1], sizes[2])
        self.fc3 = TNN.Linear(sizes[2], sizes[3])

    def forward(self, x):
        return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))


SMALL = (20, 16, 12, 5)


def twin_models(sizes=SMALL, seed=0, gc_act=F.relu, torch_act=torch.relu):
    torch.manual_seed(seed)
    tmodel = TorchMLP(sizes, torch_act)
    model = MLP(sizes, gc_act)
    model.load_state_dict(tmodel.state_dict())
    return model, tmodel


def batches(n, sizes=SMALL, batch=16, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((batch, sizes[0])).astype(np.float32),
             rng.integers(0, sizes[-1], batch).astype(np.int64)) for _ in range(n)]


def assert_params_equal(model, tmodel, **tol):
    ours = model.state_dict()
    theirs = tmodel.state_dict()
    assert list(ours) == list(theirs)
    for name, value in theirs.items():
        np.testing.assert_allclose(ours[name], value.detach().numpy(), err_msg=name, **tol)


def gc_loss_and_grads(model, loss, inputs, feeds):
    """Compile ``loss`` and ``gc.grad(loss, params)``; return (loss, {param name: grad})."""
    names = [n for n, _ in model.named_parameters()]
    grads = gc.grad(loss, model.parameters())
    outputs = {"loss": loss, **{f"grad{i}": g for i, g in enumerate(grads)}}
    result = gc.compile(inputs, outputs).run(feeds)
    return result["loss"], {n: result[f"grad{i}"] for i, n in enumerate(names)}


def assert_grads_equal(grads, tmodel, **tol):
    for name, param in tmodel.named_parameters():
        assert grads[name].shape == tuple(param.shape), name
        np.testing.assert_allclose(grads[name], param.grad.numpy(), err_msg=f"d loss / d {name}", **tol)


# ---- the MNIST MLP: forward and gradients ------------------------------------
def test_mlp_forward_and_grads_match_torch():
    model, tmodel = twin_models((784, 128, 64, 10))
    rng = np.random.default_rng(0)
    xb = rng.random((32, 784), dtype=np.float32)
    yb = rng.integers(0, 10, 32).astype(np.int64)

    x = gc.input("x", shape=("batch", 784))
    y = gc.input("y", shape=("batch",), dtype="int64")
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    logits_value = gc.compile([x], {"logits": logits}).run({"x": xb})["logits"]
    loss_value, grads = gc_loss_and_grads(model, loss, [x, y], {"x": xb, "y": yb})

    tlogits = tmodel(torch.from_numpy(xb))
    tloss = TF.cross_entropy(tlogits, torch.from_numpy(yb))
    tloss.backward()
    np.testing.assert_allclose(logits_value, tlogits.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(loss_value, tloss.item(), **FWD)
    assert_grads_equal(grads, tmodel, **FWD)


def test_state_dict_names_shapes_and_dtypes_match_torch():
    model, tmodel = twin_models((784, 128, 64, 10))
    ours, theirs = model.state_dict(), tmodel.state_dict()
    assert list(ours) == list(theirs)
    for name in theirs:
        assert ours[name].shape == tuple(theirs[name].shape)
        assert ours[name].dtype == np.float32


# ---- optimizer trajectories --------------------------------------------------
OPTIMIZER_CASES = {
    "sgd": (gc.optim.SGD, torch.optim.SGD, {"lr": 0.1}),
    "sgd_momentum": (gc.optim.SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9}),
    "sgd_momentum_dampening": (gc.optim.SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "dampening": 0.3}),
    "sgd_nesterov": (gc.optim.SGD, torch.optim.SGD, {"lr": 0.05, "momentum": 0.9, "nesterov": True}),
    "sgd_weight_decay": (gc.optim.SGD, torch.optim.SGD, {"lr": 0.1, "weight_decay": 0.05}),
    "sgd_all": (gc.optim.SGD, torch.optim.SGD,
                {"lr": 0.05, "momentum": 0.8, "nesterov": True, "weight_decay": 0.01}),
    "adam": (gc.optim.Adam, torch.optim.Adam, {"lr": 1e-2}),
    "adam_betas_eps": (gc.optim.Adam, torch.optim.Adam, {"lr": 1e-2, "betas": (0.8, 0.99), "eps": 1e-6}),
    "adam_weight_decay": (gc.optim.Adam, torch.optim.Adam, {"lr": 1e-2, "weight_decay": 0.1}),
    "adam_amsgrad": (gc.optim.Adam, torch.optim.Adam, {"lr": 1e-2, "amsgrad": True}),
    "adamw_default_wd": (gc.optim.AdamW, torch.optim.AdamW, {"lr": 1e-2}),
    "adamw_custom_wd": (gc.optim.AdamW, torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.3}),
    "adamw_amsgrad": (gc.optim.AdamW, torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True}),
    "rmsprop": (gc.optim.RMSprop, torch.optim.RMSprop, {"lr": 1e-3}),
    "rmsprop_momentum": (gc.optim.RMSprop, torch.optim.RMSprop, {"lr": 1e-3, "momentum": 0.9}),
    "rmsprop_centered": (gc.optim.RMSprop, torch.optim.RMSprop, {"lr": 1e-3, "centered": True}),
    "rmsprop_centered_momentum": (gc.optim.RMSprop, torch.optim.RMSprop,
                                  {"lr": 1e-3, "centered": True, "momentum": 0.5, "alpha": 0.9}),
    "rmsprop_weight_decay": (gc.optim.RMSprop, torch.optim.RMSprop, {"lr": 1e-3, "weight_decay": 0.1}),
    "adagrad": (gc.optim.Adagrad, torch.optim.Adagrad, {"lr": 0.05}),
    "adagrad_lr_decay": (gc.optim.Adagrad, torch.optim.Adagrad, {"lr": 0.05, "lr_decay": 0.1}),
    "adagrad_initial_accumulator": (gc.optim.Adagrad, torch.optim.Adagrad,
                                    {"lr": 0.05, "initial_accumulator_value": 0.5}),
    "adagrad_weight_decay": (gc.optim.Adagrad, torch.optim.Adagrad, {"lr": 0.05, "weight_decay": 0.1}),
}


def run_trajectories(gc_opt_cls, torch_opt_cls, hparams, steps=15, lr_schedule=None, max_grad_norm=None,
                     x_scale=1.0, fuse_update=False):
    """Train twin models side by side; returns (graphc losses, torch losses, model, tmodel, trainer, norms)."""
    model, tmodel = twin_models()
    x = gc.input("x", shape=("batch", SMALL[0]))
    y = gc.input("y", shape=("batch",), dtype="int64")
    loss = F.cross_entropy(model(x), y)
    opt = gc_opt_cls(model.parameters(), **hparams)
    trainer = gc.Trainer(loss, opt, inputs=[x, y], provider="cpu", seed=0, max_grad_norm=max_grad_norm,
                         fuse_update=fuse_update)
    topt = torch_opt_cls(tmodel.parameters(), **hparams)

    ours, theirs, norms = [], [], []
    for i, (xb, yb) in enumerate(batches(steps)):
        xb = xb * np.float32(x_scale)
        if lr_schedule and i in lr_schedule:
            opt.lr = lr_schedule[i]
            topt.param_groups[0]["lr"] = lr_schedule[i]
        ours.append(trainer.step({"x": xb, "y": yb}))
        topt.zero_grad()
        tloss = TF.cross_entropy(tmodel(torch.from_numpy(xb)), torch.from_numpy(yb))
        tloss.backward()
        if max_grad_norm is not None:
            norm = torch.nn.utils.clip_grad_norm_(tmodel.parameters(), max_grad_norm)
            norms.append((float(trainer.last_metrics["grad_norm"]), norm.item()))
        topt.step()
        theirs.append(tloss.item())
    return ours, theirs, model, tmodel, trainer, norms


# The flat layout (fuse_update=True) runs the same update functions, so one case per optimizer
# with every state slot switched on covers it; the default per-parameter layout runs every case.
FLAT_CASES = ["sgd_all", "sgd_momentum_dampening", "adam_amsgrad", "adamw_custom_wd",
                   "rmsprop_centered_momentum", "rmsprop_weight_decay", "adagrad_lr_decay",
                   "adagrad_initial_accumulator"]
TRAJECTORY_CASES = [(case, False) for case in OPTIMIZER_CASES] + [(case, True) for case in FLAT_CASES]


@pytest.mark.parametrize("case, fuse_update", TRAJECTORY_CASES,
                         ids=[f"{case}-{'flat' if fuse else 'per_param'}" for case, fuse in TRAJECTORY_CASES])
def test_optimizer_trajectory_matches_torch(case, fuse_update):
    """Both update layouts: one update per parameter (default) and all parameters as one flat vector."""
    gc_cls, torch_cls, hparams = OPTIMIZER_CASES[case]
    ours, theirs, model, tmodel, trainer, _ = run_trajectories(gc_cls, torch_cls, hparams, fuse_update=fuse_update)
    np.testing.assert_allclose(ours, theirs, err_msg=f"{case}: losses", **TRAJ)
    assert_params_equal(model, tmodel, **TRAJ)
    assert trainer.steps_done == 15
    assert ours[-1] < ours[0] + 1.0  # sanity: training did not blow up


@pytest.mark.parametrize("case, fuse_update", [
    ("sgd_momentum", True), ("adam", True), ("adamw_custom_wd", True), ("adagrad_lr_decay", True),
    ("rmsprop_centered", True), ("adam", False), ("adagrad_lr_decay", False)])
def test_changing_lr_between_steps_matches_torch(case, fuse_update):
    gc_cls, torch_cls, hparams = OPTIMIZER_CASES[case]
    lr = hparams["lr"]
    schedule = {4: lr * 0.5, 8: lr * 2.0, 12: 0.0}
    ours, theirs, model, tmodel, _, _ = run_trajectories(gc_cls, torch_cls, hparams, lr_schedule=schedule,
                                                         fuse_update=fuse_update)
    np.testing.assert_allclose(ours, theirs, err_msg=f"{case}: losses", **TRAJ)
    assert_params_equal(model, tmodel, **TRAJ)


def test_lr_zero_freezes_plain_sgd():
    model, _ = twin_models()
    x = gc.input("x", shape=("batch", SMALL[0]))
    y = gc.input("y", shape=("batch",), dtype="int64")
    opt = gc.optim.SGD(model.parameters(), lr=0.1)
    trainer = gc.Trainer(F.cross_entropy(model(x), y), opt, inputs=[x, y])
    (xb, yb), = batches(1)
    opt.lr = 0.0
    before = model.state_dict()
    trainer.step({"x": xb, "y": yb})
    after = model.state_dict()
    for name in before:
        np.testing.assert_array_equal(after[name], before[name])


@pytest.mark.parametrize("gc_cls, torch_cls", [
    (gc.optim.SGD, torch.optim.SGD), (gc.optim.Adam, torch.optim.Adam), (gc.optim.AdamW, torch.optim.AdamW),
    (gc.optim.RMSprop, torch.optim.RMSprop), (gc.optim.Adagrad, torch.optim.Adagrad)])
def test_optimizer_defaults_match_torch(gc_cls, torch_cls):
    ours = gc_cls(MLP(SMALL).parameters()).hparams
    theirs = torch_cls(TorchMLP(SMALL).parameters()).defaults
    for key, value in ours.items():
        assert key in theirs, key
        expected = tuple(theirs[key]) if isinstance(value, tuple) else theirs[key]
        assert value == expected, key


# ---- gradient clipping ---------------------------------------------------------
@pytest.mark.parametrize("fuse_update", [True, False], ids=["flat", "per_param"])
def test_max_grad_norm_matches_clip_grad_norm(fuse_update):
    ours, theirs, model, tmodel, _, norms = run_trajectories(
        gc.optim.SGD, torch.optim.SGD, {"lr": 0.2, "momentum": 0.5}, max_grad_norm=1.0, x_scale=4.0,
        fuse_update=fuse_update)
    np.testing.assert_allclose(ours, theirs, **TRAJ)
    assert_params_equal(model, tmodel, **TRAJ)
    ours_norm, torch_norm = np.array(norms).T
    np.testing.assert_allclose(ours_norm, torch_norm, **TRAJ)
    # the case is only meaningful if clipping both happened and did not happen
    assert (torch_norm > 1.0).any() and (torch_norm < 1.0).any(), torch_norm


def test_grad_norm_metric_without_clipping_effect():
    """A max_grad_norm far above the norm changes nothing, and the reported norm is still exact."""
    clipped = run_trajectories(gc.optim.SGD, torch.optim.SGD, {"lr": 0.1}, steps=3, max_grad_norm=1e6)
    ours, theirs, model, tmodel, _, norms = clipped
    np.testing.assert_allclose(ours, theirs, **TRAJ)
    assert_params_equal(model, tmodel, **TRAJ)
    np.testing.assert_allclose(*np.array(norms).T, **TRAJ)


# ---- other losses and activations: loss value and gradients --------------------
def _regression_case(gc_loss, torch_loss, target_fn, head=None, torch_head=None):
    sizes = (6, 8, 8, 3)
    model, tmodel = twin_models(sizes, gc_act=F.tanh, torch_act=torch.tanh)
    rng = np.random.default_rng(3)
    xb = rng.standard_normal((10, 6)).astype(np.float32)
    tb = target_fn(rng, (10, 3))
    x = gc.input("x", shape=("batch", 6))
    t = gc.input("t", shape=("batch", 3))
    out = model(x)
    out = head(out) if head else out
    loss_value, grads = gc_loss_and_grads(model, gc_loss(out, t), [x, t], {"x": xb, "t": tb})
    tout = tmodel(torch.from_numpy(xb))
    tout = torch_head(tout) if torch_head else tout
    tloss = torch_loss(tout, torch.from_numpy(tb))
    tloss.backward()
    np.testing.assert_allclose(loss_value, tloss.item(), **FWD)
    assert_grads_equal(grads, tmodel, **FWD)


def _normal(rng, shape):
    return rng.standard_normal(shape).astype(np.float32)


def _labels01(rng, shape):
    return rng.integers(0, 2, shape).astype(np.float32)


def _probabilities(rng, shape):
    return rng.random(shape, dtype=np.float32)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_mse_loss_grads_match_torch(reduction):
    _regression_case(lambda a, b: F.mse_loss(a, b, reduction=reduction),
                     lambda a, b: TF.mse_loss(a, b, reduction=reduction), _normal)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_l1_loss_grads_match_torch(reduction):
    _regression_case(lambda a, b: F.l1_loss(a, b, reduction=reduction),
                     lambda a, b: TF.l1_loss(a, b, reduction=reduction), _normal)


@pytest.mark.parametrize("target", [_labels01, _probabilities], ids=["hard", "soft"])
def test_binary_cross_entropy_on_sigmoid_grads_match_torch(target):
    _regression_case(F.binary_cross_entropy, TF.binary_cross_entropy, target,
                     head=F.sigmoid, torch_head=torch.sigmoid)


def _classification_case(gc_loss, torch_loss, labels, classes=5, gc_act=F.relu, torch_act=torch.relu):
    sizes = (7, 9, 8, classes)
    model, tmodel = twin_models(sizes, gc_act=gc_act, torch_act=torch_act)
    rng = np.random.default_rng(5)
    xb = rng.standard_normal((len(labels), 7)).astype(np.float32)
    yb = np.asarray(labels, dtype=np.int64)
    x = gc.input("x", shape=("batch", 7))
    y = gc.input("y", shape=("batch",), dtype="int64")
    loss_value, grads = gc_loss_and_grads(model, gc_loss(model(x), y), [x, y], {"x": xb, "y": yb})
    tloss = torch_loss(tmodel(torch.from_numpy(xb)), torch.from_numpy(yb))
    tloss.backward()
    np.testing.assert_allclose(loss_value, tloss.item(), **FWD)
    assert_grads_equal(grads, tmodel, **FWD)


CLASS_WEIGHTS = np.array([0.5, 2.0, 1.0, 0.1, 3.0], dtype=np.float32)
LABELS = [0, 1, 2, 3, 4, 4, 1, 0, 2, 3, 1, 4]
LABELS_IGNORED = [0, -100, 2, 3, 4, -100, 1, 0, 2, 3, 1, 4]
LABELS_IGNORE_2 = [0, 1, 2, 3, 4, 4, 1, 0, 2, 3, 1, 2]


@pytest.mark.parametrize("labels, kwargs", [
    (LABELS, {}),
    (LABELS, {"weight": CLASS_WEIGHTS}),
    (LABELS_IGNORED, {"weight": CLASS_WEIGHTS}),
    (LABELS_IGNORE_2, {"weight": CLASS_WEIGHTS, "ignore_index": 2}),
    (LABELS_IGNORE_2, {"ignore_index": 2, "reduction": "sum"}),
    (LABELS_IGNORED, {"weight": CLASS_WEIGHTS, "reduction": "sum"}),
], ids=["plain", "weight", "weight_ignore_default", "weight_ignore_2", "ignore_2_sum", "weight_ignore_sum"])
def test_nll_loss_grads_match_torch(labels, kwargs):
    def gc_kwargs():
        out = dict(kwargs)
        if "weight" in out:
            out["weight"] = gc.constant(out["weight"])
        return out

    def torch_kwargs():
        out = dict(kwargs)
        if "weight" in out:
            out["weight"] = torch.from_numpy(out["weight"])
        return out

    _classification_case(lambda z, y: F.nll_loss(F.log_softmax(z, dim=1), y, **gc_kwargs()),
                         lambda z, y: TF.nll_loss(TF.log_softmax(z, dim=1), y, **torch_kwargs()), labels)


@pytest.mark.parametrize("labels, kwargs", [
    (LABELS, {"label_smoothing": 0.1}),
    (LABELS, {"label_smoothing": 0.3, "reduction": "sum"}),
    (LABELS_IGNORED, {"label_smoothing": 0.2}),
    (LABELS_IGNORE_2, {"label_smoothing": 0.2, "ignore_index": 2, "reduction": "sum"}),
], ids=["smooth", "smooth_sum", "smooth_ignore", "smooth_ignore_2_sum"])
def test_cross_entropy_label_smoothing_grads_match_torch(labels, kwargs):
    _classification_case(lambda z, y: F.cross_entropy(z, y, **kwargs),
                         lambda z, y: TF.cross_entropy(z, y, **kwargs), labels)


def test_cross_entropy_with_weight_and_ignore_index_matches_torch():
    _classification_case(lambda z, y: F.cross_entropy(z, y, weight=gc.constant(CLASS_WEIGHTS)),
                         lambda z, y: TF.cross_entropy(z, y, weight=torch.from_numpy(CLASS_WEIGHTS)),
                         LABELS_IGNORED)


def test_cross_entropy_probability_target_matches_torch():
    rng = np.random.default_rng(9)
    probs = rng.random((6, 4), dtype=np.float32)
    probs /= probs.sum(axis=1, keepdims=True)
    sizes = (5, 7, 6, 4)
    model, tmodel = twin_models(sizes)
    xb = rng.standard_normal((6, 5)).astype(np.float32)
    x = gc.input("x", shape=("batch", 5))
    p = gc.input("p", shape=("batch", 4))
    loss_value, grads = gc_loss_and_grads(model, F.cross_entropy(model(x), p), [x, p], {"x": xb, "p": probs})
    tloss = TF.cross_entropy(tmodel(torch.from_numpy(xb)), torch.from_numpy(probs))
    tloss.backward()
    np.testing.assert_allclose(loss_value, tloss.item(), **FWD)
    assert_grads_equal(grads, tmodel, **FWD)


@pytest.mark.parametrize("gc_act, torch_act", [(F.tanh, torch.tanh), (F.sigmoid, torch.sigmoid)],
                         ids=["tanh", "sigmoid"])
def test_tanh_sigmoid_mlp_grads_match_torch(gc_act, torch_act):
    _classification_case(F.cross_entropy, TF.cross_entropy, LABELS, gc_act=gc_act, torch_act=torch_act)


def test_sequential_with_activation_layers_matches_torch():
    torch.manual_seed(4)
    tmodel = TNN.Sequential(TNN.Linear(6, 8), TNN.Tanh(), TNN.Linear(8, 8), TNN.Sigmoid(), TNN.Linear(8, 3))
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Sigmoid(), nn.Linear(8, 3))
    model.load_state_dict(tmodel.state_dict())
    rng = np.random.default_rng(2)
    xb = rng.standard_normal((5, 6)).astype(np.float32)
    yb = np.array([0, 2, 1, 1, 0], dtype=np.int64)
    x = gc.input("x", shape=("batch", 6))
    y = gc.input("y", shape=("batch",), dtype="int64")
    loss_value, grads = gc_loss_and_grads(model, F.cross_entropy(model(x), y), [x, y], {"x": xb, "y": yb})
    tloss = TF.cross_entropy(tmodel(torch.from_numpy(xb)), torch.from_numpy(yb))
    tloss.backward()
    np.testing.assert_allclose(loss_value, tloss.item(), **FWD)
    assert_grads_equal(grads, tmodel, **FWD)


# ---- model shapes beyond the plain MLP ----------------------------------------------
class Tied(nn.Module):
    """fc1 applied twice: its gradient is the sum over both uses."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 6)
        self.fc2 = nn.Linear(6, 3, bias=False)

    def forward(self, x):
        return self.fc2(F.tanh(self.fc1(F.relu(self.fc1(x)))))


class TorchTied(TNN.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = TNN.Linear(6, 6)
        self.fc2 = TNN.Linear(6, 3, bias=False)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(torch.relu(self.fc1(x)))))


def test_reused_layer_and_bias_free_linear_trajectory_matches_torch():
    torch.manual_seed(6)
    tmodel, model = TorchTied(), Tied()
    model.load_state_dict(tmodel.state_dict())
    assert list(model.state_dict()) == ["fc1.weight", "fc1.bias", "fc2.weight"]
    x = gc.input("x", shape=("batch", 6))
    y = gc.input("y", shape=("batch",), dtype="int64")
    trainer = gc.Trainer(F.cross_entropy(model(x), y), gc.optim.Adam(model.parameters(), lr=1e-2),
                         inputs=[x, y])
    topt = torch.optim.Adam(tmodel.parameters(), lr=1e-2)
    rng = np.random.default_rng(6)
    for _ in range(8):
        xb = rng.standard_normal((9, 6)).astype(np.float32)
        yb = rng.integers(0, 3, 9).astype(np.int64)
        topt.zero_grad()
        tloss = TF.cross_entropy(tmodel(torch.from_numpy(xb)), torch.from_numpy(yb))
        tloss.backward()
        topt.step()
        np.testing.assert_allclose(trainer.step({"x": xb, "y": yb}), tloss.item(), **TRAJ)
    assert_params_equal(model, tmodel, **TRAJ)


def test_optimizer_over_a_subset_trains_only_that_subset():
    """Fine-tuning the last layer: torch leaves parameters outside the optimizer untouched."""
    model, tmodel = twin_models()
    x = gc.input("x", shape=("batch", SMALL[0]))
    y = gc.input("y", shape=("batch",), dtype="int64")
    opt = gc.optim.SGD(model.fc3.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    trainer = gc.Trainer(F.cross_entropy(model(x), y), opt, inputs=[x, y])
    topt = torch.optim.SGD(tmodel.fc3.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    frozen = {k: v for k, v in model.state_dict().items() if not k.startswith("fc3.")}
    for xb, yb in batches(5):
        topt.zero_grad()
        tloss = TF.cross_entropy(tmodel(torch.from_numpy(xb)), torch.from_numpy(yb))
        tloss.backward()
        topt.step()
        np.testing.assert_allclose(trainer.step({"x": xb, "y": yb}), tloss.item(), **TRAJ)
    assert_params_equal(model, tmodel, **TRAJ)
    after = model.state_dict()
    for name, value in frozen.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)


def test_linear_on_3d_input_grads_match_torch():
    """Linear over (N, T, F) goes through MatMul with a broadcast weight, not Gemm."""
    torch.manual_seed(8)
    tlayer = TNN.Linear(5, 4)
    layer = nn.Linear(5, 4)
    layer.load_state_dict(tlayer.state_dict())
    rng = np.random.default_rng(8)
    xb = rng.standard_normal((3, 7, 5)).astype(np.float32)
    tb = rng.standard_normal((3, 7, 4)).astype(np.float32)
    x = gc.input("x", shape=("batch", 7, 5))
    t = gc.input("t", shape=("batch", 7, 4))
    loss_value, grads = gc_loss_and_grads(layer, F.mse_loss(F.tanh(layer(x)), t), [x, t], {"x": xb, "t": tb})
    tloss = TF.mse_loss(torch.tanh(tlayer(torch.from_numpy(xb))), torch.from_numpy(tb))
    tloss.backward()
    np.testing.assert_allclose(loss_value, tloss.item(), **FWD)
    assert_grads_equal(grads, tlayer, **FWD)


@pytest.mark.parametrize("kwargs", [{}, {"label_smoothing": 0.1}, {"weight": CLASS_WEIGHTS[:4]}],
                         ids=["plain", "smooth", "weight"])
def test_cross_entropy_over_a_sequence_matches_torch(kwargs):
    """Logits (N, C, L) and targets (N, L), PyTorch's K-dimensional form."""
    torch.manual_seed(9)
    tlayer = TNN.Linear(6, 4)
    layer = nn.Linear(6, 4)
    layer.load_state_dict(tlayer.state_dict())
    rng = np.random.default_rng(9)
    xb = rng.standard_normal((3, 5, 6)).astype(np.float32)
    yb = rng.integers(0, 4, (3, 5)).astype(np.int64)
    yb[0, 1] = -100
    x = gc.input("x", shape=("batch", 5, 6))
    y = gc.input("y", shape=("batch", 5), dtype="int64")
    gc_kwargs = {k: gc.constant(v) if k == "weight" else v for k, v in kwargs.items()}
    torch_kwargs = {k: torch.from_numpy(v) if k == "weight" else v for k, v in kwargs.items()}
    logits = layer(x).permute(0, 2, 1)
    loss_value, grads = gc_loss_and_grads(layer, F.cross_entropy(logits, y, **gc_kwargs), [x, y],
                                          {"x": xb, "y": yb})
    tloss = TF.cross_entropy(tlayer(torch.from_numpy(xb)).permute(0, 2, 1), torch.from_numpy(yb), **torch_kwargs)
    tloss.backward()
    np.testing.assert_allclose(loss_value, tloss.item(), **FWD)
    assert_grads_equal(grads, tlayer, **FWD)


# ---- hyperparameter checks: what torch.optim refuses, gc.optim refuses -----------------
@pytest.mark.parametrize("name, hparams", [
    ("SGD", {"lr": -0.1}), ("SGD", {"lr": 0.1, "momentum": -0.5}), ("SGD", {"lr": 0.1, "weight_decay": -1.0}),
    ("SGD", {"lr": 0.1, "nesterov": True}), ("SGD", {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True}),
    ("Adam", {"betas": (1.0, 0.999)}), ("Adam", {"betas": (0.9, 1.5)}), ("Adam", {"eps": -1e-8}),
    ("Adam", {"weight_decay": -0.1}), ("AdamW", {"betas": (-0.1, 0.9)}),
    ("RMSprop", {"alpha": -0.5}), ("RMSprop", {"momentum": -1.0}), ("RMSprop", {"eps": -1.0}),
    ("Adagrad", {"lr_decay": -1.0}), ("Adagrad", {"initial_accumulator_value": -1.0}), ("Adagrad", {"eps": -1.0}),
])
def test_invalid_hyperparameters_are_refused_like_torch(name, hparams):
    with pytest.raises(ValueError):
        getattr(torch.optim, name)([TNN.Parameter(torch.zeros(2))], **hparams)
    with pytest.raises(ValueError):
        getattr(gc.optim, name)(nn.Linear(2, 2).parameters(), **hparams)


@pytest.mark.parametrize("name, hparams", [
    ("SGD", {"lr": 0.0, "momentum": 0.0}), ("Adam", {"betas": (0.0, 0.0), "eps": 0.0}),
    ("RMSprop", {"alpha": 0.0}), ("Adagrad", {"eps": 0.0}),
])
def test_boundary_hyperparameters_are_accepted_like_torch(name, hparams):
    getattr(torch.optim, name)([TNN.Parameter(torch.zeros(2))], **hparams)
    getattr(gc.optim, name)(nn.Linear(2, 2).parameters(), **hparams)


# ---- more loss forms -------------------------------------------------------------------
@pytest.mark.parametrize("case", ["ce_none_sum", "mse_none_mean", "softmax_mse", "bce_weight", "bce_sum"])
def test_more_loss_forms_match_torch(case):
    rng = np.random.default_rng(11)
    sizes = (6, 8, 8, 3)
    model, tmodel = twin_models(sizes)
    xb = rng.standard_normal((10, 6)).astype(np.float32)
    yb = rng.integers(0, 3, 10).astype(np.int64)
    tb = rng.random((10, 3), dtype=np.float32)
    wb = rng.random((10, 3), dtype=np.float32)
    x = gc.input("x", shape=("batch", 6))
    y = gc.input("y", shape=("batch",), dtype="int64")
    t = gc.input("t", shape=("batch", 3))
    w = gc.input("w", shape=("batch", 3))
    txb, tyb, ttb, twb = map(torch.from_numpy, (xb, yb, tb, wb))
    z, tz = model(x), tmodel(txb)
    if case == "ce_none_sum":
        loss, tloss = F.cross_entropy(z, y, reduction="none").sum(), TF.cross_entropy(tz, tyb, reduction="none").sum()
    elif case == "mse_none_mean":
        loss, tloss = F.mse_loss(z, t, reduction="none").mean(), TF.mse_loss(tz, ttb, reduction="none").mean()
    elif case == "softmax_mse":
        loss, tloss = F.mse_loss(F.softmax(z, dim=1), t), TF.mse_loss(TF.softmax(tz, dim=1), ttb)
    elif case == "bce_weight":
        loss = F.binary_cross_entropy(F.sigmoid(z), t, weight=w)
        tloss = TF.binary_cross_entropy(torch.sigmoid(tz), ttb, weight=twb)
    else:
        loss = F.binary_cross_entropy(F.sigmoid(z), t, reduction="sum")
        tloss = TF.binary_cross_entropy(torch.sigmoid(tz), ttb, reduction="sum")
    loss_value, grads = gc_loss_and_grads(model, loss, [x, y, t, w], {"x": xb, "y": yb, "t": tb, "w": wb})
    tloss.backward()
    np.testing.assert_allclose(loss_value, tloss.item(), **FWD)
    assert_grads_equal(grads, tmodel, **FWD)


def test_cross_entropy_label_smoothing_with_weights_matches_torch():
    kwargs = {"label_smoothing": 0.1}
    _classification_case(lambda z, y: F.cross_entropy(z, y, weight=gc.constant(CLASS_WEIGHTS), **kwargs),
                         lambda z, y: TF.cross_entropy(z, y, weight=torch.from_numpy(CLASS_WEIGHTS), **kwargs),
                         LABELS_IGNORED)
