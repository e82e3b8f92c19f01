"""``gc.summary``: rows, output shapes and parameter counts against the twin PyTorch modules.

Each model is written once over a module namespace ``m`` and built with ``graphc.nn`` and ``torch.nn``.
PyTorch runs a real batch of 3 with forward hooks recording every module's output shapes; graphc's
summary must list the same modules in the same order with the same shapes (the symbolic batch read
as 3), and the same parameter totals (``sum(p.numel() for p in torch_model.parameters())``).
Forward hooks themselves (``register_forward_hook``/``register_forward_pre_hook``) are checked too.
"""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc import nn

torch = pytest.importorskip("torch")
BATCH = 3


def mlp(m):
    return m.Sequential(m.Flatten(), m.Linear(784, 128), m.BatchNorm1d(128), m.ReLU(), m.Dropout(0.2),
                        m.Linear(128, 10))


def cnn(m):
    class CNN(m.Module):
        def __init__(self):
            super().__init__()
            self.features = m.Sequential(m.Conv2d(3, 8, 3, padding=1), m.BatchNorm2d(8), m.ReLU(), m.MaxPool2d(2),
                                         m.Conv2d(8, 16, 3), m.ReLU(), m.AvgPool2d(2))
            self.pool = m.AdaptiveAvgPool2d(1)
            self.fc = m.Linear(16, 10)

        def forward(self, x):
            return self.fc(self.pool(self.features(x)).flatten(1))
    return CNN()


def lstm(m):
    class Tagger(m.Module):
        def __init__(self):
            super().__init__()
            self.embed = m.Embedding(50, 12, padding_idx=0)
            self.lstm = m.LSTM(12, 16, num_layers=2, batch_first=True, bidirectional=True)
            self.norm = m.LayerNorm(32)
            self.fc = m.Linear(32, 5)

        def forward(self, tokens):
            out, _ = self.lstm(self.embed(tokens))
            return self.fc(self.norm(out[:, -1, :]))
    return Tagger()


def shared(m):
    class Shared(m.Module):
        def __init__(self):
            super().__init__()
            self.block = m.Linear(6, 6)
            self.head = m.Linear(6, 2, bias=False)

        def forward(self, x):
            return self.head(self.block(self.block(x)).tanh())
    return Shared()


MODELS = {  # id -> (factory, graphc input shape, numpy input maker, dtype)
    "mlp": (mlp, ("batch", 1, 28, 28), lambda rng: rng.normal(size=(BATCH, 1, 28, 28)), "float32"),
    "cnn": (cnn, ("batch", 3, 12, 12), lambda rng: rng.normal(size=(BATCH, 3, 12, 12)), "float32"),
    "lstm": (lstm, ("batch", 7), lambda rng: rng.integers(0, 50, size=(BATCH, 7)), "int64"),
    "shared": (shared, ("batch", 6), lambda rng: rng.normal(size=(BATCH, 6)), "float32"),
}


def torch_calls(model, array):
    """[(dotted name, [output shapes])] in call order, from PyTorch forward hooks on a real batch."""
    names = {id(mod): name for name, mod in model.named_modules()}
    calls, opened = [], []

    def pre(mod, args):
        opened.append(len(calls))
        calls.append([names[id(mod)], None])

    def post(mod, args, out):
        def flat(o):
            return [o] if isinstance(o, torch.Tensor) else [t for item in o for t in flat(item)]
        calls[opened.pop()][1] = [tuple(t.shape) for t in flat(out)]

    for mod in model.modules():
        mod.register_forward_pre_hook(pre)
        mod.register_forward_hook(post)
    with torch.no_grad():
        model(torch.from_numpy(array))
    return [(name, shapes) for name, shapes in calls]


@pytest.mark.parametrize("model_id", MODELS)
def test_rows_shapes_and_counts_match_pytorch(model_id):
    factory, shape, make, dtype = MODELS[model_id]
    ours, ref = factory(nn), factory(torch.nn)
    ref.eval()
    array = make(np.random.default_rng(0))
    array = array.astype(np.float32) if dtype == "float32" else array
    s = gc.summary(ours, shape, dtype=dtype)
    resolved = [(row.name, [tuple(BATCH if d == "batch" else d for d in sh) for sh in row.output_shapes])
                for row in s.rows]
    assert resolved == torch_calls(ref, array)
    assert [row.type for row in s.rows] == [type(mod).__name__ for mod in
                                            [dict(ref.named_modules())[row.name] for row in s.rows]]
    total = sum(p.numel() for p in ref.parameters())
    assert (s.total_params, s.trainable_params, s.non_trainable_params) == (total, total, 0)
    per_module = {name: sum(p.numel() for p in mod.parameters(recurse=False)) for name, mod in ref.named_modules()}
    first = {}
    for row in s.rows:
        first.setdefault(row.name, row)
    for name, row in first.items():
        assert row.params == per_module[name], name


def test_frozen_parameters_count_as_non_trainable():
    ours, ref = mlp(nn), mlp(torch.nn)
    for model in (ours, ref):
        model[1].weight.requires_grad = False
    s = gc.summary(ours, ("batch", 1, 28, 28))
    assert s.total_params == sum(p.numel() for p in ref.parameters())
    assert s.trainable_params == sum(p.numel() for p in ref.parameters() if p.requires_grad) == 102026 - 100352
    assert s.non_trainable_params == 100352
    assert s.rows[2].trainable == 128 and s.rows[2].params == 100480


def test_table_text():
    s = gc.summary(mlp(nn), ("batch", 1, 28, 28))
    text = str(s)
    assert repr(s) == text
    lines = text.splitlines()
    assert lines[1].split() == ["Layer", "(type)", "Output", "Shape", "Param", "#"]
    row = next(line for line in lines if line.startswith("  1 (Linear)"))
    assert row.split() == ["1", "(Linear)", "[batch,", "128]", "100,480"]
    assert next(line for line in lines if line.startswith("  3 (ReLU)")).split()[-1] == "0"
    assert lines[3].split() == ["Sequential", "[batch,", "10]", "--"]
    assert "Total params: 102,026" in lines and "Trainable params: 102,026" in lines
    assert "Non-trainable params: 0" in lines


def test_repeated_module_is_marked_recursive_and_counted_once():
    s = gc.summary(shared(nn), ("batch", 6))
    block_rows = [row for row in s.rows if row.name == "block"]
    assert [row.params for row in block_rows] == [42, None]
    assert "(recursive)" in str(s)
    assert s.total_params == 42 + 12


def test_several_inputs_given_as_shapes_or_tensors():
    class Pair(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(10, 4)
            self.fc = nn.Linear(4, 3)

        def forward(self, tokens, weights):
            return self.fc(self.embed(tokens) * weights)

    model = Pair()
    by_shape = gc.summary(model, [("batch", 5), ("batch", 5, 1)], dtype=["int64", "float32"])
    tokens, weights = gc.input("t", ("n", 5), dtype="int64"), gc.input("w", ("n", 5, 1))
    by_tensor = gc.summary(model, [tokens, weights])
    assert by_shape.rows[0].output_shapes == (("batch", 5, 3),)
    assert by_tensor.rows[0].output_shapes == (("n", 5, 3),)
    assert by_shape.total_params == by_tensor.total_params == 10 * 4 + 4 * 3 + 3


def test_unknown_dims_print_as_question_marks():
    s = gc.summary(nn.Sequential(nn.Flatten(0)), ("batch", 3))
    assert s.rows[0].output_shapes == ((None,),) and "[?]" in str(s)


@pytest.mark.parametrize("model, spec, kwargs, error, message", [
    ("not a module", ("batch", 3), {}, TypeError, r"summary: expected an nn.Module, got str"),
    (None, 3, {}, TypeError, r"summary: expected an input shape such as \('batch', 784\), .* got 3"),
    (None, [("batch", 3), ("batch", 3)], {"dtype": ["float32"]}, ValueError,
     r"summary: 2 input shapes but 1 dtypes"),
])
def test_bad_arguments_name_expected_and_given(model, spec, kwargs, error, message):
    with pytest.raises(error, match=message):
        gc.summary(nn.Linear(3, 2) if model is None else model, spec, **kwargs)


def test_summary_leaves_no_hooks_behind_even_when_forward_fails():
    model = nn.Sequential(nn.Linear(3, 2))
    with pytest.raises(gc.ShapeError):
        gc.summary(model, ("batch", 4))
    assert all(not getattr(mod, "_forward_hooks", {}) for mod in model.modules())
    assert gc.summary(model, ("batch", 3)).total_params == 8


def test_forward_hooks_as_in_pytorch():
    lin = nn.Linear(3, 2)
    seen = []
    pre = lin.register_forward_pre_hook(lambda mod, args: seen.append(("pre", mod, args[0].shape)))
    post = lin.register_forward_hook(lambda mod, args, out: out * 2.0)   # a result replaces the output
    x = gc.input("x", ("batch", 3))
    y = lin(x)
    assert seen == [("pre", lin, ("batch", 3))]
    xb = np.ones((2, 3), np.float32)
    expected = 2.0 * (xb @ lin.weight.data.T + lin.bias.data)
    np.testing.assert_allclose(gc.compile([x], {"y": y}).run({"x": xb})["y"], expected, rtol=1e-6)
    pre.remove()
    post.remove()
    lin(x)
    assert len(seen) == 1
    with pytest.raises(TypeError, match="a forward hook must be callable, got int"):
        lin.register_forward_hook(3)
