"""Program: a snapshot of the parameters until refresh(), and clear feed errors."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
import graphc.nn.functional as F
from graphc import nn


def test_program_is_a_snapshot_until_refresh():
    gc.manual_seed(0)
    x = gc.input("x", ("batch", 3))
    y = gc.input("y", ("batch",), "int64")
    layer = nn.Linear(3, 2)
    logits = layer(x)
    program = gc.compile([x], {"logits": logits})
    xb = np.ones((1, 3), np.float32)
    before = program.run({"x": xb})["logits"]
    trainer = gc.Trainer(F.cross_entropy(logits, y), gc.optim.SGD(layer.parameters(), lr=1.0), [x, y])
    trainer.step({"x": xb, "y": np.array([0])})
    np.testing.assert_array_equal(program.run({"x": xb})["logits"], before)
    after = program.refresh().run({"x": xb})["logits"]
    expected = xb @ layer.weight.data.T + layer.bias.data
    np.testing.assert_allclose(after, expected, rtol=1e-6)
    assert not np.allclose(after, before)


def test_feed_errors_name_the_input():
    x = gc.input("x", ("batch", 3))
    program = gc.compile([x], {"y": x * 2.0})
    with pytest.raises(ValueError, match=r"input 'x'.*\(batch=2, 3\).*\(2, 4\)"):
        program.run({"x": np.ones((2, 4), np.float32)})
    with pytest.raises(ValueError, match="unknown input 'z'.*'x'"):
        program.run({"z": np.ones((2, 3), np.float32)})
