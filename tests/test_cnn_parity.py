"""Parity with PyTorch for the tutorial CNNs: forward, gradients, Adam trajectories, BatchNorm, eval export.

Every graphc model starts from a PyTorch model's ``state_dict``, so any difference
comes from graphc's forward, autodiff or optimizer graphs.

- (a) the CIFAR-10 tutorial LeNet (3x32x32);
- (b) the padded CNN (conv-BN-relu-pool twice, dropout, linear), with graphc's
  dropout mask applied to the PyTorch model by multiplication, BatchNorm
  running statistics after training, and the eval-mode export run by a plain
  ``onnxruntime.InferenceSession``;
- (c) strided, grouped, dilated and depthwise convolutions and pooling
  (avg-pool ceil_mode / count_include_pad, max-pool padding / ceil_mode):
  gradients of input, weight and bias.

Tolerances (float32 on both sides): forward and gradients rtol 1e-4 / atol 1e-5:
ONNX Runtime's and PyTorch's convolutions sum in different orders. 8-step Adam
trajectories use the same tolerance on losses and final parameters, except that
after LeNet's steps a few (<= 0.1%) parameter values whose gradient was at
float-noise level may differ by up to lr / 10 (see ``assert_state_equal``).
The conv-before-BN layers use
``bias=False`` (as real CNNs do): a bias just before BatchNorm has a zero true
gradient, and Adam would amplify float noise there differently on each side.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

torch = pytest.importorskip("torch")

import graphc as gc  # noqa: E402
import graphc.nn.functional as F  # noqa: E402
from graphc import nn  # noqa: E402
from graphc.random import RNG_KEY, key_for_step  # noqa: E402

TNN = torch.nn
TF = torch.nn.functional

TOL = {"rtol": 1e-4, "atol": 1e-5}
SEED = 0
STEPS = 8
LR = 1e-3


# ---- models: the same architecture and parameter names on both sides ----------
class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class TorchLeNet(TNN.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = TNN.Conv2d(3, 6, 5)
        self.pool = TNN.MaxPool2d(2, 2)
        self.conv2 = TNN.Conv2d(6, 16, 5)
        self.fc1 = TNN.Linear(16 * 5 * 5, 120)
        self.fc2 = TNN.Linear(120, 84)
        self.fc3 = TNN.Linear(84, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.conv1(x)))
        x = self.pool(torch.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))


CNN_SIZE = 16  # spatial size of the padded CNN's input (32 in the benchmark; 16 keeps the test fast)
CNN_BATCH = 8


class PaddedCNN(nn.Module):
    def __init__(self, size=CNN_SIZE):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(64)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(0.5)
        self.fc = nn.Linear(64 * (size // 4) ** 2, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        return self.fc(self.dropout(x.flatten(1)))


class TorchPaddedCNN(TNN.Module):
    """The same network; in training mode dropout is a given mask (graphc's), applied by multiplication."""

    def __init__(self, size=CNN_SIZE):
        super().__init__()
        self.conv1 = TNN.Conv2d(3, 32, 3, padding=1, bias=False)
        self.bn1 = TNN.BatchNorm2d(32)
        self.conv2 = TNN.Conv2d(32, 64, 3, padding=1, bias=False)
        self.bn2 = TNN.BatchNorm2d(64)
        self.pool = TNN.MaxPool2d(2)
        self.fc = TNN.Linear(64 * (size // 4) ** 2, 10)

    def forward(self, x, mask=None):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        x = self.pool(torch.relu(self.bn2(self.conv2(x))))
        x = torch.flatten(x, 1)
        if self.training:
            x = x * mask  # mask already holds 0 or 1/(1-p), as graphc's dropout does
        return self.fc(x)


def twins(gc_cls, torch_cls, seed=SEED):
    torch.manual_seed(seed)
    tmodel = torch_cls()
    # Random BN affine parameters, so a mix-up of weight/bias/statistics cannot pass by symmetry.
    with torch.no_grad():
        for module in tmodel.modules():
            if isinstance(module, TNN.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.5, 0.5)
    model = gc_cls()
    model.load_state_dict(tmodel.state_dict())
    return model, tmodel


def image_batches(n, shape, batch, seed=1):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((batch, *shape)).astype(np.float32), rng.integers(0, 10, batch).astype(np.int64))
            for _ in range(n)]


def dropout_mask(shape, p, seed, step):
    """graphc's dropout mask (0 or 1/(1-p)) at training step ``step``: valid for models with ONE dropout layer."""
    x = gc.input("x", shape=shape)
    program = gc.compile([x], {"m": F.dropout(x, p)}, allow_random=True)
    return program.run({"x": np.ones(shape, np.float32), RNG_KEY: key_for_step(seed, step)})["m"]


def gc_loss_and_grads(model, loss, inputs, feeds, allow_random=False):
    names = [n for n, _ in model.named_parameters()]
    grads = gc.grad(loss, model.parameters())
    outputs = {"loss": loss, **{f"grad{i}": g for i, g in enumerate(grads)}}
    result = gc.compile(inputs, outputs, allow_random=allow_random, allow_batch_statistics=True).run(feeds)
    return result["loss"], {n: result[f"grad{i}"] for i, n in enumerate(names)}


def assert_grads_equal(grads, tmodel, **tol):
    tnames = [n for n, _ in tmodel.named_parameters()]
    assert sorted(grads) == sorted(tnames)
    for name, param in tmodel.named_parameters():
        assert grads[name].shape == tuple(param.shape), name
        np.testing.assert_allclose(grads[name], param.grad.numpy(), err_msg=f"d loss / d {name}", **tol)


def assert_state_equal(model, tmodel, noise_atol=None, **tol):
    """Every value within ``tol``; with ``noise_atol``, a few elements (<= 0.1%) may only be within that.

    Why the second level after Adam steps: Adam moves a parameter by about
    lr * g / (|g| + eps) whatever g's size, so an element whose gradient is at
    float-noise level in some step (a ReLU input that is positive by 1e-8, the
    sum of 150 conv terms of size 0.1) moves by a noise-dependent fraction of lr.
    """
    ours, theirs = model.state_dict(), tmodel.state_dict()
    assert sorted(ours) == sorted(theirs)
    for name, value in theirs.items():
        value = value.detach().numpy()
        assert ours[name].shape == value.shape, name
        if value.dtype.kind == "i":
            np.testing.assert_array_equal(ours[name], value, err_msg=name)
            continue
        if noise_atol is None:
            np.testing.assert_allclose(ours[name], value, err_msg=name, **tol)
            continue
        off = ~np.isclose(ours[name], value, **tol)
        assert off.mean() <= 1e-3, f"{name}: {off.sum()} of {off.size} values differ beyond {tol}"
        np.testing.assert_allclose(ours[name], value, rtol=0, atol=noise_atol, err_msg=name)


# ---- (a) LeNet ---------------------------------------------------------------------
def test_lenet_forward_and_grads_match_torch():
    model, tmodel = twins(LeNet, TorchLeNet)
    ((xb, yb),) = image_batches(1, (3, 32, 32), 16)
    x = gc.input("x", shape=("batch", 3, 32, 32))
    y = gc.input("y", shape=("batch",), dtype="int64")
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    logits_value = gc.compile([x], {"logits": logits}).run({"x": xb})["logits"]
    loss_value, grads = gc_loss_and_grads(model, loss, [x, y], {"x": xb, "y": yb})

    tlogits = tmodel(torch.from_numpy(xb))
    tloss = TF.cross_entropy(tlogits, torch.from_numpy(yb))
    tloss.backward()
    np.testing.assert_allclose(logits_value, tlogits.detach().numpy(), **TOL)
    np.testing.assert_allclose(loss_value, tloss.item(), **TOL)
    assert_grads_equal(grads, tmodel, **TOL)


def test_lenet_adam_trajectory_matches_torch():
    model, tmodel = twins(LeNet, TorchLeNet)
    x = gc.input("x", shape=("batch", 3, 32, 32))
    y = gc.input("y", shape=("batch",), dtype="int64")
    loss = F.cross_entropy(model(x), y)
    trainer = gc.Trainer(loss, gc.optim.Adam(model.parameters(), lr=LR), inputs=[x, y], seed=SEED)
    topt = torch.optim.Adam(tmodel.parameters(), lr=LR)
    ours, theirs = [], []
    for xb, yb in image_batches(STEPS, (3, 32, 32), 16):
        ours.append(trainer.step({"x": xb, "y": yb}))
        topt.zero_grad()
        tloss = TF.cross_entropy(tmodel(torch.from_numpy(xb)), torch.from_numpy(yb))
        tloss.backward()
        topt.step()
        theirs.append(tloss.item())
    np.testing.assert_allclose(ours, theirs, **TOL)
    # fc1.weight[13, 366] gets a gradient of 5e-8 in one step (unit 13 is dead otherwise), so its Adam
    # step is noise-driven: 1.7e-5 apart after 8 steps. Everything else is within TOL.
    assert_state_equal(model, tmodel, noise_atol=LR / 10, **TOL)


# ---- (b) the padded CNN: BatchNorm, dropout, eval export ----------------------------
CNN_SHAPE = (3, CNN_SIZE, CNN_SIZE)
FLAT = (CNN_BATCH, 64 * (CNN_SIZE // 4) ** 2)


def test_padded_cnn_forward_and_grads_match_torch():
    model, tmodel = twins(PaddedCNN, TorchPaddedCNN)
    ((xb, yb),) = image_batches(1, CNN_SHAPE, CNN_BATCH)
    x = gc.input("x", shape=("batch", *CNN_SHAPE))
    y = gc.input("y", shape=("batch",), dtype="int64")
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    feeds = {"x": xb, "y": yb, RNG_KEY: key_for_step(SEED, 3)}
    logits_value = gc.compile([x], {"logits": logits}, allow_random=True, allow_batch_statistics=True).run(
        {"x": xb, RNG_KEY: feeds[RNG_KEY]})["logits"]
    loss_value, grads = gc_loss_and_grads(model, loss, [x, y], feeds, allow_random=True)

    mask = torch.from_numpy(dropout_mask(FLAT, 0.5, SEED, 3))
    assert 0.3 < (mask != 0).float().mean().item() < 0.7
    tlogits = tmodel(torch.from_numpy(xb), mask)
    tloss = TF.cross_entropy(tlogits, torch.from_numpy(yb))
    tloss.backward()
    np.testing.assert_allclose(logits_value, tlogits.detach().numpy(), **TOL)
    np.testing.assert_allclose(loss_value, tloss.item(), **TOL)
    assert_grads_equal(grads, tmodel, **TOL)


def test_padded_cnn_adam_trajectory_running_stats_and_eval_export_match_torch(tmp_path):
    model, tmodel = twins(PaddedCNN, TorchPaddedCNN)
    x = gc.input("x", shape=("batch", *CNN_SHAPE))
    y = gc.input("y", shape=("batch",), dtype="int64")
    loss = F.cross_entropy(model(x), y)
    trainer = gc.Trainer(loss, gc.optim.Adam(model.parameters(), lr=LR), inputs=[x, y], seed=SEED)
    topt = torch.optim.Adam(tmodel.parameters(), lr=LR)
    ours, theirs = [], []
    for step, (xb, yb) in enumerate(image_batches(STEPS, CNN_SHAPE, CNN_BATCH)):
        ours.append(trainer.step({"x": xb, "y": yb}))
        mask = torch.from_numpy(dropout_mask(FLAT, 0.5, SEED, step))
        topt.zero_grad()
        tloss = TF.cross_entropy(tmodel(torch.from_numpy(xb), mask), torch.from_numpy(yb))
        tloss.backward()
        topt.step()
        theirs.append(tloss.item())
    np.testing.assert_allclose(ours, theirs, **TOL)

    # Parameters, running_mean / running_var (momentum, unbiased variance) and num_batches_tracked.
    state = model.state_dict()
    assert int(state["bn1.num_batches_tracked"]) == STEPS
    assert not np.allclose(state["bn2.running_var"], 1.0)
    assert_state_equal(model, tmodel, **TOL)

    # The eval graph (running statistics, no dropout), exported and run by a plain InferenceSession.
    model.eval()
    tmodel.eval()
    eval_logits = model(x)
    path = tmp_path / "cnn_eval.onnx"
    gc.compile([x], {"logits": eval_logits}).save(path)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert [i.name for i in proto.graph.input] == ["x"]
    assert "BatchNormalization" not in {n.op_type for n in proto.graph.node}  # folded into the Conv on export
    xb = np.random.default_rng(7).standard_normal((5, *CNN_SHAPE)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"x": xb})
    with torch.no_grad():
        expected = tmodel(torch.from_numpy(xb)).numpy()
    np.testing.assert_allclose(got, expected, **TOL)


# ---- (c) strided / grouped / dilated convolutions, pooling ---------------------------
CONV_CASES = {
    # name: (in, out, kernel, stride, padding, dilation, groups, input H, W)
    "stride2_pad1": (4, 6, 3, 2, 1, 1, 1, 9, 9),
    "stride3_uneven": (3, 4, 3, 3, 0, 1, 1, 11, 10),  # rows/cols past the last window get zero gradient
    "groups2_dilation2": (4, 6, 3, 1, 2, 2, 2, 8, 8),
    "depthwise_stride2": (4, 8, 3, 2, 1, 1, 4, 8, 7),
    "rect_mixed": (3, 4, (3, 2), (2, 1), (1, 0), (1, 2), 1, 9, 8),
    "dilated_strided_groups": (6, 6, 3, 2, 2, 2, 3, 10, 11),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_configurations_grads_match_torch(case):
    cin, cout, k, s, p, d, g, h, w = CONV_CASES[case]
    torch.manual_seed(0)
    tconv = TNN.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g)
    conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, dilation=d, groups=g)
    conv.load_state_dict(tconv.state_dict())
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((2, cin, h, w)).astype(np.float32)

    txb = torch.from_numpy(xb).requires_grad_()
    tout = tconv(txb)
    cot = rng.standard_normal(tuple(tout.shape)).astype(np.float32)
    (tout * torch.from_numpy(cot)).sum().backward()

    x = gc.input("x", shape=("batch", cin, h, w))
    out = conv(x)
    assert out.shape[1:] == tuple(tout.shape[1:])
    loss = (out * gc.constant(cot)).sum()
    dx, dw, db = gc.grad(loss, [x, conv.weight, conv.bias])
    result = gc.compile([x], {"out": out, "dx": dx, "dw": dw, "db": db}).run({"x": xb})
    np.testing.assert_allclose(result["out"], tout.detach().numpy(), **TOL)
    np.testing.assert_allclose(result["dx"], txb.grad.numpy(), err_msg="dx", **TOL)
    np.testing.assert_allclose(result["dw"], tconv.weight.grad.numpy(), err_msg="dweight", **TOL)
    np.testing.assert_allclose(result["db"], tconv.bias.grad.numpy(), err_msg="dbias", **TOL)


POOL_CASES = {
    # name: (kind, kwargs, input H, W)
    "avg_k2_ceil": ("avg", {"kernel_size": 2, "ceil_mode": True}, 7, 9),
    "avg_k3_s2_p1_ceil_nopad": ("avg", {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True,
                                        "count_include_pad": False}, 8, 7),
    "avg_k3_s2_p1_nopad": ("avg", {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False}, 9, 8),
    "avg_k3_s2_p1_incpad": ("avg", {"kernel_size": 3, "stride": 2, "padding": 1}, 9, 8),
    "avg_k3_s2_p1_ceil_incpad": ("avg", {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}, 8, 7),
    "avg_rect_k2x3_s1x2": ("avg", {"kernel_size": (2, 3), "stride": (1, 2), "ceil_mode": True,
                                   "count_include_pad": False}, 6, 8),
    "max_k3_s2_p1": ("max", {"kernel_size": 3, "stride": 2, "padding": 1}, 9, 8),
    "max_k2_ceil": ("max", {"kernel_size": 2, "ceil_mode": True}, 7, 9),
    "max_k3_s1_overlap": ("max", {"kernel_size": 3, "stride": 1}, 6, 6),
}


@pytest.mark.parametrize("case", list(POOL_CASES))
def test_pool2d_configurations_grads_match_torch(case):
    kind, kwargs, h, w = POOL_CASES[case]
    layer = (nn.AvgPool2d if kind == "avg" else nn.MaxPool2d)(**kwargs)
    tlayer = (TNN.AvgPool2d if kind == "avg" else TNN.MaxPool2d)(**kwargs)
    rng = np.random.default_rng(1)
    # A permutation of distinct values: no ties, so max-pool's argmax is the same on both sides.
    xb = rng.permutation(2 * 3 * h * w).reshape(2, 3, h, w).astype(np.float32) / (h * w)
    txb = torch.from_numpy(xb).requires_grad_()
    tout = tlayer(txb)
    cot = rng.standard_normal(tuple(tout.shape)).astype(np.float32)
    (tout * torch.from_numpy(cot)).sum().backward()

    x = gc.input("x", shape=("batch", 3, h, w))
    out = layer(x)
    assert out.shape[1:] == tuple(tout.shape[1:])
    (dx,) = gc.grad((out * gc.constant(cot)).sum(), [x])
    result = gc.compile([x], {"out": out, "dx": dx}).run({"x": xb})
    np.testing.assert_allclose(result["out"], tout.detach().numpy(), **TOL)
    np.testing.assert_allclose(result["dx"], txb.grad.numpy(), err_msg="dx", **TOL)


MAX_POOL_TIE_CASES = {
    # name: (kwargs, channels, H, W, dtype); the MaxPool rule's lowering for it is named after the colon
    "k2:mask": ({"kernel_size": 2}, 3, 8, 8, "float32"),
    "k2x3_rect:mask": ({"kernel_size": (2, 3)}, 3, 6, 9, "float32"),
    "k2_large_map:unpool": ({"kernel_size": 2}, 3, 64, 64, "float32"),
    "k2_floor_remainder:scatter": ({"kernel_size": 2}, 3, 7, 9, "float32"),
    "k2_s3_gaps:unpool": ({"kernel_size": 2, "stride": 3}, 3, 8, 8, "float32"),
    "k2:scatter_float64": ({"kernel_size": 2}, 3, 8, 8, "float64"),
    "k3_s2_overlap:scatter": ({"kernel_size": 3, "stride": 2}, 3, 9, 9, "float32"),
    "k2_ceil:scatter": ({"kernel_size": 2, "ceil_mode": True}, 3, 7, 7, "float32"),
}
LOWERING_OPS = {"mask": "Resize", "unpool": "MaxUnpool", "scatter": "ScatterElements"}


@pytest.mark.parametrize("case", list(MAX_POOL_TIE_CASES))
def test_max_pool_gradient_goes_to_the_first_maximum_on_ties_as_in_torch(case):
    """Inputs on a coarse grid (many equal maxima per window, constant windows too): PyTorch gives a
    window's whole cotangent to its first maximum in row-major order; graphc must pick the same one."""
    kwargs, channels, h, w, dtype = MAX_POOL_TIE_CASES[case]
    rng = np.random.default_rng(2)
    xb = np.round(rng.standard_normal((2, channels, h, w)) * 0.8).astype(dtype)
    xb[0, 0] = 1.0  # every window of this channel is a tie of all its elements
    txb = torch.from_numpy(xb).requires_grad_()
    tout = TNN.MaxPool2d(**kwargs)(txb)
    cot = rng.standard_normal(tuple(tout.shape)).astype(dtype)
    (tout * torch.from_numpy(cot)).sum().backward()

    x = gc.input("x", shape=("batch", channels, h, w), dtype=dtype)
    out = nn.MaxPool2d(**kwargs)(x)
    (dx,) = gc.grad((out * gc.constant(cot, dtype=dtype)).sum(), [x])
    program = gc.compile([x], {"out": out, "dx": dx})
    ops = {node.op_type for node in program.model.graph.node}
    lowering = case.split(":")[1].split("_")[0]
    assert {op for op in LOWERING_OPS.values() if op in ops} == {LOWERING_OPS[lowering]}, ops
    result = program.run({"x": xb})
    np.testing.assert_array_equal(result["out"], tout.detach().numpy())
    np.testing.assert_array_equal(result["dx"], txb.grad.numpy())


@pytest.mark.parametrize("shape, lowering", [((2, 3, 8), "mask"), ((2, 2, 4, 6, 4), "mask"),
                                             ((2, 3, 64, 64, 4), "unpool")])
def test_max_pool_1d_3d_gradient_matches_torch_on_ties(shape, lowering):
    """An imported 1-D / 3-D MaxPool (kernel 2, stride 2): the rank-generic mask and MaxUnpool lowerings."""
    from onnx import TensorProto, helper
    nd = len(shape) - 2
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2] * nd, strides=[2] * nd)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *shape[1:]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    module = gc.load_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)]))
    rng = np.random.default_rng(3)
    xb = np.round(rng.standard_normal(shape)).astype(np.float32)  # integers: ties in most windows
    txb = torch.from_numpy(xb).requires_grad_()
    tout = (TF.max_pool1d if nd == 1 else TF.max_pool3d)(txb, 2)
    cot = rng.standard_normal(tuple(tout.shape)).astype(np.float32)
    (tout * torch.from_numpy(cot)).sum().backward()

    x = gc.input("x", ("batch", *shape[1:]))
    (dx,) = gc.grad((module(x) * gc.constant(cot)).sum(), [x])
    program = gc.compile([x], {"dx": dx})
    assert LOWERING_OPS[lowering] in {node.op_type for node in program.model.graph.node}
    np.testing.assert_array_equal(program.run({"x": xb})["dx"], txb.grad.numpy())
