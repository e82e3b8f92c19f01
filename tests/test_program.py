"""Program: follows the parameters' values, refuses train-mode graphs, clear feed errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import graphc as gc
import graphc.nn.functional as F
from graphc import nn


def test_program_follows_the_parameters_current_values():
    """Issue 7.3: a Program compiled before training runs with the trained weights, no refresh() needed."""
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
    after = program.run({"x": xb})["logits"]
    expected = xb @ layer.weight.data.T + layer.bias.data
    np.testing.assert_allclose(after, expected, rtol=1e-6)
    assert not np.allclose(after, before)
    saved = {t.name: onnx.numpy_helper.to_array(t) for t in program.model.graph.initializer}
    np.testing.assert_array_equal(saved["weight"], layer.weight.data)  # the exported model too
    np.testing.assert_allclose(program.refresh().run({"x": xb})["logits"], after)  # still accepted
    layer.load_state_dict({"weight": np.zeros((2, 3), np.float32), "bias": np.array([1, 2], np.float32)})
    np.testing.assert_array_equal(program.run({"x": xb})["logits"], [[1, 2]])


def test_train_mode_batchnorm_is_refused_unless_opted_in():
    """Issue 7.4: batch statistics in an inference program are refused, like train-mode dropout."""
    gc.manual_seed(0)
    x = gc.input("x", ("batch", 4))
    bn = nn.BatchNorm1d(4)
    out = bn(x)
    with pytest.raises(gc.GraphcError, match=r"batch statistics.*model\.eval\(\)"):
        gc.compile([x], {"y": out})
    program = gc.compile([x], {"y": out}, allow_batch_statistics=True)
    xb = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    expected = (xb - xb.mean(0)) / np.sqrt(xb.var(0) + 1e-5)
    np.testing.assert_allclose(program.run({"x": xb})["y"], expected, rtol=1e-4, atol=1e-5)
    bn.eval()
    single = gc.compile([x], {"y": bn(x)}).run({"x": xb[:1]})["y"]
    np.testing.assert_allclose(single, xb[:1] / np.sqrt(1 + 1e-5), rtol=1e-5)


def test_train_mode_dropout_program_draws_a_fresh_key_per_run():
    """Issue 7.5: Monte-Carlo dropout: no rng_key fed -> a new mask each run, from gc.manual_seed's stream."""
    x = gc.input("x", ("batch", 64))
    program = gc.compile([x], {"y": F.dropout(x, 0.5, training=True)}, allow_random=True)
    xb = np.ones((2, 64), np.float32)
    gc.manual_seed(3)
    first, second = program.run({"x": xb})["y"], program.run({"x": xb})["y"]
    assert not np.array_equal(first, second)
    for out in (first, second):
        assert set(np.unique(out)) <= {0.0, 2.0} and 0.2 < (out == 0).mean() < 0.8
    gc.manual_seed(3)
    np.testing.assert_array_equal(program.run({"x": xb})["y"], first)  # reproducible from the seed
    key = np.asarray(7, np.int64)
    np.testing.assert_array_equal(program.run({"x": xb, "rng_key": key})["y"],
                                  program.run({"x": xb, "rng_key": key})["y"])


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


def test_saved_models_carry_no_source_locations(tmp_path):
    """Run-time errors name the user's line (in memory); the written files hold no local paths."""
    x = gc.input("x", ("batch", 3))
    y = gc.input("y", ("batch",), "int64")
    layer = nn.Linear(3, 2)
    logits = layer(x)
    program = gc.compile([x], {"logits": logits})
    assert any(p.key == "graphc.source" and "test_program.py" in p.value
               for n in program.model.graph.node for p in n.metadata_props)
    program.save(tmp_path / "m.onnx")
    trainer = gc.Trainer(F.cross_entropy(logits, y), gc.optim.SGD(layer.parameters(), lr=0.1), [x, y])
    trainer.save(tmp_path / "step.onnx")
    for name in ("m.onnx", "step.onnx"):
        data = (tmp_path / name).read_bytes()
        assert b"test_program.py" not in data and b"graphc.source" not in data, name
