"""Issue 7.2 (== and != build element-wise tensors) and 7.8 (optimizer values checked in the lr setter too)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import graphc as gc
import graphc.nn.functional as F
from graphc import nn


def test_eq_ne_build_elementwise_tensors_and_accuracy_works():
    logits = gc.input("logits", ("batch", 3))
    y = gc.input("y", ("batch",), "int64")
    predicted = logits.argmax(1)
    correct = (predicted == y).astype("float32").sum()
    wrong = (predicted != y).astype("float32").mean()
    program = gc.compile([logits, y], {"correct": correct, "wrong": wrong, "eq": predicted == y,
                                       "ne": predicted != 1, "inv": ~(predicted == y)})
    lb = np.array([[0, 2, 1], [3, 0, 0], [0, 0, 1], [1, 0, 0]], np.float32)
    yb = np.array([1, 0, 1, 2])
    out = program.run({"logits": lb, "y": yb})
    expected = lb.argmax(1) == yb
    assert out["correct"] == expected.sum() == 2
    assert out["wrong"] == pytest.approx((~expected).mean())
    np.testing.assert_array_equal(out["eq"], expected)
    np.testing.assert_array_equal(out["ne"], lb.argmax(1) != 1)
    np.testing.assert_array_equal(out["inv"], ~expected)


def test_tensors_stay_hashable_by_identity():
    a, b = gc.input("a", (2,)), gc.input("b", (2,))
    table = {a: 1, b: 2}
    assert table[a] == 1 and table[b] == 2 and len({a, b, a}) == 2
    assert isinstance(a == b, gc.Tensor) and isinstance(a != 1.0, gc.Tensor)
    with pytest.raises(TypeError, match="no truth value"):
        bool(a == b)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0, "0.01", None])
def test_lr_setter_validates_like_the_constructor(bad):
    gc.manual_seed(0)
    layer = nn.Linear(2, 2)
    x = gc.input("x", ("batch", 2))
    opt = gc.optim.SGD(layer.parameters(), lr=0.1)
    trainer = gc.Trainer(F.mse_loss(layer(x), x), opt, [x])
    before = layer.weight.data.copy()
    with pytest.raises((ValueError, TypeError), match="learning rate"):
        opt.lr = bad
    with pytest.raises((ValueError, TypeError), match="learning rate"):
        gc.optim.Adam(layer.parameters(), lr=bad)
    assert opt.lr == 0.1
    trainer.step({"x": np.ones((1, 2), np.float32)})
    assert np.isfinite(layer.weight.data).all() and not np.array_equal(layer.weight.data, before)


def test_optimizer_arguments_get_clear_errors():
    layer = nn.Linear(2, 2)
    with pytest.raises(TypeError, match=r"learning rate must be a number, got '0.01' \(str\)"):
        gc.optim.SGD(layer.parameters(), lr="0.01")
    with pytest.raises(TypeError, match="momentum value must be a number"):
        gc.optim.SGD(layer.parameters(), lr=0.1, momentum="0.9")
    with pytest.raises(ValueError, match="betas must be a pair"):
        gc.optim.Adam(layer.parameters(), betas=0.9)
    with pytest.raises(TypeError, match=r"params\[0\] is a Linear"):
        gc.optim.Adam([layer])
    with pytest.raises(TypeError, match="amsgrad must be True or False"):
        gc.optim.Adam(layer.parameters(), amsgrad="yes")
    opt = gc.optim.SGD(layer.parameters(), lr=np.float32(0.5))
    assert type(opt.lr) is float and opt.lr == 0.5
