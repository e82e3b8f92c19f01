"""Module printouts equal PyTorch's: ``repr(graphc_module) == repr(torch_module)`` for every layer class.

Each case is one constructor call written once and run against ``graphc.nn`` and ``torch.nn``.
``test_every_layer_class_has_a_case`` fails when a layer class exported by ``graphc.nn`` has no case here.
Loss modules (``graphc/nn/loss.py``, ``*Loss``) are left to that file's own tests.
"""

from __future__ import annotations

import pytest

import graphc as gc
from graphc import nn

torch = pytest.importorskip("torch")

CASES = [
    ("Linear", lambda m: m.Linear(784, 128)),
    ("Linear", lambda m: m.Linear(3, 1, bias=False)),
    ("ReLU", lambda m: m.ReLU()),
    ("ReLU", lambda m: m.ReLU(inplace=True)),
    ("Sigmoid", lambda m: m.Sigmoid()),
    ("Tanh", lambda m: m.Tanh()),
    ("GELU", lambda m: m.GELU()),
    ("GELU", lambda m: m.GELU(approximate="tanh")),
    ("LeakyReLU", lambda m: m.LeakyReLU()),
    ("LeakyReLU", lambda m: m.LeakyReLU(0.2, inplace=True)),
    ("Softplus", lambda m: m.Softplus()),
    ("Softplus", lambda m: m.Softplus(beta=2.0, threshold=10.0)),
    ("Softmax", lambda m: m.Softmax(dim=1)),
    ("Softmax", lambda m: m.Softmax(-1)),
    ("LogSoftmax", lambda m: m.LogSoftmax(dim=1)),
    ("Dropout", lambda m: m.Dropout()),
    ("Dropout", lambda m: m.Dropout(0.2, inplace=True)),
    ("Identity", lambda m: m.Identity()),
    ("Flatten", lambda m: m.Flatten()),
    ("Flatten", lambda m: m.Flatten(0, 2)),
    ("Conv1d", lambda m: m.Conv1d(3, 8, 5)),
    ("Conv1d", lambda m: m.Conv1d(4, 8, 3, stride=2, padding=1, dilation=2, groups=2, bias=False)),
    ("Conv2d", lambda m: m.Conv2d(1, 32, 3, padding=1)),
    ("Conv2d", lambda m: m.Conv2d(3, 6, 5)),
    ("Conv2d", lambda m: m.Conv2d(4, 6, (3, 5), stride=2, padding=(1, 2), dilation=2, groups=2, bias=False)),
    ("Conv2d", lambda m: m.Conv2d(3, 6, 3, padding="same")),
    ("ConvTranspose2d", lambda m: m.ConvTranspose2d(8, 4, 2, stride=2)),
    ("ConvTranspose2d", lambda m: m.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1, bias=False)),
    ("Upsample", lambda m: m.Upsample(scale_factor=2)),
    ("Upsample", lambda m: m.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False)),
    ("Upsample", lambda m: m.Upsample(size=(8, 8), mode="nearest")),
    ("UpsamplingNearest2d", lambda m: m.UpsamplingNearest2d(scale_factor=2)),
    ("UpsamplingBilinear2d", lambda m: m.UpsamplingBilinear2d(scale_factor=2)),
    ("MaxPool2d", lambda m: m.MaxPool2d(2)),
    ("MaxPool2d", lambda m: m.MaxPool2d(2, 2)),
    ("MaxPool2d", lambda m: m.MaxPool2d((3, 3), stride=(1, 1), padding=1, dilation=2, ceil_mode=True)),
    ("AvgPool2d", lambda m: m.AvgPool2d(2)),
    ("AvgPool2d", lambda m: m.AvgPool2d(3, 1, 1, ceil_mode=True, count_include_pad=False)),
    ("AdaptiveAvgPool2d", lambda m: m.AdaptiveAvgPool2d(1)),
    ("AdaptiveAvgPool2d", lambda m: m.AdaptiveAvgPool2d((1, 1))),
    ("BatchNorm1d", lambda m: m.BatchNorm1d(64)),
    ("BatchNorm2d", lambda m: m.BatchNorm2d(3, eps=1e-3, momentum=0.01, affine=False, track_running_stats=False)),
    ("BatchNorm2d", lambda m: m.BatchNorm2d(8, bias=False)),
    ("Embedding", lambda m: m.Embedding(10, 3)),
    ("Embedding", lambda m: m.Embedding(10, 3, padding_idx=-1)),
    ("LayerNorm", lambda m: m.LayerNorm(64)),
    ("LayerNorm", lambda m: m.LayerNorm((3, 4), eps=1e-6, elementwise_affine=False)),
    ("LayerNorm", lambda m: m.LayerNorm([5], bias=False)),
    ("RNN", lambda m: m.RNN(3, 4)),
    ("RNN", lambda m: m.RNN(3, 4, nonlinearity="relu", num_layers=2, dropout=0.5)),
    ("LSTM", lambda m: m.LSTM(28, 128, num_layers=2, batch_first=True)),
    ("LSTM", lambda m: m.LSTM(28, 128, 2, bias=False, dropout=0.2, bidirectional=True, proj_size=64)),
    ("GRU", lambda m: m.GRU(3, 4, bias=False)),
    ("GRU", lambda m: m.GRU(3, 4, batch_first=True, bidirectional=True)),
    ("Sequential", lambda m: m.Sequential()),
    ("Sequential", lambda m: m.Sequential(m.Linear(2, 3), m.ReLU(), m.Sequential(m.Linear(3, 1), m.Sigmoid()))),
]

_PRESENT = [(name, build) for name, build in CASES if hasattr(nn, name)]


@pytest.mark.parametrize("name, build", _PRESENT, ids=[f"{n}-{i}" for i, (n, _) in enumerate(_PRESENT)])
def test_layer_repr_equals_pytorch(name, build):
    assert repr(build(nn)) == repr(build(torch.nn))


def test_every_layer_class_has_a_case():
    layer_classes = {name for name in nn.__all__
                     if isinstance(getattr(nn, name), type) and issubclass(getattr(nn, name), nn.Module)}
    layer_classes = {name for name in layer_classes if not name.endswith("Loss")}
    missing = sorted(layer_classes - {"Module"} - {name for name, _ in CASES})
    assert not missing, f"layer classes with no repr case in tests/test_module_repr.py: {missing}"


def _mlp_pair(m):
    class MLP(m.Module):
        def __init__(self):
            super().__init__()
            self.fc1 = m.Linear(784, 128)
            self.bn = m.BatchNorm1d(128)
            self.head = m.Sequential(m.ReLU(), m.Dropout(0.1), m.Linear(128, 10))

        def forward(self, x):
            return self.head(self.bn(self.fc1(x)))
    return MLP()


def test_nested_model_repr_equals_pytorch():
    text = repr(_mlp_pair(nn))
    assert text == repr(_mlp_pair(torch.nn))
    assert "\n  (fc1): Linear(in_features=784, out_features=128, bias=True)\n" in text


class _Extra:
    """A user module with a multi-line extra_repr and a child, in both frameworks."""

    @staticmethod
    def build(m):
        class Block(m.Module):
            def __init__(self):
                super().__init__()
                self.proj = m.Linear(2, 2)

            def extra_repr(self):
                return "scale=2\nshift=1"
        return Block()


def test_user_extra_repr_layout_equals_pytorch():
    assert repr(_Extra.build(nn)) == repr(_Extra.build(torch.nn))
    assert repr(nn.Module()) == repr(torch.nn.Module()) == "Module()"


def test_lstm_model_repr_from_the_tutorial():
    class RNNModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = nn.LSTM(28, 128, 2, batch_first=True)
            self.fc = nn.Linear(128, 10)

    assert repr(RNNModel()) == ("RNNModel(\n  (lstm): LSTM(28, 128, num_layers=2, batch_first=True)\n"
                                "  (fc): Linear(in_features=128, out_features=10, bias=True)\n)")
    assert gc is not None
