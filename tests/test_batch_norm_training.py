"""Training-mode BatchNormalization (one ONNX node + closed-form gradient) run more than once.

ONNX Runtime's CPU kernel writes the running outputs into the running inputs in place when those
outputs are unread; these tests pin that graphc's graph is immune: fed buffers stay untouched, and a
second run (after any in-place write) gives PyTorch's values again.
"""

from __future__ import annotations

import numpy as np
import torch

import graphc as gc
import graphc.nn.functional as F

TOL = {"rtol": 1e-4, "atol": 1e-5}


def _torch_y_and_dx(x, weight, bias, g, running=None):
    tx = torch.tensor(x, requires_grad=True)
    tw = None if weight is None else torch.tensor(weight, requires_grad=True)
    tb = None if bias is None else torch.tensor(bias, requires_grad=True)
    rm, rv = (None, None) if running is None else (torch.tensor(running[0]), torch.tensor(running[1]))
    y = torch.nn.functional.batch_norm(tx, rm, rv, tw, tb, training=True, momentum=0.1, eps=1e-5)
    (y * torch.tensor(g)).sum().backward()
    grads = [tx.grad.numpy()] + [t.grad.numpy() for t in (tw, tb) if t is not None]
    return y.detach().numpy(), grads, (None if running is None else (rm.numpy(), rv.numpy()))


def test_no_buffers_no_affine_twice_matches_torch():
    rng = np.random.default_rng(0)
    x_np = rng.normal(1.0, 2.0, (5, 3, 4, 4)).astype(np.float32)
    g_np = rng.normal(size=x_np.shape).astype(np.float32)
    x = gc.input("x", ("batch", 3, 4, 4))
    g = gc.input("g", ("batch", 3, 4, 4))
    y, _, _ = F.batch_norm(x, None, None, training=True)
    (dx,) = gc.grad((y * g).sum(), [x])
    program = gc.compile([x, g], {"y": y, "dx": dx}, allow_batch_statistics=True)
    want_y, (want_dx,), _ = _torch_y_and_dx(x_np, None, None, g_np)
    for _ in range(3):  # any in-place write into a shared input would show from the second run on
        out = program.run({"x": x_np, "g": g_np})
        np.testing.assert_allclose(out["y"], want_y, **TOL)
        np.testing.assert_allclose(out["dx"], want_dx, **TOL)


def test_running_update_is_torch_unbiased_and_leaves_fed_buffers_alone():
    rng = np.random.default_rng(1)
    x_np = rng.normal(0.5, 1.5, (4, 2, 3, 3)).astype(np.float32)
    g_np = rng.normal(size=x_np.shape).astype(np.float32)
    w_np, b_np = rng.uniform(0.5, 1.5, 2).astype(np.float32), rng.normal(size=2).astype(np.float32)
    rm_np, rv_np = rng.normal(size=2).astype(np.float32), rng.uniform(0.5, 2.0, 2).astype(np.float32)
    names = ["x", "g", "w", "b", "rm", "rv"]
    x, g, w, b, rm, rv = (gc.input(n, s) for n, s in zip(names, [("batch", 2, 3, 3)] * 2 + [(2,)] * 4))
    y, new_mean, new_var = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5)
    dx, dw, db = gc.grad((y * g).sum(), [x, w, b])
    program = gc.compile([x, g, w, b, rm, rv], {"y": y, "mean": new_mean, "var": new_var, "dx": dx, "dw": dw,
                                                "db": db}, allow_batch_statistics=True)
    want_y, want_grads, (want_rm, want_rv) = _torch_y_and_dx(x_np, w_np, b_np, g_np, (rm_np, rv_np))
    feeds = {"x": x_np, "g": g_np, "w": w_np, "b": b_np, "rm": rm_np.copy(), "rv": rv_np.copy()}
    for _ in range(2):
        out = program.run(feeds)
        np.testing.assert_array_equal(feeds["rm"], rm_np)  # the fed buffers are not written in place
        np.testing.assert_array_equal(feeds["rv"], rv_np)
        np.testing.assert_allclose(out["mean"], want_rm, **TOL)
        np.testing.assert_allclose(out["var"], want_rv, **TOL)  # unbiased batch variance, as PyTorch
        np.testing.assert_allclose(out["y"], want_y, **TOL)
        for name, want in zip(["dx", "dw", "db"], want_grads):
            np.testing.assert_allclose(out[name], want, err_msg=name, **TOL)


def test_symbolic_channel_count_without_affine_matches_torch():
    rng = np.random.default_rng(2)
    x_np = rng.normal(size=(3, 4, 5)).astype(np.float32)
    g_np = rng.normal(size=x_np.shape).astype(np.float32)
    x = gc.input("x", ("batch", "c", 5))
    g = gc.input("g", ("batch", "c", 5))
    y, _, _ = F.batch_norm(x, None, None, training=True)
    (dx,) = gc.grad((y * g).sum(), [x])
    out = gc.compile([x, g], {"y": y, "dx": dx}, allow_batch_statistics=True).run({"x": x_np, "g": g_np})
    want_y, (want_dx,), _ = _torch_y_and_dx(x_np, None, None, g_np)
    np.testing.assert_allclose(out["y"], want_y, **TOL)
    np.testing.assert_allclose(out["dx"], want_dx, **TOL)
