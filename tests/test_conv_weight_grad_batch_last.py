"""The batch-last patches lowering of a Conv weight gradient and the two-step batch-last Transpose (issue 11).

``_weight_grad_by_batch_last_patches`` (one Gather of x's patches in a (C, Hp*Wp, N) layout, one Gemm with
g) is taken by the shifted-Gemm layers where it copies no more values (LeNet's conv2); ``_batch_last``
transposes in two steps where a sample's stride is a multiple of 4 KB (LeNet's 3x32x32 input). Both are
checked against PyTorch's float64 weight gradient, and the rule's choice per layer is pinned.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import graphc as gc  # noqa: E402
from graphc import nn  # noqa: E402
from passes.autodiff.rules.conv import _batch_last_patches_fit  # noqa: E402

TNN = torch.nn


def assert_close(actual, expected, err_msg=""):
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=2e-6 * np.abs(expected).max(), err_msg=err_msg)


def _dw(cin, cout, k, p, h, w, batch, seed=0):
    """graphc's and PyTorch's (float64) dw and db of one Conv2d under a random cotangent; graphc's op list."""
    torch.manual_seed(seed)
    tconv = TNN.Conv2d(cin, cout, k, padding=p)
    conv = nn.Conv2d(cin, cout, k, padding=p)
    conv.load_state_dict(tconv.state_dict())
    rng = np.random.default_rng(seed)
    xb = rng.standard_normal((batch, cin, h, w)).astype(np.float32)
    cot = rng.standard_normal(tuple(tconv(torch.from_numpy(xb)).shape)).astype(np.float32)
    x = gc.input("x", shape=("batch", cin, h, w))
    dw, db = gc.grad((conv(x) * gc.constant(cot)).sum(), [conv.weight, conv.bias])
    program = gc.compile([x], {"dw": dw, "db": db})
    got = program.run({"x": xb})
    t64 = tconv.double()
    (t64(torch.from_numpy(xb).double()) * torch.from_numpy(cot).double()).sum().backward()
    ops = [node.op_type for node in program.model.graph.node]
    perms = [tuple(a.ints) for node in program.model.graph.node if node.op_type == "Transpose"
             for a in node.attribute if a.name == "perm"]
    return got, (t64.weight.grad.numpy(), t64.bias.grad.numpy()), ops + [("perm", q) for q in perms]


@pytest.mark.parametrize("cin,cout,k,p,h,w,batch", [
    (6, 16, 5, 0, 14, 14, 3),        # LeNet's conv2
    (6, 16, 5, 0, 14, 14, 64),       # ... at the benchmark's batch
    (2, 4, (5, 3), (2, 1), 7, 6, 2),  # padded, rectangular kernel
    (1, 2, 5, 0, 5, 5, 3),           # kernel as large as the input: one output position
])
def test_batch_last_patches_weight_grad_matches_torch_float64(cin, cout, k, p, h, w, batch):
    kernel = (k, k) if isinstance(k, int) else k
    pads = (p, p) if isinstance(p, int) else p
    padded = [h + 2 * pads[0], w + 2 * pads[1]]
    assert _batch_last_patches_fit(cout, cin, list(kernel), padded)
    got, (dw, db), ops = _dw(cin, cout, k, p, h, w, batch)
    assert_close(got["dw"], dw, "dweight")
    assert_close(got["db"], db, "dbias")
    assert ops.count("Gemm") == 1 and ops.count("Gather") == 1 and "Conv" not in ops, ops
    assert ("perm", (1, 2, 0, 3)) not in ops, ops  # samples of other strides: one Transpose


def test_the_choice_per_layer():
    """Patches where they copy no more than the shifted Gemm and fit one piece; LeNet's conv1 keeps the
    shifted Gemm (2100 patch rows of W' against 1440), conv2 takes the patches (1500 against 1540)."""
    assert not _batch_last_patches_fit(6, 3, [5, 5], [32, 32])
    assert _batch_last_patches_fit(16, 6, [5, 5], [14, 14])
    assert not _batch_last_patches_fit(16, 6, [5, 5], [140, 14])  # more than SHIFTED_CHUNK_ABOVE per sample


@pytest.mark.parametrize("cin,cout,k,p,h,w", [
    (3, 6, 5, 0, 32, 32),  # LeNet's conv1: 3 * 32 * 32 floats = 12 KB per sample, the two-step Transpose
    (1, 2, 3, 1, 32, 32),  # patches (padded) from a 4 KB sample
    (4, 2, 3, 0, 16, 16),  # 4 KB, the shifted Gemm
])
def test_two_step_batch_last_transpose_matches_torch_float64(cin, cout, k, p, h, w):
    assert (cin * h * w * 4) % 4096 == 0
    got, (dw, db), ops = _dw(cin, cout, k, p, h, w, 5, seed=1)
    assert_close(got["dw"], dw, "dweight")
    assert ("perm", (1, 2, 0, 3)) in ops, ops  # the sample's first step: (C, H, N, W)


def test_lenet_conv2_in_a_training_step_matches_torch_float64():
    """LeNet's conv1 -> pool -> conv2 stack, dw of both through the whole autodiff, against PyTorch."""
    torch.manual_seed(0)
    t1, t2 = TNN.Conv2d(3, 6, 5), TNN.Conv2d(6, 16, 5)
    c1, c2 = nn.Conv2d(3, 6, 5), nn.Conv2d(6, 16, 5)
    c1.load_state_dict(t1.state_dict())
    c2.load_state_dict(t2.state_dict())
    rng = np.random.default_rng(3)
    xb = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    cot = rng.standard_normal((4, 16, 10, 10)).astype(np.float32)
    x = gc.input("x", shape=("batch", 3, 32, 32))
    import graphc.nn.functional as F
    y = c2(F.max_pool2d(F.relu(c1(x)), 2))
    grads = gc.grad((y * gc.constant(cot)).sum(), [c1.weight, c2.weight])
    got = gc.compile([x], {"dw1": grads[0], "dw2": grads[1]}).run({"x": xb})
    t1d, t2d = t1.double(), t2.double()
    ty = t2d(torch.nn.functional.max_pool2d(torch.relu(t1d(torch.from_numpy(xb).double())), 2))
    (ty * torch.from_numpy(cot).double()).sum().backward()
    assert_close(got["dw1"], t1d.weight.grad.numpy(), "conv1")
    assert_close(got["dw2"], t2d.weight.grad.numpy(), "conv2")
