"""Constants sized by a symbolic batch (``gc.zeros((L, x.size(0), H))``), ``size``/``numel``, ``clamp``,
``cumsum`` and ``gc.cat``, checked against numpy and PyTorch.

The op table (``tests/op_samples.py``) holds the gradient checks (CumSum, clamp with tensor bounds) and
the ONNX Runtime export of ``zeros``/``full_like`` over a symbolic dim; this file covers the PyTorch-user
paths: the LSTM tutorial's ``h0``/``c0`` at two batch sizes, dtypes, and every bad argument.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import graphc as gc
from graphc import nn
from graphc.errors import ShapeError
from graphc.tensor import SymDim

torch = pytest.importorskip("torch")


def run(inputs, outputs, feeds):
    return gc.compile(inputs, outputs).run(feeds)


# ---- symbolic dims remember where they came from -------------------------
def test_size_and_shape_give_symbolic_dims_that_know_their_tensor():
    x = gc.input("x", ("batch", 28, 28))
    d = x.size(0)
    assert isinstance(d, SymDim) and isinstance(d, str)
    assert d == "batch" and hash(d) == hash("batch") and repr(d) == "'batch'"
    assert d.tensor is x and d.axis == 0
    assert x.shape[0].tensor is x and x.size(-3) == "batch"
    assert x.size(1) == 28 and type(x.size(1)) is int
    assert x.shape == ("batch", 28, 28) and x.size() == x.shape


def test_symbolic_dims_are_stored_as_plain_names():
    x = gc.input("x", ("batch", 3))
    y = x * 2.0
    assert all(type(d.value) is str for d in y.value.shape if not isinstance(d, int))
    assert type(copy.deepcopy(x.size(0))) is str and copy.deepcopy(x.shape) == ("batch", 3)


def test_size_out_of_range_names_dim_and_shape():
    x = gc.input("x", ("batch", 3))
    with pytest.raises(IndexError, match=r"dim 2 is out of range for a tensor of shape \('batch', 3\)"):
        x.size(2)
    with pytest.raises(IndexError, match="dim '0'"):
        x.size("0")


# ---- zeros / ones / full ----------------------------------------------------
@pytest.mark.parametrize("batch", [1, 4])
def test_zeros_ones_full_sized_by_batch(batch):
    x = gc.input("x", ("batch", 3))
    outs = {"z": gc.zeros(2, x.size(0), 5), "o": gc.ones((x.shape[0], 2), dtype="int64"),
            "f": gc.full([x.size(0)], 0.25), "fi": gc.full((1, x.size(0)), 7)}
    assert outs["z"].shape == (2, "batch", 5) and outs["o"].shape == ("batch", 2)
    got = run([x], outs, {"x": np.zeros((batch, 3), np.float32)})
    expected = {"z": torch.zeros(2, batch, 5), "o": torch.ones((batch, 2), dtype=torch.int64),
                "f": torch.full([batch], 0.25), "fi": torch.full((1, batch), 7)}
    for name, ref in expected.items():
        assert got[name].dtype == ref.numpy().dtype, name
        np.testing.assert_array_equal(got[name], ref.numpy())


def test_static_sizes_give_constants_with_torch_dtypes():
    for ours, ref in ((gc.zeros(2, 3), torch.zeros(2, 3)), (gc.ones([4]), torch.ones([4])),
                      (gc.full((2,), True), torch.full((2,), True)), (gc.full((2, 2), 3), torch.full((2, 2), 3)),
                      (gc.full((3,), 1.5, dtype="float64"), torch.full((3,), 1.5, dtype=torch.float64)),
                      (gc.zeros(0, 2, dtype="int32"), torch.zeros(0, 2, dtype=torch.int32))):
        assert ours.value.producer().op_type == "Constant"
        np.testing.assert_array_equal(ours.value.const_value.numpy(), ref.numpy())
        assert ours.dtype == ref.numpy().dtype


def test_like_constants_follow_symbolic_and_static_shapes():
    x = gc.input("x", ("batch", 3))
    i = gc.input("i", (2,), dtype="int64")
    outs = {"z": gc.zeros_like(x), "o": gc.ones_like(x, dtype="int64"), "f": gc.full_like(x, -2.0),
            "fi": gc.full_like(i, 9), "flat": gc.zeros_like(x.flatten())}
    assert outs["flat"].shape == (None,) or outs["flat"].shape == ("batch",)
    xb = np.arange(15, dtype=np.float32).reshape(5, 3)
    got = run([x, i], outs, {"x": xb, "i": np.array([1, 2])})
    tx = torch.from_numpy(xb)
    for name, ref in (("z", torch.zeros_like(tx)), ("o", torch.ones_like(tx, dtype=torch.int64)),
                      ("f", torch.full_like(tx, -2.0)), ("fi", torch.full_like(torch.tensor([1, 2]), 9)),
                      ("flat", torch.zeros_like(tx.flatten()))):
        assert got[name].dtype == ref.numpy().dtype, name
        np.testing.assert_array_equal(got[name], ref.numpy())


@pytest.mark.parametrize("call, message", [
    (lambda x: gc.zeros(2, "batch"), r"zeros: size \(2, batch\): the symbolic dim 'batch' is a plain name; "
                                      r"read it from a tensor \(x.size\(0\)"),
    (lambda x: gc.ones(-1, 3), r"ones: size \(-1, 3\): each dim must be an int >= 0 .* got int -1"),
    (lambda x: gc.zeros(2.0), r"zeros: size \(2.0,\): .* got float 2.0"),
    (lambda x: gc.zeros(None, 3), r"zeros: size \(None, 3\): .* got unknown at build time"),
    (lambda x: gc.zeros(True), r"zeros: .* got bool True"),
    (lambda x: gc.full(3, 1.0), r"full: size must be a tuple or list of dims, got int"),
    (lambda x: gc.full((x.size(0),), x), r"full: fill_value must be a Python number, got Tensor"),
    (lambda x: gc.full_like(x, "a"), r"full_like: fill_value must be a Python number, got str"),
    (lambda x: gc.zeros_like(np.zeros(3)), r"zeros_like: expected a Tensor, got ndarray"),
])
def test_bad_sizes_and_fill_values_name_the_op_expected_and_given(call, message):
    x = gc.input("x", ("batch", 3))
    with pytest.raises(ShapeError, match=message):
        call(x)


# ---- the LSTM tutorial: h0, c0 = torch.zeros(L, x.size(0), H) -----------------
L, I, H, T = 2, 4, 6, 5


def _lstm_twins(seed=0):
    torch.manual_seed(seed)
    ref = torch.nn.LSTM(I, H, num_layers=L, batch_first=True)
    ours = nn.LSTM(I, H, num_layers=L, batch_first=True)
    ours.load_state_dict(ref.state_dict())
    return ours, ref


@pytest.mark.parametrize("mode, time", [("train", T), ("train", "T"), ("eval", T)])
def test_lstm_with_batch_sized_initial_states_matches_pytorch(mode, time):
    ours, ref = _lstm_twins()
    ours.train(mode == "train")
    x = gc.input("x", ("batch", time, I))
    h0 = gc.zeros(L, x.size(0), H)                  # varargs, as the tutorial writes it
    c0 = gc.full((L, x.size(0), H), 0.5)            # a tuple; non-zero so the state visibly matters
    out, (h_n, c_n) = ours(x, (h0, c0))
    assert h_n.shape == (L, "batch", H)
    prog = gc.compile([x], {"out": out, "h_n": h_n, "c_n": c_n})
    rng = np.random.default_rng(0)
    for batch in (3, 7):
        xb = rng.normal(size=(batch, T, I)).astype(np.float32)
        with torch.no_grad():
            t_out, (t_h, t_c) = ref(torch.from_numpy(xb), (torch.zeros(L, batch, H), torch.full((L, batch, H), 0.5)))
        got = prog.run({"x": xb})
        for name, want in (("out", t_out), ("h_n", t_h), ("c_n", t_c)):
            np.testing.assert_allclose(got[name], want.numpy(), rtol=1e-5, atol=1e-6, err_msg=f"{name} b={batch}")


def test_lstm_gradients_through_batch_sized_states_match_pytorch():
    ours, ref = _lstm_twins(1)
    x = gc.input("x", ("batch", T, I))
    state = (gc.zeros((L, x.size(0), H)), gc.ones(L, x.shape[0], H))
    out, _ = ours(x, state)
    loss = (out * out).mean()
    names = [n for n, _ in ours.named_parameters()]
    grads = gc.grad(loss, [p for _, p in ours.named_parameters()])
    got = gc.compile([x], dict(zip(names, grads))).run(
        {"x": (xb := np.random.default_rng(1).normal(size=(4, T, I)).astype(np.float32))})
    t_out, _ = ref(torch.from_numpy(xb), (torch.zeros(L, 4, H), torch.ones(L, 4, H)))
    (t_out * t_out).mean().backward()
    for name, p in ref.named_parameters():
        np.testing.assert_allclose(got[name], p.grad.numpy(), rtol=1e-4, atol=1e-6, err_msg=name)


# ---- numel, size arithmetic ---------------------------------------------------
def test_numel_static_is_an_int_symbolic_is_a_run_time_tensor():
    assert gc.input("x", (2, 3, 4)).numel() == torch.zeros(2, 3, 4).numel()
    lin = nn.Linear(5, 3)
    assert [p.numel() for p in lin.parameters()] == [p.numel() for p in torch.nn.Linear(5, 3).parameters()]
    x = gc.input("x", ("batch", 3, 4))
    n = x.numel()
    assert isinstance(n, gc.Tensor) and n.shape == () and n.dtype == np.int64
    got = run([x], {"n": n, "mean": x.sum() / x.numel(), "per_sample": x.sum() / x.size(0)},
              {"x": (xb := np.arange(72, dtype=np.float32).reshape(6, 3, 4))})
    assert got["n"] == 72 and got["n"].dtype == np.int64
    np.testing.assert_allclose(got["mean"], xb.mean(), rtol=1e-6)
    np.testing.assert_allclose(got["per_sample"], xb.sum() / 6, rtol=1e-6)


# ---- clamp ---------------------------------------------------------------------
def test_clamp_family_matches_torch():
    x = gc.input("x", ("batch", 4))
    lo = gc.input("lo", (4,))
    outs = {"both": x.clamp(-0.5, 0.5), "min": x.clamp(min=0.0), "max": x.clamp(max=0.1),
            "cmin": x.clamp_min(0.2), "cmax": x.clamp_max(-0.2), "clip": x.clip(-1, 1),
            "tensor": x.clamp(lo, 0.3), "swapped": x.clamp(1.0, -1.0)}
    xb = np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32)
    lb = np.array([-1.0, 0.0, 0.2, 0.5], np.float32)
    got = run([x, lo], outs, {"x": xb, "lo": lb})
    t, tl = torch.from_numpy(xb), torch.from_numpy(lb)
    want = {"both": t.clamp(-0.5, 0.5), "min": t.clamp(min=0.0), "max": t.clamp(max=0.1), "cmin": t.clamp_min(0.2),
            "cmax": t.clamp_max(-0.2), "clip": t.clip(-1, 1), "tensor": t.clamp(tl, torch.tensor(0.3)),
            "swapped": t.clamp(1.0, -1.0)}
    for name, ref in want.items():
        np.testing.assert_array_equal(got[name], ref.numpy(), err_msg=name)


def test_clamp_without_bounds_or_with_a_bad_bound_is_an_error():
    x = gc.input("x", (3,))
    with pytest.raises(ShapeError, match="Clip: at least one of min and max must be given"):
        x.clamp()
    with pytest.raises(ShapeError, match="Clip: max must be a number or a Tensor, got str"):
        x.clamp(0.0, "1")


# ---- cumsum, cat ---------------------------------------------------------------
def test_cumsum_values_and_dtypes_match_torch():
    f = gc.input("f", ("batch", 4))
    i = gc.input("i", (2, 3), dtype="int32")
    b = gc.input("b", (5,), dtype="bool")
    outs = {"f1": f.cumsum(1), "f0": gc.cumsum(f, dim=0), "i32": i.cumsum(-1), "bool": b.cumsum(0),
            "i64": gc.cumsum(i, 0, dtype="float64")}
    fb = np.random.default_rng(3).normal(size=(3, 4)).astype(np.float32)
    ib = np.arange(6, dtype=np.int32).reshape(2, 3)
    bb = np.array([True, False, True, True, False])
    got = run([f, i, b], outs, {"f": fb, "i": ib, "b": bb})
    tf, ti, tb = torch.from_numpy(fb), torch.from_numpy(ib), torch.from_numpy(bb)
    want = {"f1": tf.cumsum(1), "f0": torch.cumsum(tf, dim=0), "i32": ti.cumsum(-1), "bool": tb.cumsum(0),
            "i64": torch.cumsum(ti, 0, dtype=torch.float64)}
    for name, ref in want.items():
        assert got[name].dtype == ref.numpy().dtype, name
        np.testing.assert_allclose(got[name], ref.numpy(), rtol=1e-6, err_msg=name)


def test_cumsum_bad_dim_is_an_error():
    x = gc.input("x", ("batch", 4))
    with pytest.raises(ShapeError, match="CumSum: dim 2 is out of range for a tensor of rank 2"):
        x.cumsum(2)
    with pytest.raises(ShapeError, match="CumSum: dim must be an int, got None"):
        gc.cumsum(x, None)


def test_cat_is_concat():
    a, b = gc.input("a", ("batch", 2)), gc.input("b", ("batch", 3))
    got = run([a, b], {"y": gc.cat([a, b], 1)}, {"a": np.ones((2, 2), np.float32), "b": np.zeros((2, 3), np.float32)})
    np.testing.assert_array_equal(got["y"], torch.cat([torch.ones(2, 2), torch.zeros(2, 3)], 1).numpy())
