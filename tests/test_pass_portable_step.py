"""PortableStepPass and state_model: the dropout key is derived in the graph exactly as the Trainer derives it."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx.reference import ReferenceEvaluator

import graphc as gc
import graphc.nn.functional as F
from graphc import nn
from graphc.random import key_for_step
from passes.portable_step import STATE_INPUTS_KEY, PortableStepPass, seed_value, state_model


def _scalar(name: str, dtype=ir.DataType.INT64) -> ir.Value:
    return ir.Value(name=name, shape=ir.Shape([]), type=ir.TensorType(dtype))


def key_model() -> ir.Model:
    """A stand-in step: inputs rng_key, step, lr; outputs the key it uses and step + 1."""
    key, step, lr = _scalar("rng_key"), _scalar("step"), _scalar("lr", ir.DataType.DOUBLE)
    used = ir.Node("", "Identity", [key], name="uses_key")
    used.outputs[0].name = "key_used"
    one = ir.Node("", "Constant", [], [ir.AttrTensor("value", ir.Tensor(np.asarray(1, np.int64)))])
    nxt = ir.Node("", "Add", [step, one.outputs[0]])
    nxt.outputs[0].name = "step.updated"
    lr_out = ir.Node("", "Identity", [lr])
    lr_out.outputs[0].name = "lr_seen"
    for node, like in ((used, key), (one, step), (nxt, step), (lr_out, lr)):
        node.outputs[0].type, node.outputs[0].shape = like.type, like.shape
    graph = ir.Graph([key, step, lr], [used.outputs[0], nxt.outputs[0], lr_out.outputs[0]],
                     nodes=[used, one, nxt, lr_out], opset_imports={"": 21}, name="stand_in_step")
    return ir.Model(graph, ir_version=10, metadata_props={"graphc.state_pairs": json.dumps([["step", "step.updated"]])})


SEEDS = [0, 3, 2 ** 31 + 5, 2 ** 32 + 7, -1, -(2 ** 40) + 11, 2 ** 63 + 9, 12345678901234567890]
STEPS = [0, 1, 7, 2 ** 31 - 1, 2 ** 31, 2 ** 32 + 3]


def test_derived_key_equals_key_for_step_in_onnxruntime_and_the_reference():
    model = key_model()
    result = PortableStepPass()(model)
    assert result.modified
    assert [v.name for v in model.graph.inputs] == ["step", "lr", "seed"]
    assert json.loads(model.metadata_props[STATE_INPUTS_KEY]) == ["step", "lr", "seed"]
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ReferenceEvaluator(proto)
    for seed in SEEDS:
        for step in STEPS:
            feeds = {"seed": seed_value(seed), "step": np.asarray(step, np.int64), "lr": np.asarray(0.5)}
            expected = key_for_step(seed, step)
            (got,) = session.run(["key_used"], feeds)
            (ref,) = reference.run(["key_used"], feeds)
            assert got.dtype == np.int64 and got.shape == ()
            assert int(got) == int(expected), (seed, step)
            assert int(ref) == int(expected), (seed, step)


def test_seed_value_keeps_the_low_32_bits_of_any_int():
    for seed in SEEDS:
        assert seed_value(seed).dtype == np.int64
        assert int(seed_value(seed)) % 2 ** 32 == seed % 2 ** 32


def test_model_without_random_draws_gets_no_seed_and_keeps_its_nodes():
    model = key_model()
    identity = model.graph.node(0)
    identity.replace_input_with(0, model.graph.inputs[1])  # use step, drop the key
    model.graph.inputs.remove(model.graph.inputs[0])
    before = [n.op_type for n in model.graph]
    PortableStepPass()(model)
    assert [v.name for v in model.graph.inputs] == ["step", "lr"]
    assert [n.op_type for n in model.graph] == before
    assert json.loads(model.metadata_props[STATE_INPUTS_KEY]) == ["step", "lr"]


def test_initializer_backed_input_is_refused_by_name():
    model = key_model()
    lr = model.graph.inputs[2]
    lr.const_value = ir.Tensor(np.asarray(0.1), name="lr")
    model.graph.register_initializer(lr)
    with pytest.raises(ValueError, match=r"inputs \['lr'\] have initializers.*plain inputs"):
        PortableStepPass()(model)


def test_key_without_an_int64_step_input_is_refused():
    model = key_model()
    with pytest.raises(ValueError, match="'rng_key' must be derived from an int64 scalar input 'counter'"):
        PortableStepPass(step_name="counter")(model)


def test_state_model_outputs_the_values_by_name_in_order():
    values = {"fc.weight": np.arange(6, dtype=np.float32).reshape(2, 3), "step": np.asarray(4, np.int64),
              "lr": np.asarray(0.01), "seed": seed_value(-3)}
    proto = ir.serde.serialize_model(state_model(values))
    onnx.checker.check_model(proto, full_check=True)
    assert not proto.graph.input
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(values)
    for (name, expected), got in zip(values.items(), session.run(None, {})):
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected, err_msg=name)


# ---- on a Trainer's step ---------------------------------------------------------------
def dropout_trainer(optimizer=gc.optim.Adam, **hparams):
    gc.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    x = gc.input("x", shape=("batch", 6))
    y = gc.input("y", shape=("batch",), dtype="int64")
    return gc.Trainer(F.cross_entropy(model(x), y), optimizer(model.parameters(), **hparams), inputs=[x, y],
                      seed=2 ** 33 + 5)


def test_trainer_step_model_is_portable(tmp_path):
    trainer = dropout_trainer(lr=1e-2)
    trainer.save(tmp_path / "step.onnx")
    step = onnx.load(str(tmp_path / "step.onnx"))
    state = onnx.load(str(tmp_path / "step.state.onnx"))
    for model in (step, state):
        onnx.checker.check_model(model, full_check=True)
    initializers = {t.name for t in step.graph.initializer}
    inputs = [i.name for i in step.graph.input]
    assert not initializers & set(inputs), "a state input must not have an initializer"
    assert "rng_key" not in inputs and "seed" in inputs
    assert not state.graph.input
    state_names = [o.name for o in state.graph.output]
    assert sorted(state_names) == sorted(set(inputs) - {"x", "y"})
    meta = {p.key: p.value for p in step.metadata_props}
    assert json.loads(meta[STATE_INPUTS_KEY]) == state_names
    outputs = [o.name for o in step.graph.output]
    assert outputs[0] == "loss"
    updated = [n[: -len(".updated")] for n in outputs if n.endswith(".updated")]
    assert set(updated) <= set(state_names) and {"lr", "seed"} - set(updated) == {"lr", "seed"}
    assert {"0.weight", "0.bias", "3.weight", "3.bias", "step"} <= set(updated)


def test_plain_onnxruntime_logs_no_warning_for_the_saved_files(tmp_path):
    dropout_trainer(lr=1e-2).save(tmp_path / "step.onnx")
    script = ("import onnxruntime as ort, sys\n"
              "o = ort.SessionOptions(); o.log_severity_level = 1\n"  # 1 = info: warnings and errors shown
              "for p in sys.argv[1:]: ort.InferenceSession(p, o, providers=['CPUExecutionProvider'])\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "step.onnx"),
                           str(tmp_path / "step.state.onnx")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    log = done.stdout + done.stderr
    assert "Session successfully initialized" in log  # the log is captured at all
    assert "[W:" not in log and "[E:" not in log, log


def test_state_path_of_names_without_the_onnx_suffix(tmp_path):
    trainer = dropout_trainer(lr=1e-2)
    trainer.save(tmp_path / "step")
    assert (tmp_path / "step").is_file() and (tmp_path / "step.state.onnx").is_file()
