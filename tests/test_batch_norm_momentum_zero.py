"""Training-mode BatchNormalization with momentum 0: the batch statistics read from the node's outputs.

graphc's builder sets the node's momentum to 0, so its "running" outputs are the batch mean and biased
variance; the running update and the gradient rule (``rules/batch_norm_training.py``) read them instead
of recomputing them. A node with another momentum (an imported model) has them recomputed. Both paths,
with dx by the inference-mode BatchNormalization that applies ``c·slope + shift``, are checked against
PyTorch (float32 and float64, ranks 2 to 4, a large mean against a small spread).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import graphc as gc
import graphc.nn.functional as F
from graphc.tensor import emit

TOL = {"rtol": 1e-4, "atol": 1e-5}


def torch_reference(x, w, b, g, running=None):
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    rm, rv = (None, None) if running is None else (torch.tensor(running[0]), torch.tensor(running[1]))
    y = torch.nn.functional.batch_norm(tx, rm, rv, tw, tb, training=True, momentum=0.1, eps=1e-5)
    (y * torch.tensor(g)).sum().backward()
    stats = None if running is None else (rm.numpy(), rv.numpy())
    return y.detach().numpy(), [tx.grad.numpy(), tw.grad.numpy(), tb.grad.numpy()], stats


def data(shape, dtype, mean=0.5, spread=1.5, seed=0):
    rng = np.random.default_rng(seed)
    c = shape[1]
    return (rng.normal(mean, spread, shape).astype(dtype), rng.uniform(0.5, 1.5, c).astype(dtype),
            rng.normal(size=c).astype(dtype), rng.normal(size=shape).astype(dtype))


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5), (4, 2, 3, 3)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_builder_reads_the_momentum_zero_outputs_and_matches_torch(shape, dtype):
    x_np, w_np, b_np, g_np = data(shape, dtype)
    rm_np, rv_np = np.zeros(shape[1], dtype), np.ones(shape[1], dtype)
    name = {np.float32: "float32", np.float64: "float64"}[dtype]
    x, g = gc.input("x", ("batch",) + shape[1:], name), gc.input("g", ("batch",) + shape[1:], name)
    w, b, rm, rv = (gc.input(n, (shape[1],), name) for n in ("w", "b", "rm", "rv"))
    y, new_mean, new_var = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5)
    dx, dw, db = gc.grad((y * g).sum(), [x, w, b])
    program = gc.compile([x, g, w, b, rm, rv], {"y": y, "mean": new_mean, "var": new_var, "dx": dx, "dw": dw,
                                                "db": db}, allow_batch_statistics=True)
    nodes = [n for n in program.model.graph.node if n.op_type == "BatchNormalization"]
    training = [n for n in nodes if any(a.name == "training_mode" and a.i == 1 for a in n.attribute)]
    assert len(training) == 1 and [a.f for a in training[0].attribute if a.name == "momentum"] == [0.0]
    assert "ReduceMean" not in [n.op_type for n in program.model.graph.node]  # statistics not recomputed
    want_y, want_grads, (want_rm, want_rv) = torch_reference(x_np, w_np, b_np, g_np, (rm_np, rv_np))
    feeds = {"x": x_np, "g": g_np, "w": w_np, "b": b_np, "rm": rm_np.copy(), "rv": rv_np.copy()}
    for _ in range(2):  # a second run after ONNX Runtime's in-place writes into the scratch inputs
        out = program.run(feeds)
        np.testing.assert_array_equal(feeds["rm"], rm_np)
        np.testing.assert_allclose(out["y"], want_y, **TOL)
        np.testing.assert_allclose(out["mean"], want_rm, **TOL)
        np.testing.assert_allclose(out["var"], want_rv, **TOL)
        for key, want in zip(["dx", "dw", "db"], want_grads):
            np.testing.assert_allclose(out[key], want, err_msg=key, **TOL)


@pytest.mark.parametrize("momentum", [0.9, 0.0])
@pytest.mark.parametrize("shape", [(6, 3), (4, 2, 3, 3)])
def test_a_node_with_any_momentum_gets_the_batch_statistics_gradient(momentum, shape):
    """An imported-style node (fed running inputs, momentum 0.9 or 0): the rule recomputes the statistics
    or reads them, and either way gives PyTorch's gradient."""
    x_np, w_np, b_np, g_np = data(shape, np.float32, seed=1)
    x, g = gc.input("x", ("batch",) + shape[1:]), gc.input("g", ("batch",) + shape[1:])
    w, b, rm, rv = (gc.input(n, (shape[1],)) for n in ("w", "b", "rm", "rv"))
    y, _, _ = emit("BatchNormalization", [x, w, b, rm, rv], {"epsilon": 1e-5, "momentum": momentum,
                                                             "training_mode": 1},
                   shape=x.shape, dtype=x.dtype, num_outputs=3, extra_outputs=[((shape[1],), x.dtype)] * 2)
    dx, dw, db = gc.grad((y * g).sum(), [x, w, b])
    program = gc.compile([x, g, w, b, rm, rv], {"dx": dx, "dw": dw, "db": db}, allow_batch_statistics=True)
    recomputed = "ReduceMean" in [n.op_type for n in program.model.graph.node]
    assert recomputed == (momentum != 0.0)
    _, want, _ = torch_reference(x_np, w_np, b_np, g_np)
    feeds = {"x": x_np, "g": g_np, "w": w_np, "b": b_np, "rm": np.zeros(shape[1], np.float32),
             "rv": np.ones(shape[1], np.float32)}
    out = program.run(feeds)
    for key, value in zip(["dx", "dw", "db"], want):
        np.testing.assert_allclose(out[key], value, err_msg=key, **TOL)


def test_large_mean_small_spread_stays_accurate():
    """Mean 100, spread 0.01 (float32 holds ~4 digits of the spread): the node's two-pass statistics and
    the rule's centred sums keep dx within float32's reach of PyTorch's float64."""
    shape = (8, 3, 6, 6)
    x_np, w_np, b_np, g_np = data(shape, np.float32, mean=100.0, spread=0.01, seed=2)
    x, g = gc.input("x", ("batch",) + shape[1:]), gc.input("g", ("batch",) + shape[1:])
    w, b = gc.input("w", (3,)), gc.input("b", (3,))
    y, _, _ = F.batch_norm(x, None, None, w, b, training=True)
    (dx,) = gc.grad((y * g).sum(), [x])
    out = gc.compile([x, g, w, b], {"y": y, "dx": dx}, allow_batch_statistics=True).run(
        {"x": x_np, "g": g_np, "w": w_np, "b": b_np})
    want_y, want, _ = torch_reference(*(a.astype(np.float64) for a in (x_np, w_np, b_np, g_np)))
    np.testing.assert_allclose(out["y"], want_y, rtol=1e-3, atol=2e-3)
    scale = np.abs(want[0]).max()
    np.testing.assert_allclose(out["dx"] / scale, want[0] / scale, atol=2e-3)
