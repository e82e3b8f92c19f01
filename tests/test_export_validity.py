"""Every file graphc writes validates everywhere (issue 10, item 1).

For the tutorial and benchmark models, with and without the export pipeline, and for saved training
steps: ``onnx.checker.check_model(full_check=True)``, ``infer_shapes(strict_mode=True)``, no
``value_info`` for initializers, and every ``value_info`` graphc wrote agrees with what ONNX infers.
ONNX Runtime's ``quantize_dynamic`` runs on the MLP export (it failed on stale initializer
``value_info`` before: "Inferred shape and existing shape differ in dimension 0").
"""

from __future__ import annotations

import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnxruntime.quantization import quantize_dynamic

import graphc as gc
import graphc.nn.functional as F
from graphc import nn


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(64, 128), nn.Linear(128, 64), nn.Linear(64, 10)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.pool, self.conv2 = nn.Conv2d(3, 6, 5), nn.MaxPool2d(2, 2), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x))).flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class PaddedCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.pool, self.dropout, self.fc = nn.MaxPool2d(2), nn.Dropout(0.5), nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        return self.fc(self.dropout(x.flatten(1)))


class Recurrent(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.rnn = kind(12, 16, num_layers=2, batch_first=True)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(self.rnn(x)[0][:, -1, :])


class TokenBlock(nn.Module):
    """Embedding, LayerNorm, GELU and a Linear over a sequence: the fusion patterns in one model."""

    def __init__(self):
        super().__init__()
        self.embed, self.norm, self.fc = nn.Embedding(20, 16), nn.LayerNorm(16), nn.Linear(16, 16)

    def forward(self, tokens):
        return self.fc(F.gelu(self.norm(self.embed(tokens)))).mean(1)


def image(channels=3, size=32):
    return gc.input("x", shape=("batch", channels, size, size))


CASES = {
    "mlp": (MLP, lambda: gc.input("x", shape=("batch", 64))),
    "lenet": (LeNet, image),
    "padded_cnn": (PaddedCNN, image),
    "lstm": (lambda: Recurrent(nn.LSTM), lambda: gc.input("x", shape=("batch", 7, 12))),
    "gru": (lambda: Recurrent(nn.GRU), lambda: gc.input("x", shape=("batch", 7, 12))),
    "token_block": (TokenBlock, lambda: gc.input("x", shape=("batch", 9), dtype="int64")),
}


def assert_valid_everywhere(path) -> None:
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        initializers = {t.name for t in graph.initializer}
        stale = [info.name for info in graph.value_info if info.name in initializers]
        assert not stale, f"{path}: value_info written for initializers {stale}"
        for node in graph.node:
            for attribute in node.attribute:
                graphs.extend([attribute.g] if attribute.HasField("g") else [])
                graphs.extend(attribute.graphs)
    assert_value_info_agrees_with_inference(model, path)


def assert_value_info_agrees_with_inference(model: onnx.ModelProto, path) -> None:
    """Each value_info graphc wrote has ONNX's inferred dtype and rank and no conflicting fixed dim."""
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.value_info[:]
    inferred = {info.name: info for info in
                onnx.shape_inference.infer_shapes(bare, strict_mode=True, data_prop=True).graph.value_info}
    for written in model.graph.value_info:
        theirs = inferred.get(written.name)
        if theirs is None:
            continue
        ours_t, theirs_t = written.type.tensor_type, theirs.type.tensor_type
        assert ours_t.elem_type == theirs_t.elem_type, f"{path}: {written.name} dtype"
        if ours_t.HasField("shape") and theirs_t.HasField("shape"):
            ours_dims, their_dims = ours_t.shape.dim, theirs_t.shape.dim
            assert len(ours_dims) == len(their_dims), f"{path}: {written.name} rank"
            for mine, inferred_dim in zip(ours_dims, their_dims):
                if mine.HasField("dim_value") and inferred_dim.HasField("dim_value"):
                    assert mine.dim_value == inferred_dim.dim_value, f"{path}: {written.name} {ours_dims} vs {their_dims}"


@pytest.mark.parametrize("optimize", [True, False], ids=["pipeline", "raw"])
@pytest.mark.parametrize("name", list(CASES))
def test_program_save_validates_everywhere(tmp_path, name, optimize):
    make_model, make_input = CASES[name]
    gc.manual_seed(0)
    module = make_model()
    module.eval()
    x = make_input()
    path = tmp_path / f"{name}.onnx"
    gc.compile([x], {"logits": module(x)}, optimize=optimize).save(path)
    assert_valid_everywhere(path)


@pytest.mark.parametrize("name", ["mlp", "padded_cnn", "lstm"])
def test_trainer_save_validates_everywhere(tmp_path, name):
    make_model, make_input = CASES[name]
    gc.manual_seed(0)
    module = make_model()
    x, y = make_input(), gc.input("y", shape=("batch",), dtype="int64")
    trainer = gc.Trainer(F.cross_entropy(module(x), y), gc.optim.Adam(module.parameters()), inputs=[x, y])
    trainer.save(tmp_path / "step.onnx")
    files = sorted(tmp_path.glob("*.onnx"))
    assert files
    for path in files:
        assert_valid_everywhere(path)


def test_quantize_dynamic_runs_on_the_mlp_export(tmp_path):
    gc.manual_seed(0)
    X, y = gc.data.load_digits()
    x, labels = gc.input("x", shape=("batch", 64)), gc.input("y", shape=("batch",), dtype="int64")
    module = MLP()
    trainer = gc.Trainer(F.cross_entropy(module(x), labels), gc.optim.Adam(module.parameters(), lr=1e-2),
                         inputs=[x, labels], seed=0)
    for _ in range(3):
        for xb, yb in gc.data.DataLoader(X, y, batch_size=128, shuffle=True, seed=0):
            trainer.step({"x": xb, "y": yb})
    fp32, int8 = tmp_path / "mlp.onnx", tmp_path / "mlp.int8.onnx"
    gc.compile([x], {"logits": module(x)}).save(fp32)
    quantize_dynamic(str(fp32), str(int8))
    assert_valid_everywhere(int8)
    assert int8.stat().st_size < 0.5 * fp32.stat().st_size
    run = lambda p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"x": X})[0]  # noqa: E731
    reference, quantized = run(fp32), run(int8)
    agreement = float((reference.argmax(1) == quantized.argmax(1)).mean())
    assert agreement > 0.95, agreement
    accuracy = float((reference.argmax(1) == y).mean())
    assert accuracy > 0.85
    assert abs(float((quantized.argmax(1) == y).mean()) - accuracy) < 0.02
