"""The finiteness check (``grad_check``) and Adam's rearranged update, against independent references.

The check must be NaN for a NaN or +-Inf at any position of any gradient (including the tails of ONNX
Runtime's vector loops, with 1 and 2 threads) and exactly 0 for any finite gradients, however large
(a plain sum would overflow). Adam's update, emitted as ``(lr sqrt(bc2) / bc1) * m / (sqrt(v) + eps sqrt(bc2))``,
must equal torch's formula ``lr / bc1 * m / (sqrt(v) / sqrt(bc2) + eps)``, computed here in float64 numpy,
and leave torch's ``exp_avg`` / ``exp_avg_sq`` as the stored state.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest

import graphc as gc
from graphc import nn
from passes.emitter import Emitter
from passes.training_step import _finiteness_check

SHAPES = [(1, 1), (1, 17), (3, 5), (7, 9), (13, 33), (33, 65), (64, 10), (2, 3, 17), (5,)]


def check_session(shapes, threads: int) -> ort.InferenceSession:
    inputs = [ir.Value(name=f"g{i}", type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(list(s)))
              for i, s in enumerate(shapes)]
    e = Emitter("check")
    check = _finiteness_check(e, inputs, ir.DataType.FLOAT)
    graph = ir.Graph(inputs, [check], nodes=e.nodes, opset_imports={"": 21})
    proto = ir.serde.serialize_model(ir.Model(graph, ir_version=10))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("threads", [1, 2])
def test_check_is_nan_for_a_non_finite_element_at_every_position(threads):
    session = check_session(SHAPES, threads)
    rng = np.random.default_rng(0)
    base = {f"g{i}": (rng.standard_normal(s) * 1e30).astype(np.float32) for i, s in enumerate(SHAPES)}
    assert session.run(None, base)[0] == 0.0
    for name, array in base.items():
        for bad in (np.nan, np.inf, -np.inf):
            for position in range(array.size):
                feeds = dict(base)
                feeds[name] = array.copy()
                feeds[name].flat[position] = bad
                result = session.run(None, feeds)[0]
                assert np.isnan(result), (name, array.shape, bad, position, result)


@pytest.mark.parametrize("threads", [1, 2])
def test_check_is_zero_for_the_largest_finite_gradients(threads):
    session = check_session(SHAPES, threads)
    biggest = np.finfo(np.float32).max
    feeds = {f"g{i}": np.full(s, biggest * (-1) ** i, np.float32) for i, s in enumerate(SHAPES)}
    assert session.run(None, feeds)[0] == 0.0  # a plain sum would overflow to +-Inf


def test_check_of_a_large_layer_catches_its_last_rows_and_columns():
    session = check_session([(128, 784)], 2)
    grad = np.full((128, 784), 3e38, np.float32)
    assert session.run(None, {"g0": grad})[0] == 0.0
    for row, col in [(0, 0), (127, 783), (127, 0), (0, 783), (64, 777), (100, 780)]:
        for bad in (np.nan, np.inf, -np.inf):
            bent = grad.copy()
            bent[row, col] = bad
            assert np.isnan(session.run(None, {"g0": bent})[0]), (row, col, bad)


@pytest.mark.parametrize("io_binding", [False, True])
def test_huge_finite_matrix_gradients_are_applied_and_a_non_finite_one_is_refused(io_binding):
    x = gc.input("x", ("batch", 1000))
    weight = nn.Parameter(np.zeros((1000, 3), np.float32))
    loss = (x @ weight).sum()  # 0 at w = 0; d loss / d w[i, j] = the column sum of x[:, i]
    trainer = gc.Trainer(loss, gc.optim.SGD([weight], lr=1e-36), [x], io_binding=io_binding)
    xb = np.full((1, 1000), 1e36, np.float32)
    assert trainer.step({"x": xb}) == 0.0
    np.testing.assert_allclose(weight.data, np.full((1000, 3), -1.0, np.float32), rtol=1e-6)
    before = weight.data.copy()
    for position, bad in [(999, np.inf), (0, -np.inf), (517, np.nan)]:
        bent = np.zeros((1, 1000), np.float32)
        bent[0, position] = bad
        with pytest.raises(gc.NonFiniteLossError):
            trainer.step({"x": bent})
        np.testing.assert_array_equal(weight.data, before)
    assert trainer.steps_done == 1


def torch_adam(p, grads, lr, betas, eps, wd, amsgrad, decoupled):
    """torch.optim.Adam / AdamW (single tensor) in float64 numpy: the reference for the emitted update."""
    p = p.astype(np.float64)
    m, v, vmax = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    b1, b2 = betas
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        if decoupled:
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        if amsgrad:
            vmax = np.maximum(vmax, v)
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
        denom = np.sqrt(vmax if amsgrad else v) / np.sqrt(bc2) + eps
        p = p - lr / bc1 * m / denom
    return p, m, v


@pytest.mark.parametrize("kind,eps,wd,amsgrad", [
    ("Adam", 1e-8, 0.0, False), ("Adam", 1e-3, 0.1, True), ("AdamW", 0.5, 0.01, False), ("AdamW", 1e-6, 0.1, True)])
def test_adam_update_matches_torch_formula_where_eps_matters(kind, eps, wd, amsgrad):
    """Gradients of 1e-7 .. 1e-1 against eps 1e-8 .. 0.5: eps dominates the denominator for some elements,
    sqrt(v) for others, so moving sqrt(1 - b2^t) from sqrt(v) onto eps is exercised both ways."""
    rng = np.random.default_rng(3)
    start = rng.standard_normal((6, 5)).astype(np.float32)
    xs = [(rng.standard_normal((6, 5)) * 10.0 ** rng.integers(-7, 0, (6, 5))).astype(np.float32) for _ in range(5)]
    w = nn.Parameter(start.copy())
    target = gc.input("t", (6, 5))
    loss = (w * target).sum()  # d loss / d w = t: the gradients are the fed values exactly
    opt = getattr(gc.optim, kind)([w], lr=0.01, eps=eps, weight_decay=wd, amsgrad=amsgrad)
    trainer = gc.Trainer(loss, opt, [target])
    for xb in xs:
        trainer.step({"t": xb})
    expected, m, v = torch_adam(start, xs, 0.01, (0.9, 0.999), eps, wd, amsgrad, kind == "AdamW")
    np.testing.assert_allclose(w.data, expected, rtol=2e-6, atol=1e-7)
    # the stored state stays torch's m and v (not rescaled by the rearrangement)
    read = trainer.session.read
    np.testing.assert_allclose(read("param.exp_avg"), m, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(read("param.exp_avg_sq"), v, rtol=1e-5, atol=1e-20)
