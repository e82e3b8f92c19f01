"""The layers a tutorial reader meets next, against PyTorch: Conv1d, ConvTranspose2d, Upsample /
F.interpolate, GELU, LeakyReLU, Softplus, Embedding(padding_idx).

Each layer is built on both sides with the same constructor arguments, the graphc one loads the torch
one's ``state_dict``; the forward, and the gradients from ``gc.grad`` (compiled and run on ONNX
Runtime) of ``sum(out * cot)`` for a random ``cot``, must equal torch's forward and autograd.
Tolerances are float32 ones (rtol 1e-4, atol 1e-5): the two sides sum in different orders.
The op table (``tests/op_samples.py``) checks the same ONNX ops in float64 against finite differences.
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import graphc as gc  # noqa: E402
import graphc.nn.functional as F  # noqa: E402
from graphc import nn  # noqa: E402

TNN = torch.nn
TF = torch.nn.functional
TOL = {"rtol": 1e-4, "atol": 1e-5}


def run_both(layer, tlayer, shape, seed=0, batch_symbolic=True, draw=None, **call):
    """Forward and gradients (input and every parameter) of ``sum(layer(x) * cot)`` on both sides."""
    rng = np.random.default_rng(seed)
    xb = (draw(rng, shape) if draw else rng.standard_normal(shape)).astype(np.float32)
    txb = torch.from_numpy(xb).requires_grad_()
    tout = tlayer(txb, **call)
    cot = rng.standard_normal(tuple(tout.shape)).astype(np.float32)
    (tout * torch.from_numpy(cot)).sum().backward()

    x = gc.input("x", shape=(("batch",) + shape[1:]) if batch_symbolic else shape)
    out = layer(x, **call)
    assert out.shape[1:] == tuple(tout.shape[1:])
    params = list(layer.named_parameters())
    grads = gc.grad((out * gc.constant(cot)).sum(), [x] + [p for _, p in params])
    outputs = {"out": out, "dx": grads[0], **{f"d_{n}": g for (n, _), g in zip(params, grads[1:])}}
    result = gc.compile([x], outputs).run({"x": xb})
    np.testing.assert_allclose(result["out"], tout.detach().numpy(), err_msg="forward", **TOL)
    np.testing.assert_allclose(result["dx"], txb.grad.numpy(), err_msg="d input", **TOL)
    tparams = dict(tlayer.named_parameters())
    assert sorted(n for n, _ in params) == sorted(tparams)
    for name, _ in params:
        np.testing.assert_allclose(result[f"d_{name}"], tparams[name].grad.numpy(), err_msg=f"d {name}", **TOL)
    return result


def twins(cls, tcls, *args, **kwargs):
    torch.manual_seed(0)
    tlayer = tcls(*args, **kwargs)
    layer = cls(*args, **kwargs)
    layer.load_state_dict(tlayer.state_dict())
    return layer, tlayer


# ---- parameter names, layouts and default initialisation --------------------------
INIT_CASES = {
    # name: (graphc class, torch class, args, kwargs, fan_in)
    "conv1d": (nn.Conv1d, TNN.Conv1d, (6, 10, 5), {}, 6 * 5),
    "conv1d_groups": (nn.Conv1d, TNN.Conv1d, (6, 10, 5), {"groups": 2}, 3 * 5),
    "conv_transpose2d": (nn.ConvTranspose2d, TNN.ConvTranspose2d, (8, 6, 3), {}, 6 * 9),
    "conv_transpose2d_groups": (nn.ConvTranspose2d, TNN.ConvTranspose2d, (8, 6, (2, 3)), {"groups": 2}, 3 * 6),
}


@pytest.mark.parametrize("case", list(INIT_CASES))
def test_conv_parameters_have_torch_names_shapes_and_init_bounds(case):
    cls, tcls, args, kwargs, fan_in = INIT_CASES[case]
    ours = cls(*args, **kwargs).state_dict()
    theirs = tcls(*args, **kwargs).state_dict()
    assert list(ours) == list(theirs) == ["weight", "bias"]
    bound = 1.0 / math.sqrt(fan_in)  # kaiming_uniform_(a=sqrt(5)) and torch's bias rule
    for name, value in theirs.items():
        assert ours[name].shape == tuple(value.shape) and ours[name].dtype == np.float32, name
        # U(-bound, bound): inside the bound and, for the >= 144 weights, reaching past 0.9 of it (a wrong
        # fan_in, such as in/groups * k for a transposed conv, gives a bound <= 0.87 of the right one)
        assert np.abs(ours[name]).max() <= bound and np.abs(value.numpy()).max() <= bound, name
        if name == "weight":
            assert np.abs(ours[name]).max() > 0.9 * bound
    assert cls(*args, bias=False, **kwargs).state_dict().keys() == {"weight"}


def test_embedding_padding_row_starts_at_zero_and_negative_index_counts_from_the_end():
    layer = nn.Embedding(7, 3, padding_idx=-2)
    assert layer.padding_idx == TNN.Embedding(7, 3, padding_idx=-2).padding_idx == 5
    weight = layer.state_dict()["weight"]
    np.testing.assert_array_equal(weight[5], np.zeros(3, np.float32))
    assert np.abs(np.delete(weight, 5, axis=0)).min() > 0  # the other rows are N(0, 1) draws
    assert 0.5 < weight.std() < 1.6


# ---- Conv1d -----------------------------------------------------------------------
CONV1D_CASES = {
    # name: (in, out, kernel, kwargs, length)
    "stride2_pad1": (4, 6, 3, {"stride": 2, "padding": 1}, 11),
    "dilation2_groups2": (4, 2, 5, {"dilation": 2, "groups": 2}, 15),
    "same_even_kernel": (3, 4, 4, {"padding": "same"}, 9),
    "depthwise_stride3_uneven": (4, 8, 3, {"stride": 3, "groups": 4}, 13),
    "no_bias_valid": (3, 5, 2, {"bias": False, "padding": "valid"}, 6),
}


@pytest.mark.parametrize("case", list(CONV1D_CASES))
def test_conv1d_forward_and_grads_match_torch(case):
    cin, cout, k, kwargs, length = CONV1D_CASES[case]
    layer, tlayer = twins(nn.Conv1d, TNN.Conv1d, cin, cout, k, **kwargs)
    run_both(layer, tlayer, (2, cin, length))


def test_f_conv1d_matches_torch():
    rng = np.random.default_rng(3)
    xb, wb, bb = (rng.standard_normal(s).astype(np.float32) for s in [(2, 3, 10), (4, 3, 3), (4,)])
    x = gc.input("x", ("batch", 3, 10))
    out = F.conv1d(x, gc.constant(wb), gc.constant(bb), stride=2, padding=2, dilation=2)
    expected = TF.conv1d(*map(torch.from_numpy, (xb, wb, bb)), stride=2, padding=2, dilation=2).numpy()
    np.testing.assert_allclose(gc.compile([x], {"y": out}).run({"x": xb})["y"], expected, **TOL)


# ---- ConvTranspose2d -------------------------------------------------------------------
CONV_T_CASES = {
    # name: (in, out, kernel, kwargs, H, W)
    "unet_up_k2_s2": (8, 4, 2, {"stride": 2}, 5, 6),
    "k3_s2_p1_outpad1": (4, 6, 3, {"stride": 2, "padding": 1, "output_padding": 1}, 5, 4),
    "outpad_past_padding": (4, 2, 3, {"stride": 3, "output_padding": 2, "groups": 2}, 4, 3),
    "rect_groups_dilation": (6, 9, (3, 2), {"stride": (2, 1), "padding": (2, 1), "output_padding": (1, 0),
                                            "groups": 3, "dilation": (2, 3)}, 5, 6),
    "dilation_outpad": (2, 3, 3, {"stride": 2, "output_padding": 1, "dilation": 2}, 4, 4),
    "stride1_no_bias": (3, 5, 3, {"padding": 1, "bias": False}, 6, 5),
}


@pytest.mark.parametrize("case", list(CONV_T_CASES))
def test_conv_transpose2d_forward_and_grads_match_torch(case):
    cin, cout, k, kwargs, h, w = CONV_T_CASES[case]
    layer, tlayer = twins(nn.ConvTranspose2d, TNN.ConvTranspose2d, cin, cout, k, **kwargs)
    run_both(layer, tlayer, (2, cin, h, w))


def test_conv_transpose2d_output_size_picks_torchs_output_padding():
    layer, tlayer = twins(nn.ConvTranspose2d, TNN.ConvTranspose2d, 3, 2, 3, stride=2, padding=1)
    result = run_both(layer, tlayer, (2, 3, 4, 5), batch_symbolic=False, output_size=[8, 10])
    assert result["out"].shape == (2, 2, 8, 10)
    with pytest.raises(ValueError, match=r"ConvTranspose2d: requested an output size of \(9, 10\).*range from 7 to 8"):
        layer(gc.input("x", (2, 3, 4, 5)), output_size=(9, 10))


def test_f_conv_transpose2d_matches_torch():
    rng = np.random.default_rng(4)
    xb, wb, bb = (rng.standard_normal(s).astype(np.float32) for s in [(2, 4, 3, 3), (4, 3, 3, 3), (6,)])
    x = gc.input("x", ("batch", 4, 3, 3))
    out = F.conv_transpose2d(x, gc.constant(wb), gc.constant(bb), stride=2, output_padding=1, groups=2)
    expected = TF.conv_transpose2d(*map(torch.from_numpy, (xb, wb, bb)), stride=2, output_padding=1,
                                   groups=2).numpy()
    assert out.shape == ("batch",) + expected.shape[1:]
    np.testing.assert_allclose(gc.compile([x], {"y": out}).run({"x": xb})["y"], expected, **TOL)


# ---- Upsample / F.interpolate --------------------------------------------------------------
UPSAMPLE_CASES = {
    # name: (kwargs, input shape)
    "nearest_scale2": ({"scale_factor": 2}, (2, 3, 4, 5)),
    "nearest_scale_pair": ({"scale_factor": (3, 2)}, (2, 2, 3, 4)),
    "nearest_size_up_down": ({"size": (7, 3)}, (2, 2, 4, 6)),
    "nearest_scale_1_7": ({"scale_factor": 1.7}, (1, 2, 5, 6)),
    "nearest_exact_scale": ({"scale_factor": 1.5, "mode": "nearest-exact"}, (2, 2, 4, 5)),
    "bilinear_scale2": ({"scale_factor": 2, "mode": "bilinear"}, (2, 3, 4, 5)),
    "bilinear_align_corners_scale2": ({"scale_factor": 2, "mode": "bilinear", "align_corners": True}, (2, 2, 3, 4)),
    "bilinear_size_down": ({"size": (3, 2), "mode": "bilinear"}, (2, 2, 7, 5)),
    "bilinear_align_corners_size": ({"size": (6, 9), "mode": "bilinear", "align_corners": True}, (1, 2, 4, 5)),
    "bilinear_scale_recompute": ({"scale_factor": 1.7, "mode": "bilinear", "recompute_scale_factor": True},
                                 (1, 2, 5, 4)),
    "bilinear_output_1x1": ({"size": 1, "mode": "bilinear"}, (1, 2, 4, 3)),
    "linear_1d": ({"scale_factor": 2.5, "mode": "linear"}, (2, 3, 6)),
    "nearest_1d_size": ({"size": 5}, (2, 3, 3)),
    # Downsampling by scales with align_corners where in * scale is fractional (4 * 0.6 = 2.4 -> 2, 2 * 0.6
    # -> 1): ONNX Runtime and torch map by the integer output length, onnx's reference evaluator by 2.4.
    "bilinear_align_corners_down_scale_node_case": ({"scale_factor": 0.6, "mode": "bilinear", "align_corners": True},
                                                    (1, 1, 2, 4)),
    "bilinear_align_corners_down_scale": ({"scale_factor": 0.6, "mode": "bilinear", "align_corners": True},
                                          (2, 2, 5, 7)),
    "linear_align_corners_down_scale": ({"scale_factor": 0.45, "mode": "linear", "align_corners": True}, (2, 3, 9)),
}


@pytest.mark.parametrize("case", list(UPSAMPLE_CASES))
def test_upsample_forward_and_grads_match_torch(case):
    kwargs, shape = UPSAMPLE_CASES[case]
    run_both(nn.Upsample(**kwargs), TNN.Upsample(**kwargs), shape)


@pytest.mark.parametrize("cls", ["UpsamplingNearest2d", "UpsamplingBilinear2d"])
def test_upsampling_2d_aliases_match_torch(cls):
    run_both(getattr(nn, cls)(scale_factor=2), getattr(TNN, cls)(scale_factor=2), (2, 2, 3, 4))


def test_interpolate_bilinear_gradient_is_exact_for_a_larger_map():
    """The interpolation-matrix gradient at a tutorial size (UNet-like 16x16 -> 32x32, 8 channels)."""
    run_both(nn.Upsample(scale_factor=2, mode="bilinear"), TNN.Upsample(scale_factor=2, mode="bilinear"),
             (4, 8, 16, 16))


@pytest.mark.parametrize("shape, scale", [((1, 1, 2, 4), 0.6), ((2, 2, 5, 7), 0.6)])
def test_align_corners_downsample_by_scale_emits_resize_sizes(shape, scale):
    """align_corners with a scale factor emits Resize ``sizes``: with ``scales`` ONNX's reference maps by the
    fractional length in * scale while ONNX Runtime and PyTorch use the integer one (onnx/onnx#2462), so
    the file would compute different things in different runtimes; with sizes they all agree."""
    x = gc.input("x", shape)
    out = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=True)
    model = gc.compile([x], {"out": out}).model
    (resize,) = [n for n in model.graph.node if n.op_type == "Resize"]
    assert len(resize.input) == 4 and resize.input[3] and not resize.input[2], list(resize.input)
    assert out.shape == shape[:2] + tuple(math.floor(d * scale) for d in shape[2:])


# ---- activations ------------------------------------------------------------------------
ACTIVATION_CASES = {
    # name: (class name, args, kwargs)
    "gelu": ("GELU", (), {}),
    "gelu_tanh": ("GELU", (), {"approximate": "tanh"}),
    "leaky_relu": ("LeakyReLU", (), {}),
    "leaky_relu_slope_inplace": ("LeakyReLU", (0.2,), {"inplace": True}),
    "softplus": ("Softplus", (), {}),
    "softplus_beta_threshold": ("Softplus", (), {"beta": 2.0, "threshold": 3.0}),
}


def away_from_kinks(rng, shape):
    """Values in +-[0.05, 4]: across 0 (LeakyReLU's kink) and threshold / beta = 1.5 (Softplus's switch)."""
    values = rng.choice([-1.0, 1.0], shape) * rng.uniform(0.05, 4.0, shape)
    return np.where(np.abs(values - 1.5) < 0.05, 1.6, values)


@pytest.mark.parametrize("case", list(ACTIVATION_CASES))
def test_activation_modules_match_torch(case):
    name, args, kwargs = ACTIVATION_CASES[case]
    torch_kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}  # torch refuses in-place on a leaf input
    run_both(getattr(nn, name)(*args, **kwargs), getattr(TNN, name)(*args, **torch_kwargs), (3, 4, 5),
             draw=away_from_kinks)


# ---- Embedding with padding_idx ----------------------------------------------------------
@pytest.mark.parametrize("padding_idx", [1, -2])
def test_embedding_padding_row_is_returned_as_stored_and_gets_no_gradient(padding_idx):
    """A loaded non-zero padding row (a pretrained table) comes out as is; its gradient is zero."""
    torch.manual_seed(0)
    tlayer = TNN.Embedding(6, 3, padding_idx=padding_idx)
    with torch.no_grad():
        tlayer.weight[padding_idx] = torch.tensor([0.5, -1.0, 2.0])
    layer = nn.Embedding(6, 3, padding_idx=padding_idx)
    layer.load_state_dict(tlayer.state_dict())
    pad = padding_idx % 6
    ib = np.array([[pad, 3, pad, 0], [2, pad, 5, 3]], np.int64)
    tout = tlayer(torch.from_numpy(ib))
    cot = np.random.default_rng(0).standard_normal(tuple(tout.shape)).astype(np.float32)
    (tout * torch.from_numpy(cot)).sum().backward()

    i = gc.input("i", ("batch", 4), "int64")
    out = layer(i)
    (dw,) = gc.grad((out * gc.constant(cot)).sum(), [layer.weight])
    result = gc.compile([i], {"out": out, "dw": dw}).run({"i": ib})
    np.testing.assert_allclose(result["out"], tout.detach().numpy(), **TOL)
    np.testing.assert_allclose(result["dw"], tlayer.weight.grad.numpy(), **TOL)
    np.testing.assert_array_equal(result["dw"][pad], np.zeros(3, np.float32))
    assert np.abs(result["dw"][3]).sum() > 0


def test_embedding_padding_row_is_never_updated_by_training():
    """SGD with momentum, three steps: every row but the padding one moves, as in torch."""
    torch.manual_seed(0)
    tlayer = TNN.Embedding(5, 2, padding_idx=0)
    with torch.no_grad():
        tlayer.weight[0] = torch.tensor([1.5, -0.5])
    layer = nn.Embedding(5, 2, padding_idx=0)
    layer.load_state_dict(tlayer.state_dict())
    i = gc.input("i", ("batch", 3), "int64")
    target = gc.input("t", ("batch", 3, 2))
    trainer = gc.Trainer(F.mse_loss(layer(i), target), gc.optim.SGD(layer.parameters(), lr=0.5, momentum=0.9),
                         inputs=[i, target], seed=0)
    topt = torch.optim.SGD(tlayer.parameters(), lr=0.5, momentum=0.9)
    rng = np.random.default_rng(0)
    for _ in range(3):
        ib = rng.integers(0, 5, (4, 3)).astype(np.int64)
        ib[:, 0] = 0
        tb = rng.standard_normal((4, 3, 2)).astype(np.float32)
        ours = trainer.step({"i": ib, "t": tb})
        topt.zero_grad()
        tloss = TF.mse_loss(tlayer(torch.from_numpy(ib)), torch.from_numpy(tb))
        tloss.backward()
        topt.step()
        np.testing.assert_allclose(ours, tloss.item(), **TOL)
    weight = layer.state_dict()["weight"]
    np.testing.assert_allclose(weight, tlayer.weight.detach().numpy(), **TOL)
    np.testing.assert_array_equal(weight[0], np.array([1.5, -0.5], np.float32))


def test_embedding_from_pretrained_is_frozen_and_keeps_its_rows():
    table = np.arange(12, dtype=np.float32).reshape(4, 3)
    layer = nn.Embedding.from_pretrained(table, padding_idx=2)
    assert not layer.weight.requires_grad
    np.testing.assert_array_equal(layer.state_dict()["weight"], table)
    i = gc.input("i", (3,), "int64")
    out = gc.compile([i], {"y": layer(i)}).run({"i": np.array([2, 0, 3])})["y"]
    np.testing.assert_array_equal(out, table[[2, 0, 3]])
    assert nn.Embedding.from_pretrained(table, freeze=False).weight.requires_grad


# ---- a tutorial-shaped model through the Trainer --------------------------------------------
def add_layers(module, ns):
    """Text-CNN encoder + UNet-style decoder: every new layer, same names on both sides (``ns``: nn or torch.nn)."""
    module.emb = ns.Embedding(10, 4, padding_idx=0)
    module.conv = ns.Conv1d(4, 8, 3, padding=1)
    module.act1 = ns.GELU(approximate="tanh")
    module.up = ns.ConvTranspose2d(2, 3, 2, stride=2)
    module.act2 = ns.LeakyReLU(0.1)
    module.resize = ns.Upsample(scale_factor=2, mode="bilinear")
    module.act3 = ns.Softplus(beta=2.0)


def decode(m, i):
    h = m.act1(m.conv(m.emb(i).transpose(1, 2)))  # (N, 8, 8)
    h = h.reshape(-1, 2, 4, 8)
    return m.act3(m.resize(m.act2(m.up(h))))  # (N, 3, 16, 32)


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        add_layers(self, nn)


class TorchDecoder(TNN.Module):
    def __init__(self):
        super().__init__()
        add_layers(self, TNN)


def test_tutorial_model_with_every_new_layer_trains_like_torch():
    torch.manual_seed(0)
    tmodel = TorchDecoder()
    model = Decoder()
    model.load_state_dict(tmodel.state_dict())
    assert [n for n, _ in model.named_parameters()] == [n for n, _ in tmodel.named_parameters()]
    i = gc.input("i", ("batch", 8), "int64")
    target = gc.input("t", ("batch", 3, 16, 32))
    out = decode(model, i)
    trainer = gc.Trainer(F.mse_loss(out, target), gc.optim.Adam(model.parameters(), lr=1e-2),
                         inputs=[i, target], seed=0)
    topt = torch.optim.Adam(tmodel.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    for _ in range(3):
        ib = rng.integers(0, 10, (4, 8)).astype(np.int64)
        tb = rng.uniform(0, 1, (4, 3, 16, 32)).astype(np.float32)
        ours = trainer.step({"i": ib, "t": tb})
        topt.zero_grad()
        tout = decode(tmodel, torch.from_numpy(ib))
        tloss = TF.mse_loss(tout, torch.from_numpy(tb))
        tloss.backward()
        topt.step()
        np.testing.assert_allclose(ours, tloss.item(), **TOL)
    theirs = tmodel.state_dict()
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(value, theirs[name].numpy(), err_msg=name, rtol=1e-4, atol=1e-4)


# ---- bad input: one clear error naming the op, the expected and the given ---------------------------
@pytest.mark.parametrize("call, pattern", [
    (lambda x: F.interpolate(x, size=4, scale_factor=2), r"interpolate: give exactly one of size and scale_factor, "
                                                         r"got size=4, scale_factor=2"),
    (lambda x: F.interpolate(x), r"interpolate: give exactly one of size and scale_factor"),
    (lambda x: F.interpolate(x, scale_factor=2, mode="bicubic"), r"interpolate: mode must be one of .*'bilinear'.*"
                                                                 r"got 'bicubic'"),
    (lambda x: F.interpolate(x, scale_factor=2, align_corners=True), r"interpolate: align_corners option can only "
                                                                     r"be set with .*got mode 'nearest'"),
    (lambda x: F.interpolate(x, scale_factor=2, mode="linear"), r"interpolate: mode 'linear' needs a 3-D input, "
                                                                r"got \(2, 3, 4, 4\)"),
    (lambda x: F.interpolate(x, size=(4, 4, 4)), r"interpolate: size must be an int or a sequence of 2 ints, "
                                                 r"got \(4, 4, 4\)"),
    (lambda x: F.interpolate(x, scale_factor=-1.0), r"interpolate: scale_factor must be positive"),
    (lambda x: F.conv1d(x, gc.constant(np.zeros((2, 3, 3), np.float32))), r"conv1d: expects a 3-D input "
                                                                           r"\(N, C, L\), got \(2, 3, 4, 4\)"),
    (lambda x: F.conv_transpose2d(x, gc.constant(np.zeros((3, 2, 3, 3), np.float32)), stride=2, output_padding=2),
     r"conv_transpose2d: output_padding \(2, 2\) must be smaller than either stride \(2, 2\) or dilation \(1, 1\)"),
    (lambda x: F.conv_transpose2d(x, gc.constant(np.zeros((5, 2, 3, 3), np.float32))),
     r"conv_transpose2d: input has 3 channels, weight \(5, 2, 3, 3\) expects 5"),
])
def test_bad_arguments_raise_one_clear_error(call, pattern):
    with pytest.raises(gc.ShapeError, match=pattern) as info:
        call(gc.input("x", (2, 3, 4, 4)))
    assert "test_layers_more.py:" in str(info.value)  # the user's line


@pytest.mark.parametrize("make, pattern", [
    (lambda: nn.Embedding(5, 2, padding_idx=5), r"Embedding: padding_idx must be within num_embeddings "
                                                r"\[-5, 5\), got 5"),
    (lambda: nn.Embedding(5, 2, max_norm=1.0), r"Embedding: max_norm=1.0 .* is not supported"),
    (lambda: nn.GELU(approximate="fast"), r"GELU: approximate must be 'none' or 'tanh', got 'fast'"),
    (lambda: nn.Conv1d(3, 4, 3, groups=2), r"Conv1d: channels \(3, 4\) must be divisible by groups=2"),
    (lambda: nn.ConvTranspose2d(4, 4, 3, padding_mode="reflect"), r"ConvTranspose2d: padding_mode 'reflect' is "
                                                                  r"not supported"),
])
def test_bad_constructor_arguments_raise_one_clear_error(make, pattern):
    with pytest.raises(ValueError, match=pattern):
        make()
