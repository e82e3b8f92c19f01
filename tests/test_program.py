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


def test_save_with_external_data_stays_in_the_models_folder_and_loads(tmp_path):
    gc.manual_seed(0)
    x = gc.input("x", ("batch", 64))
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    program = gc.compile([x], {"logits": model(x)})
    folder = tmp_path / "export"
    folder.mkdir()
    program.save(folder / "m.onnx", external_data=True)
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["m.onnx", "m.onnx.data"]
    assert (folder / "m.onnx").stat().st_size < 10_000  # the weights are outside the protobuf
    from runtime.model_loading import make_session
    xb = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    session = make_session(str(folder / "m.onnx"), "cpu")
    np.testing.assert_allclose(session.run(None, {"x": xb})[0], program.run({"x": xb})["logits"], rtol=1e-6)
