"""The patches weight gradient over batch chunks (``_patches_batch_chunks`` in ``passes/autodiff/rules/conv.py``).

Layers whose per-sample patches exceed PATCHES_CHUNK_ABOVE (the padded CNN's conv2) multiply their patches
per chunk of samples and sum the chunks; with a symbolic batch the chunks sit at fixed offsets, so a small
batch leaves trailing chunks empty and a large one fills the last. Every case is checked against PyTorch's
float64 weight gradient; small thresholds (monkeypatched) put grouped, strided, dilated, 1-D and
ConvTranspose layers through the same chunks.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import graphc as gc  # noqa: E402
from graphc import nn  # noqa: E402
import passes.autodiff.rules.conv as conv_rules  # noqa: E402
from passes.autodiff.rules.conv import _patches_batch_chunks  # noqa: E402

TNN = torch.nn


def assert_close(actual, expected, err_msg=""):
    """float32 sums of up to ~20000 products against float64: absolute error relative to the largest entry."""
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=5e-6 * np.abs(expected).max(), err_msg=err_msg)


def _dw_against_torch(tconv, conv, batch, h, w, symbolic=True):
    """graphc's (dw, db, op types) and PyTorch's float64 (dw, db) for loss = sum(conv(x) * cot)."""
    conv.load_state_dict(tconv.state_dict())
    rng = np.random.default_rng(1)
    cin = tconv.in_channels
    shape = (batch, cin, h) if w is None else (batch, cin, h, w)
    xb = rng.standard_normal(shape).astype(np.float32)
    cot = rng.standard_normal(tuple(tconv(torch.from_numpy(xb)).shape)).astype(np.float32)
    x = gc.input("x", shape=(("batch" if symbolic else batch), *shape[1:]))
    dw, db = gc.grad((conv(x) * gc.constant(cot)).sum(), [conv.weight, conv.bias])
    program = gc.compile([x], {"dw": dw, "db": db})
    result = program.run({"x": xb})
    t64 = tconv.double()
    t64.zero_grad()
    (t64(torch.from_numpy(xb).double()) * torch.from_numpy(cot).double()).sum().backward()
    ops = [node.op_type for node in program.model.graph.node]
    return result, (t64.weight.grad.numpy(), t64.bias.grad.numpy()), ops


@pytest.mark.parametrize("batch", [3, 8, 20, 70])
def test_padded_cnn_conv2_dw_in_batch_chunks_matches_torch(batch):
    """32 -> 64, 3x3, pad 1 on 16x16 maps: 295 KB of patches per sample, chunked by the defaults; batch 3
    leaves 7 of the 8 chunks empty, 70 puts 14 samples in the last one."""
    torch.manual_seed(0)
    tconv = TNN.Conv2d(32, 64, 3, padding=1)
    result, (dw, db), ops = _dw_against_torch(tconv, nn.Conv2d(32, 64, 3, padding=1), batch, 16, 16)
    assert_close(result["dw"], dw, "dweight")
    assert_close(result["db"], db, "dbias")
    assert ops.count("Conv") == conv_rules.PATCHES_CHUNK_COUNT, ops  # one patches Conv per chunk
    assert ops.count("MatMul") == conv_rules.PATCHES_CHUNK_COUNT, ops
    assert ops.count("Sum") == 1, ops


def test_padded_cnn_conv1_dw_stays_whole():
    """3 -> 32 on 32x32 maps (110 KB of patches per sample) lost in chunks (probes/conv_dw_chunks.py)."""
    torch.manual_seed(0)
    tconv = TNN.Conv2d(3, 32, 3, padding=1)
    result, (dw, db), ops = _dw_against_torch(tconv, nn.Conv2d(3, 32, 3, padding=1), 5, 32, 32)
    assert_close(result["dw"], dw, "dweight")
    assert ops.count("Conv") == 1 and "Sum" not in ops and "Slice" not in ops, ops


def test_chunk_ranges():
    big, small = 4 * 288 * 256, 4 * 27 * 1024
    assert _patches_batch_chunks("batch", small) == [(0, None)]
    assert _patches_batch_chunks("batch", big) == [(i, i + 8) for i in range(0, 56, 8)] + [(56, None)]
    assert _patches_batch_chunks(None, big) == _patches_batch_chunks("batch", big)
    assert _patches_batch_chunks(8, big) == [(0, None)]  # a static batch of one chunk: no Slices
    assert _patches_batch_chunks(20, big) == [(0, 8), (8, 16), (16, None)]
    assert _patches_batch_chunks(64, big) == _patches_batch_chunks("batch", big)


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 2 samples, 3 chunks, for every patches layer."""
    monkeypatch.setattr(conv_rules, "PATCHES_CHUNK_ABOVE", 0)
    monkeypatch.setattr(conv_rules, "PATCHES_CHUNK_SAMPLES", 2)
    monkeypatch.setattr(conv_rules, "PATCHES_CHUNK_COUNT", 3)


LAYERS = {
    # name: (torch layer, graphc layer, h, w)
    "grouped": (lambda: TNN.Conv2d(4, 6, 3, padding=1, groups=2), lambda: nn.Conv2d(4, 6, 3, padding=1, groups=2),
                7, 6),
    "strided_uneven": (lambda: TNN.Conv2d(3, 10, 3, stride=2, padding=(1, 0)),
                       lambda: nn.Conv2d(3, 10, 3, stride=2, padding=(1, 0)), 9, 8),
    "dilated": (lambda: TNN.Conv2d(2, 9, 3, dilation=2, padding=2), lambda: nn.Conv2d(2, 9, 3, dilation=2, padding=2),
                8, 8),
    "conv1d": (lambda: TNN.Conv1d(3, 4, 3, padding=1), lambda: nn.Conv1d(3, 4, 3, padding=1), 11, None),
    "conv_transpose": (lambda: TNN.ConvTranspose2d(9, 4, 3, stride=2, padding=1),
                       lambda: nn.ConvTranspose2d(9, 4, 3, stride=2, padding=1), 5, 5),
}


@pytest.mark.parametrize("batch", [1, 5, 9])
@pytest.mark.parametrize("layer", list(LAYERS))
def test_small_chunks_match_torch(small_chunks, layer, batch):
    """Batch 1: two empty chunks; 5: a partial last chunk; 9: a last chunk of 5 samples. Every layer has at
    least as many output channels (a ConvTranspose: input channels) as taps, so it takes the patches rule."""
    make_torch, make_graphc, h, w = LAYERS[layer]
    torch.manual_seed(0)
    result, (dw, db), ops = _dw_against_torch(make_torch(), make_graphc(), batch, h, w)
    assert_close(result["dw"], dw, "dweight")
    assert_close(result["db"], db, "dbias")
    assert ops.count("Sum") == 1, ops


def test_small_chunks_with_a_static_batch(small_chunks):
    torch.manual_seed(0)
    result, (dw, _), ops = _dw_against_torch(TNN.Conv2d(3, 9, 3, padding=1), nn.Conv2d(3, 9, 3, padding=1), 7, 6, 5,
                                             symbolic=False)
    assert_close(result["dw"], dw, "dweight")
    assert ops.count("MatMul") == 4, ops  # 2 + 2 + 2 + 1 samples
