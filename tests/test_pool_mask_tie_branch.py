"""The MaxPool mask gradient's two branches (``_max_pool_mask_vjp``): no tied window, and ties.

Where no window holds two maxima the mask is ``x == upsampled y`` as it is; otherwise an ``If`` runs the
first-maximum rule. Checked exactly against a numpy loop over the windows (given the y ONNX Runtime
returned) and against PyTorch: on continuous inputs (the cheap branch), with one tied window among
continuous ones (the If must notice it), and with a NaN window (no maximum) and a tied window in the
same row, whose counts would balance in a plain total. Also through ``gc.compile``'s extraction.
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch

import graphc as gc
from graphc import nn
from graphc.program import build_model
from passes.pipelines import gradient_pipeline
from test_pool_mask_nan_window import first_max_gradient  # the numpy reference, shared


def torch_gradient(xb, cot, k):
    tx = torch.tensor(xb, requires_grad=True)
    (torch.nn.functional.max_pool2d(tx, k) * torch.tensor(cot)).sum().backward()
    return tx.grad.numpy()


def pool_gradient(xb, cot, k=2):
    x = gc.input("x", shape=("batch",) + xb.shape[1:])
    out = nn.MaxPool2d(k)(x)
    model = build_model([x], {"loss": (out * gc.constant(cot)).sum(), "out": out})
    trained = gradient_pipeline("loss", ["x"])(model).model
    assert "If" in [n.op_type for n in trained.graph]  # the mask lowering, with its tie test
    proto = ir.serde.serialize_model(trained)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    result = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": xb})))
    return result["x.grad"], result["out"]


@pytest.mark.parametrize("k", [2, 3])
def test_continuous_input_takes_maxima_as_the_mask_exactly(k):
    rng = np.random.default_rng(0)
    xb = rng.standard_normal((3, 4, 6 * k, 6 * k)).astype(np.float32)
    cot = rng.standard_normal((3, 4, 6, 6)).astype(np.float32)
    dx, y = pool_gradient(xb, cot, k)
    np.testing.assert_array_equal(dx, first_max_gradient(xb, y, cot, k))
    np.testing.assert_array_equal(dx, torch_gradient(xb, cot, k))


@pytest.mark.parametrize("where", [(0, 0, 0, 0), (2, 3, 6, 4), (1, 2, 10, 10)])
def test_one_tied_window_among_continuous_ones_gets_the_first_maximum(where):
    rng = np.random.default_rng(1)
    xb = rng.standard_normal((3, 4, 12, 12)).astype(np.float32)
    n, c, r, q = where
    xb[n, c, r:r + 2, q:q + 2] = [[0.5, 3.0], [3.0, 3.0]]  # three maxima; the second position is first
    cot = rng.standard_normal((3, 4, 6, 6)).astype(np.float32)
    dx, y = pool_gradient(xb, cot)
    want = first_max_gradient(xb, y, cot, 2)
    assert want[n, c, r, q + 1] == cot[n, c, r // 2, q // 2] and want[n, c, r + 1, q:q + 2].tolist() == [0, 0]
    np.testing.assert_array_equal(dx, want)
    np.testing.assert_array_equal(dx, torch_gradient(xb, cot, 2))


def test_nan_window_and_tied_window_in_one_row_do_not_cancel():
    rng = np.random.default_rng(2)
    xb = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    xb[1, 2, 0:2, 0:2] = np.nan                   # no element equals y: no maximum
    xb[1, 2, 4:6, 2:4] = [[1.0, 2.0], [2.0, 0.0]]  # two maxima: the row's sum of maxima still equals its windows
    cot = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    dx, y = pool_gradient(xb, cot)
    np.testing.assert_array_equal(dx, first_max_gradient(xb, y, cot, 2))
    assert dx[1, 2, 4:6, 2:4].tolist() == [[0, cot[1, 2, 2, 1]], [0, 0]]


def test_compiled_gradient_of_a_pool_after_a_conv_matches_torch():
    """gc.compile extracts the graph by walking node inputs: the If's branches must find their values."""
    rng = np.random.default_rng(3)
    xb = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    gc.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = gc.input("x", shape=("batch", 3, 8, 8))
    loss = (nn.MaxPool2d(2)(conv(x)) ** 2).sum()
    (dx,) = gc.grad(loss, [x])
    got = gc.compile([x], {"dx": dx}).run({"x": xb})["dx"]
    tconv = torch.nn.Conv2d(3, 4, 3, padding=1)
    with torch.no_grad():
        tconv.weight.copy_(torch.tensor(conv.weight.numpy()))
        tconv.bias.copy_(torch.tensor(conv.bias.numpy()))
    tx = torch.tensor(xb, requires_grad=True)
    (torch.nn.functional.max_pool2d(tconv(tx), 2) ** 2).sum().backward()
    np.testing.assert_allclose(got, tx.grad.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_window_of_minus_inf_and_tied_window_in_one_row_do_not_cancel(nd):
    """ONNX Runtime's 1-D and 3-D MaxPool give an all -inf window the lowest float, which equals none of
    its elements: the tie test counts per window, so that window cannot hide a tie next to it (an
    imported model's 1-D or 3-D pool: graphc's builder makes 2-D ones)."""
    import onnx
    from onnx import TensorProto, helper
    shape = [1, 1] + [2] * (nd - 1) + [6]
    xb = np.full(shape, 0.25, np.float32)
    row = xb.reshape(-1, 6)
    row[:] = [-np.inf, -np.inf, 3.0, 3.0, 1.0, 2.0]  # the first window all -inf, the second tied
    kernel = [1] * (nd - 1) + [2]
    cot = np.arange(1, xb.size // 2 + 1, dtype=np.float32).reshape(shape[:-1] + [3])
    nodes = [helper.make_node("MaxPool", ["x"], ["out"], kernel_shape=kernel, strides=kernel),
             helper.make_node("Mul", ["out", "cot"], ["weighted"]),
             helper.make_node("ReduceSum", ["weighted"], ["loss"], keepdims=0)]
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("loss", TensorProto.FLOAT, [])],
                              [onnx.numpy_helper.from_array(cot, "cot")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    trained = gradient_pipeline("loss", ["x"])(ir.serde.deserialize_model(model)).model
    assert "If" in [n.op_type for n in trained.graph]
    proto = ir.serde.serialize_model(trained)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    dx = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"x": xb})))["x.grad"]
    tx = torch.tensor(xb, requires_grad=True)
    pool = {1: torch.nn.functional.max_pool1d, 2: torch.nn.functional.max_pool2d, 3: torch.nn.functional.max_pool3d}
    (pool[nd](tx.reshape(shape[1:] if nd == 1 else shape), kernel).reshape(cot.shape) * torch.tensor(cot)).sum().backward()
    want = tx.grad.numpy()
    np.testing.assert_array_equal(dx.reshape(-1, 6)[:, 2:], want.reshape(-1, 6)[:, 2:])  # the tied window: first only
    assert dx.reshape(-1, 6)[0, 2:4].tolist() == [cot.ravel()[1], 0.0]
