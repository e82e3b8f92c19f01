"""FoldConstantsPass: constant subgraphs (eval LSTM/GRU weight reordering) become initializers, same outputs."""

from __future__ import annotations

import graphc as gc
from graphc import nn
from passes.export.fold_constants import FoldConstantsPass

from export_pass_helpers import apply_and_compare, op_types, randn, unoptimized


def recurrent(layer):
    x = gc.input("x", shape=("batch", 5, 8))
    layer.eval()
    out = layer(x)[0]
    return unoptimized([x], {"y": out[:, -1, :]}), {"x": randn(3, 5, 8)}


def test_eval_lstm_weight_gathers_disappear():
    model, feeds = recurrent(nn.LSTM(8, 16, num_layers=2, batch_first=True))
    assert op_types(model).count("Gather") == 8
    result = apply_and_compare(FoldConstantsPass(), model, feeds)
    assert result.modified
    types = op_types(model)
    assert "Gather" not in types and "Concat" not in types and "Unsqueeze" not in types
    assert types.count("LSTM") == 2
    # the original (PyTorch-layout) weights were replaced, not kept beside their folded copies
    assert not {"weight_ih_l0", "weight_hh_l1"} & set(model.graph.initializers)


def test_eval_gru_weight_gathers_disappear():
    model, feeds = recurrent(nn.GRU(8, 16, batch_first=True))
    result = apply_and_compare(FoldConstantsPass(), model, feeds)
    assert result.modified and "Gather" not in op_types(model) and op_types(model).count("GRU") == 1


def test_transposed_weight_is_folded_and_inputs_are_never_constant():
    x = gc.input("x", shape=("batch", 5, 8))
    model = unoptimized([x], {"y": nn.Linear(8, 4)(x)})
    assert op_types(model) == ["Transpose", "MatMul", "Add"]
    assert apply_and_compare(FoldConstantsPass(), model, {"x": randn(2, 5, 8)}).modified
    assert op_types(model) == ["MatMul", "Add"]


def test_nothing_constant_is_not_modified():
    x = gc.input("x", shape=("batch", 8))
    model = unoptimized([x], {"y": x * x + x})
    result = apply_and_compare(FoldConstantsPass(), model, {"x": randn(2, 8)})
    assert not result.modified and op_types(model) == ["Mul", "Add"]
