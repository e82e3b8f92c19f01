"""The shifted-Gemm lowering of a Conv weight gradient (``_weight_grad_by_shifted_gemm``, issue 11).

Cases that take it (2-D, unit strides and dilations, ungrouped, more taps than output channels: LeNet's
5x5 convs) are checked against PyTorch's float64 weight gradient; the graph is checked to hold the Gemm
and not the transposed-batch Conv, and layers outside its reach to keep their lowering.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import graphc as gc  # noqa: E402
from graphc import nn  # noqa: E402
from passes.autodiff.rules.conv import _shifted_gemm_fits, _shifted_row_chunks, weight_grad_lowering  # noqa: E402

TNN = torch.nn


def assert_close(actual, expected, err_msg=""):
    """float32 sums of up to ~3000 products against float64: absolute error relative to the largest entry."""
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=2e-6 * np.abs(expected).max(), err_msg=err_msg)

CASES = {
    # name: (in, out, kernel, padding, input H, W, batch)
    "lenet_conv1": (3, 6, 5, 0, 32, 32, 4),
    "lenet_conv2": (6, 16, 5, 0, 14, 14, 3),
    "rect_kernel_rect_input": (2, 3, (3, 4), 0, 9, 12, 2),
    "uneven_padding": (2, 4, (5, 3), (2, 1), 7, 6, 2),
    "kernel_as_large_as_input": (1, 2, 5, 0, 5, 5, 3),
}


def _weights_grad_graph_ops(program) -> list[str]:
    return [node.op_type for node in program.model.graph.node]


def _torch_dw(tconv, xb, cot):
    tconv64 = tconv.double()
    tconv64.zero_grad()
    (tconv64(torch.from_numpy(xb).double()) * torch.from_numpy(cot).double()).sum().backward()
    return tconv64.weight.grad.numpy(), tconv64.bias.grad.numpy()


@pytest.mark.parametrize("case", list(CASES))
def test_conv_weight_grad_by_shifted_gemm_matches_torch_float64(case):
    cin, cout, k, p, h, w, batch = CASES[case]
    torch.manual_seed(0)
    tconv = TNN.Conv2d(cin, cout, k, padding=p)
    conv = nn.Conv2d(cin, cout, k, padding=p)
    conv.load_state_dict(tconv.state_dict())
    kernel = list(tconv.kernel_size)
    assert weight_grad_lowering(cout, int(np.prod(kernel)), 1) == "transposed_batch"
    assert _shifted_gemm_fits(kernel, [1, 1], [1, 1])
    rng = np.random.default_rng(1)
    xb = rng.standard_normal((batch, cin, h, w)).astype(np.float32)
    out_shape = tuple(tconv(torch.from_numpy(xb)).shape)
    cot = rng.standard_normal(out_shape).astype(np.float32)

    x = gc.input("x", shape=("batch", cin, h, w))
    loss = (conv(x) * gc.constant(cot)).sum()
    dw, db = gc.grad(loss, [conv.weight, conv.bias])
    program = gc.compile([x], {"dw": dw, "db": db})
    result = program.run({"x": xb})
    expected_dw, expected_db = _torch_dw(tconv, xb, cot)
    assert_close(result["dw"], expected_dw, err_msg="dweight")
    assert_close(result["db"], expected_db, err_msg="dbias")
    ops = _weights_grad_graph_ops(program)
    hp = h + 2 * (p if isinstance(p, int) else p[0])  # the padded input's rows
    chunks = _shifted_row_chunks(cout * kernel[0] + cin * kernel[1], hp, out_shape[3])
    assert ops.count("Gemm") == len(chunks), ops  # one Gemm per row chunk (16 for LeNet's conv1, 1 for conv2)
    assert ops.count("Conv") == 0, ops  # dw needs no Conv at all: neither im2col nor the transposed batch


def test_shifted_gemm_row_chunks_cover_the_rows_once():
    """LeNet's conv1 (45 operand rows, Hp = 32, W' = 28: 161 KB per sample) is cut into 2-row chunks; conv2
    (110 rows, 14 x 10: 62 KB) stays whole; a remainder chunk closes an odd row count."""
    assert _shifted_row_chunks(6 * 5 + 3 * 5, 32, 28) == [(r, r + 2) for r in range(0, 32, 2)]
    assert _shifted_row_chunks(16 * 5 + 6 * 5, 14, 10) == [(0, 14)]
    chunks = _shifted_row_chunks(45, 31, 28)
    assert chunks[-1] == (30, 31) and all(a[1] == b[0] for a, b in zip(chunks, chunks[1:])) and chunks[0][0] == 0


@pytest.mark.parametrize("case", ["uneven_padding", "rect_kernel_rect_input", "kernel_as_large_as_input"])
def test_shifted_gemm_in_row_chunks_matches_torch_float64(case, monkeypatch):
    """Every case cut into chunks of one row (and, with 2 rows, a remainder chunk): the chunks' partial
    products sum to PyTorch's float64 weight gradient."""
    import passes.autodiff.rules.conv as conv_rules
    monkeypatch.setattr(conv_rules, "SHIFTED_CHUNK_ABOVE", 0)
    cin, cout, k, p, h, w, batch = CASES[case]
    torch.manual_seed(0)
    tconv = TNN.Conv2d(cin, cout, k, padding=p)
    conv = nn.Conv2d(cin, cout, k, padding=p)
    conv.load_state_dict(tconv.state_dict())
    rng = np.random.default_rng(4)
    xb = rng.standard_normal((batch, cin, h, w)).astype(np.float32)
    cot = rng.standard_normal(tuple(tconv(torch.from_numpy(xb)).shape)).astype(np.float32)
    for row_bytes in (1, 4 * 2 * (cout * tconv.kernel_size[0] + cin * tconv.kernel_size[1]) * cot.shape[3]):
        monkeypatch.setattr(conv_rules, "SHIFTED_CHUNK_BYTES", row_bytes)  # 1 row per chunk, then 2 rows
        x = gc.input("x", shape=("batch", cin, h, w))
        (dw,) = gc.grad((conv(x) * gc.constant(cot)).sum(), [conv.weight])
        program = gc.compile([x], {"dw": dw})
        assert_close(program.run({"x": xb})["dw"], _torch_dw(tconv, xb, cot)[0], err_msg=f"{case} {row_bytes}")
        assert _weights_grad_graph_ops(program).count("Gemm") > 1


def test_conv_transpose_weight_grad_by_shifted_gemm_matches_torch_float64():
    """ConvTranspose's dw is the Conv weight gradient with the roles swapped: it takes the same lowering."""
    torch.manual_seed(0)
    tconv = TNN.ConvTranspose2d(2, 3, 5, padding=1)
    conv = nn.ConvTranspose2d(2, 3, 5, padding=1)
    conv.load_state_dict(tconv.state_dict())
    rng = np.random.default_rng(2)
    xb = rng.standard_normal((2, 2, 6, 7)).astype(np.float32)
    cot = rng.standard_normal(tuple(tconv(torch.from_numpy(xb)).shape)).astype(np.float32)

    x = gc.input("x", shape=("batch", 2, 6, 7))
    loss = (conv(x) * gc.constant(cot)).sum()
    (dw,) = gc.grad(loss, [conv.weight])
    program = gc.compile([x], {"dw": dw})
    expected_dw, _ = _torch_dw(tconv, xb, cot)
    assert_close(program.run({"x": xb})["dw"], expected_dw)
    assert "Gemm" in _weights_grad_graph_ops(program)


@pytest.mark.parametrize("cin,cout,k,stride,dilation,expected", [
    (3, 32, 3, 1, 1, "Conv"),   # the padded CNN's 3x3 layers: fewer taps than channels, patches + MatMul
    (3, 6, 5, 2, 1, "Conv"),    # strided: the transposed-batch Conv
    (3, 6, 3, 1, 2, "Conv"),    # dilated: the transposed-batch Conv
])
def test_layers_outside_the_shifted_gemm_keep_their_lowering(cin, cout, k, stride, dilation, expected):
    torch.manual_seed(0)
    tconv = TNN.Conv2d(cin, cout, k, stride=stride, dilation=dilation, padding=1)
    conv = nn.Conv2d(cin, cout, k, stride=stride, dilation=dilation, padding=1)
    conv.load_state_dict(tconv.state_dict())
    rng = np.random.default_rng(3)
    xb = rng.standard_normal((2, cin, 11, 11)).astype(np.float32)
    cot = rng.standard_normal(tuple(tconv(torch.from_numpy(xb)).shape)).astype(np.float32)
    x = gc.input("x", shape=("batch", cin, 11, 11))
    (dw,) = gc.grad((conv(x) * gc.constant(cot)).sum(), [conv.weight])
    program = gc.compile([x], {"dw": dw})
    assert_close(program.run({"x": xb})["dw"], _torch_dw(tconv, xb, cot)[0])
    ops = _weights_grad_graph_ops(program)
    assert "Gemm" not in ops and expected in ops, ops
