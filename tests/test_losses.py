"""Loss modules (nn.CrossEntropyLoss, NLLLoss, MSELoss, L1Loss, BCELoss, BCEWithLogitsLoss) and
F.binary_cross_entropy_with_logits: values and gradients against PyTorch in float64."""

import numpy as np
import pytest

import graphc as gc
import graphc.nn.functional as F
from graphc import nn

torch = pytest.importorskip("torch")
TF = torch.nn.functional

W3 = np.array([0.5, 2.0, 1.25])  # exactly representable in float32 (the buffers' dtype)


def _run(build, torch_build, arrays: dict, wrt: tuple, dtype="float64", rtol=1e-10, atol=1e-12):
    """Loss value and d loss / d each of ``wrt`` from graphc (ONNX Runtime) and from torch, compared.

    A non-scalar loss (reduction="none") is contracted with fixed random cotangents first.
    """
    rng = np.random.default_rng(1)
    inputs = {k: gc.input(k, a.shape, str(a.dtype) if a.dtype.kind in "iu" else dtype) for k, a in arrays.items()}
    loss = build(**inputs)
    cot = rng.normal(size=loss.shape) if loss.shape else None
    scalar = loss if cot is None else (loss * gc.constant(cot, dtype=dtype)).sum()
    grads = gc.grad(scalar, [inputs[k] for k in wrt])
    prog = gc.compile(inputs=list(inputs.values()),
                      outputs={"loss": loss, **{f"d_{k}": g for k, g in zip(wrt, grads)}})
    feeds = {k: a.astype(dtype) if a.dtype.kind == "f" else a for k, a in arrays.items()}
    ours = prog.run(feeds)

    tin = {k: torch.tensor(a, requires_grad=k in wrt) for k, a in arrays.items()}
    tloss = torch_build(**tin)
    tscalar = tloss if cot is None else (tloss * torch.tensor(cot)).sum()
    tscalar.backward()
    np.testing.assert_allclose(ours["loss"], tloss.detach().numpy(), rtol=rtol, atol=atol, err_msg="loss")
    for k in wrt:
        np.testing.assert_allclose(ours[f"d_{k}"], tin[k].grad.numpy(), rtol=rtol, atol=atol, err_msg=f"d/d{k}")
    return ours


def _logits(shape=(5, 3), seed=0):
    return np.random.default_rng(seed).normal(size=shape)


TARGETS = np.array([0, 2, 1, 2, 0])
TARGETS_IGNORED = np.array([0, -100, 1, 2, -100])


@pytest.mark.parametrize("kwargs, target", [
    (dict(), TARGETS),
    (dict(reduction="sum"), TARGETS),
    (dict(reduction="none"), TARGETS),
    (dict(weight=W3), TARGETS_IGNORED),
    (dict(weight=W3, label_smoothing=0.2), TARGETS_IGNORED),
    (dict(ignore_index=1, label_smoothing=0.1, reduction="sum"), TARGETS),
    (dict(weight=W3, reduction="none", label_smoothing=0.3), TARGETS_IGNORED),
    (dict(size_average=False), TARGETS),
    (dict(reduce=False), TARGETS),
])
@pytest.mark.filterwarnings("ignore:size_average and reduce args will be deprecated")
def test_cross_entropy_loss_module(kwargs, target):
    tkw = {k: torch.tensor(v) if k == "weight" else v for k, v in kwargs.items()}
    _run(lambda x, t: nn.CrossEntropyLoss(**kwargs)(x, t),
         lambda x, t: torch.nn.CrossEntropyLoss(**tkw)(x, t),
         {"x": _logits(), "t": target}, wrt=("x",))


def test_cross_entropy_loss_module_spatial_and_probability_targets():
    x = _logits((2, 3, 4))
    t = np.random.default_rng(2).integers(0, 3, (2, 4))
    _run(lambda x, t: nn.CrossEntropyLoss(weight=W3)(x, t),
         lambda x, t: torch.nn.CrossEntropyLoss(weight=torch.tensor(W3))(x, t), {"x": x, "t": t}, wrt=("x",))
    p = np.exp(_logits(seed=3))
    p /= p.sum(1, keepdims=True)
    _run(lambda x, p: nn.CrossEntropyLoss(label_smoothing=0.1)(x, p),
         lambda x, p: torch.nn.CrossEntropyLoss(label_smoothing=0.1)(x, p), {"x": _logits(), "p": p}, wrt=("x", "p"))


@pytest.mark.parametrize("kwargs, target", [
    (dict(), TARGETS_IGNORED), (dict(weight=W3, reduction="sum"), TARGETS_IGNORED), (dict(ignore_index=2), TARGETS),
    (dict(weight=W3, reduction="none"), TARGETS_IGNORED)])
def test_nll_loss_module(kwargs, target):
    logp = np.log(np.random.default_rng(4).dirichlet(np.ones(3), 5))
    tkw = {k: torch.tensor(v) if k == "weight" else v for k, v in kwargs.items()}
    _run(lambda x, t: nn.NLLLoss(**kwargs)(x, t), lambda x, t: torch.nn.NLLLoss(**tkw)(x, t),
         {"x": logp, "t": target}, wrt=("x",))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ours, theirs", [(nn.MSELoss, torch.nn.MSELoss), (nn.L1Loss, torch.nn.L1Loss)])
def test_mse_and_l1_loss_modules(ours, theirs, reduction):
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))  # |x - y| is never 0: no Abs kink
    _run(lambda x, y: ours(reduction=reduction)(x, y), lambda x, y: theirs(reduction=reduction)(x, y),
         {"x": x, "y": y}, wrt=("x", "y"))


@pytest.mark.parametrize("kwargs", [dict(), dict(reduction="sum"), dict(reduction="none"),
                                    dict(weight=np.array([[1.0, 0.5, 2.0]]))])
def test_bce_loss_module(kwargs):
    rng = np.random.default_rng(6)
    p, t = rng.uniform(0.05, 0.95, (4, 3)), rng.uniform(0, 1, (4, 3))
    tkw = {k: torch.tensor(v) if k == "weight" else v for k, v in kwargs.items()}
    _run(lambda p, t: nn.BCELoss(**kwargs)(p, t), lambda p, t: torch.nn.BCELoss(**tkw)(p, t),
         {"p": p, "t": t}, wrt=("p", "t"))


BCE_LOGITS_CASES = [
    dict(),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(pos_weight=np.array([3.0, 0.5, 1.0])),
    dict(pos_weight=np.array([2.0, 0.25, 4.0]), weight=np.array([[1.0], [0.5], [2.0], [0.0]]), reduction="sum"),
    dict(weight=np.array([0.5, 1.5, 1.0]), reduction="none"),
]


@pytest.mark.parametrize("kwargs", BCE_LOGITS_CASES)
def test_bce_with_logits_loss_module(kwargs):
    rng = np.random.default_rng(7)
    x, t = rng.normal(0, 3, (4, 3)), rng.uniform(0, 1, (4, 3))
    x[0, 0] = 0.0  # softplus's slope at exactly 0 must be -1/2, not a kink's 0
    tkw = {k: torch.tensor(v) for k, v in kwargs.items() if k != "reduction"}
    tkw.update({k: v for k, v in kwargs.items() if k == "reduction"})
    _run(lambda x, t: nn.BCEWithLogitsLoss(**kwargs)(x, t), lambda x, t: torch.nn.BCEWithLogitsLoss(**tkw)(x, t),
         {"x": x, "t": t}, wrt=("x", "t"))


@pytest.mark.parametrize("kwargs", BCE_LOGITS_CASES)
def test_functional_bce_with_logits_takes_tensor_weights(kwargs):
    rng = np.random.default_rng(8)
    x, t = rng.normal(0, 2, (4, 3)), (rng.uniform(0, 1, (4, 3)) > 0.5).astype(np.float64)
    arrays = {"x": x, "t": t, **{k: v for k, v in kwargs.items() if k != "reduction"}}
    red = kwargs.get("reduction", "mean")
    _run(lambda red=red, **a: F.binary_cross_entropy_with_logits(a["x"], a["t"], a.get("weight"), reduction=red,
                                                                 pos_weight=a.get("pos_weight")),
         lambda red=red, **a: TF.binary_cross_entropy_with_logits(a["x"], a["t"], a.get("weight"), reduction=red,
                                                                  pos_weight=a.get("pos_weight")),
         arrays, wrt=("x", "t"))  # torch differentiates neither weight nor pos_weight


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bce_with_logits_is_stable_for_huge_logits(dtype):
    """Where a naive log(sigmoid(x)) gives inf/NaN, the loss and gradient stay finite and equal PyTorch's."""
    x = np.array([[-1e4, -100.0, -30.0, 0.0, 30.0, 100.0, 1e4]] * 2)
    t = np.stack([np.zeros(7), np.ones(7)])
    ours = _run(lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction="none", pos_weight=np.array(2.0)),
                lambda x, t: TF.binary_cross_entropy_with_logits(x, t, reduction="none",
                                                                 pos_weight=torch.tensor(2.0)),
                {"x": x, "t": t}, wrt=("x",), dtype=dtype, rtol=1e-6, atol=1e-6)
    assert np.all(np.isfinite(ours["loss"])) and np.all(np.isfinite(ours["d_x"]))
    assert ours["loss"][1, 0] == pytest.approx(2.0 * 1e4)  # pos_weight * softplus(1e4)


def test_loss_weight_is_a_buffer_named_as_in_torch():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.criterion = nn.CrossEntropyLoss(weight=[1.0, 2.0, 3.0])
            self.bce = nn.BCEWithLogitsLoss(pos_weight=np.ones(3))

    class TorchModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 3)
            self.criterion = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 3.0]))
            self.bce = torch.nn.BCEWithLogitsLoss(pos_weight=torch.ones(3))

    ours, theirs = Model().state_dict(), TorchModel().state_dict()
    assert list(ours) == list(theirs)
    np.testing.assert_array_equal(ours["criterion.weight"], theirs["criterion.weight"].numpy())
    assert ours["criterion.weight"].dtype == np.float32
    assert [n for n, _ in Model().named_parameters()] == ["fc.weight", "fc.bias"]  # buffers are not trained


def test_a_trainer_trains_with_a_loss_module_like_torch():
    rng = np.random.default_rng(9)
    X, Y = rng.normal(size=(16, 4)).astype(np.float32), rng.integers(0, 3, 16)
    model, tmodel = nn.Linear(4, 3), torch.nn.Linear(4, 3)
    with torch.no_grad():
        tmodel.weight.copy_(torch.from_numpy(model.weight.data))
        tmodel.bias.copy_(torch.from_numpy(model.bias.data))
    x, y = gc.input("x", ("batch", 4)), gc.input("y", ("batch",), "int64")
    criterion = nn.CrossEntropyLoss(weight=W3, label_smoothing=0.1)
    trainer = gc.Trainer(criterion(model(x), y), gc.optim.SGD(model.parameters(), lr=0.5), inputs=[x, y])
    tcrit = torch.nn.CrossEntropyLoss(weight=torch.tensor(W3, dtype=torch.float32), label_smoothing=0.1)
    topt = torch.optim.SGD(tmodel.parameters(), lr=0.5)
    for _ in range(5):
        ours = trainer.step({"x": X, "y": Y})
        topt.zero_grad()
        theirs = tcrit(tmodel(torch.from_numpy(X)), torch.from_numpy(Y))
        theirs.backward()
        topt.step()
        assert ours == pytest.approx(theirs.item(), rel=1e-5)
    np.testing.assert_allclose(model.weight.data, tmodel.weight.detach().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("build, error, message", [
    (lambda: nn.MSELoss(reduction="avg"), ValueError, r"MSELoss: reduction must be one of .*got 'avg'"),
    (lambda: nn.CrossEntropyLoss(label_smoothing=1.5), ValueError, r"label_smoothing must be in \[0, 1\], got 1.5"),
    (lambda: nn.CrossEntropyLoss(weight=np.ones((3, 1))), ValueError, r"weight must be 1-D .*got shape \(3, 1\)"),
    (lambda: nn.NLLLoss(weight=[1.0, float("nan")]), ValueError, "weight must hold finite numbers"),
    (lambda: nn.BCEWithLogitsLoss(pos_weight="big"), ValueError, "pos_weight must hold finite numbers"),
])
def test_bad_constructor_arguments(build, error, message):
    with pytest.raises(error, match=message):
        build()


def test_bad_call_arguments_name_the_op_and_shapes():
    z, y = gc.input("z", ("batch", 3)), gc.input("y", ("batch",), "int64")
    with pytest.raises(gc.ShapeError, match=r"cross_entropy: weight must be \(3,\).*got \(2,\)"):
        nn.CrossEntropyLoss(weight=[1.0, 2.0])(z, y)
    with pytest.raises(gc.ShapeError, match=r"nll_loss: weight must be \(3,\).*got \(4,\)"):
        nn.NLLLoss(weight=np.ones(4))(z, y)
    with pytest.raises(gc.ShapeError, match=r"binary_cross_entropy_with_logits: input \(batch, 3\) and target "
                                            r"\(batch, 1\) differ"):
        nn.BCEWithLogitsLoss()(z, gc.input("t", ("batch", 1)))
    with pytest.raises(gc.ShapeError, match="must be floating point .* got float32 and int64"):
        nn.BCEWithLogitsLoss()(z, gc.input("t", ("batch", 3), "int64"))
