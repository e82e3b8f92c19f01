"""Quantization: post-training (``gc.quantize``, ONNX Runtime's tools) and quantization-aware training.

    gc.quantize(prog, "m.int8.onnx", calibration=[{"x": batch}, ...])        # static: a QDQ model
    gc.quantize("m.onnx", "m.int8.onnx", mode="dynamic")                     # int8 weights only

    qmodel = gc.quantization.prepare_qat(model)      # in place: Linear/Conv2d -> fake-quantized layers
    loss = F.cross_entropy(qmodel(x), y)             # train as usual: gc.Trainer runs stock ONNX Runtime
    qmodel.eval(); gc.compile([x], {"logits": qmodel(x)}).save("m.qat.onnx")   # QDQ, int8 in ORT

Fake quantization follows PyTorch's eager QAT defaults, expressed with ONNX's own
``QuantizeLinear``/``DequantizeLinear`` pairs (their VJP rules, in ``passes/autodiff/rules/quantize.py``,
are the straight-through estimator):
- activations (each quantized layer's input and output): int8, per tensor, affine; the observed
  ``min_val``/``max_val`` are buffers updated as a moving average with ``averaging_constant`` 0.01
  (``MovingAverageMinMaxObserver``: the first batch sets them), carried as training state like
  BatchNorm's running statistics; each training step quantizes with the updated range, as
  ``FakeQuantize`` does; scale and zero point by ``calculate_qparams``;
- weights: int8, per output channel, symmetric, range [-127, 127] (ONNX Runtime's choice for
  symmetric weights), scale = max|w| / 127 from the current weights at every step (no state);
- biases stay float in training; the export quantizes them to int32 with scale
  input_scale * weight_scale, as ONNX Runtime's QDQ kernels expect.

An eval-mode call (``model.eval()`` then ``model(x)``) builds the deployable graph: weights stored as
int8 initializers, activation scales and zero points as constants, all frozen from the values at
that call (as ``torch.ao.quantization.convert``); call the model again after more training.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import numpy as np

from graphc import ops
from graphc.nn import functional as F
from graphc.nn.layers import Linear
from graphc.nn.layers_spatial import Conv2d
from graphc.nn.module import Module
from graphc.state import record_state_update
from graphc.tensor import Tensor, constant, emit
from runtime.cli_quantize import QuantizationFailure, QuantizeError, quantize_model

ACTIVATION_RANGE = (-128, 127)  # int8, affine
WEIGHT_RANGE = (-127, 127)  # int8, symmetric (zero point 0)
EPS = float(np.finfo(np.float32).eps)  # torch's smallest scale

__all__ = ["quantize", "prepare_qat", "FakeQuantize", "QATLinear", "QATConv2d", "QuantizeError",
           "QuantizationFailure", "activation_qparams", "weight_qparams"]


# ---------------------------------------------------------------- post-training quantization

def quantize(program_or_path, out_path, calibration=None, mode: str = "static", per_channel: bool = True) -> dict:
    """Quantize a ``gc.Program`` or ``.onnx`` file with ONNX Runtime's quantizer into ``out_path``.

    ``mode="static"`` (default) calibrates on ``calibration`` and writes a QDQ model; it needs
    ``calibration``: an iterable of feed dicts ``{input name: array}``, or a ``gc.data.DataLoader``
    (a dict-yielding loader is used as is; a tuple-yielding one feeds its first arrays to the model's
    inputs in order, so ``DataLoader(X, y)`` calibrates input ``x`` with ``X`` and ignores ``y``).
    ``mode="dynamic"`` quantizes the weights only and takes no calibration. ``per_channel``: one
    weight scale per output channel. Returns a summary (sizes in bytes, operator counts).

    >>> import graphc as gc, numpy as np, tempfile, os
    >>> x = gc.input("x", ("batch", 4))
    >>> prog = gc.compile([x], {"y": gc.nn.Linear(4, 3)(x)})
    >>> out = os.path.join(tempfile.mkdtemp(), "m.int8.onnx")
    >>> gc.quantize(prog, out, calibration=[{"x": np.ones((2, 4), np.float32)}])["mode"]
    'static'
    """
    from graphc.program import Program, for_export

    if isinstance(program_or_path, Program):
        model = for_export(program_or_path.model)
    elif isinstance(program_or_path, (str, os.PathLike)):
        model = program_or_path
    else:
        raise QuantizeError(f"gc.quantize: expected a gc.Program or a path to an .onnx file, "
                            f"got {type(program_or_path).__name__}")
    if calibration is not None:
        calibration = _feed_dicts(calibration, _input_names(model))
    return quantize_model(model, out_path, calibration, mode, per_channel)


def _input_names(model) -> list[str]:
    import onnx

    from runtime.model_loading import load_model

    proto = model if isinstance(model, onnx.ModelProto) else load_model(model)
    initialized = {init.name for init in proto.graph.initializer}
    return [i.name for i in proto.graph.input if i.name not in initialized]


def _feed_dicts(calibration, names: list[str]):
    """Feed dicts from dicts as they are, and from tuples/lists (a DataLoader's batches) by position."""
    if isinstance(calibration, (Mapping, np.ndarray, str, bytes)) or not isinstance(calibration, Iterable):
        raise QuantizeError(f"gc.quantize: calibration must be an iterable of feed dicts or a DataLoader, got "
                            f"{type(calibration).__name__}; wrap a single feed dict in a list")
    for index, batch in enumerate(calibration):
        if isinstance(batch, Mapping):
            yield batch
        elif isinstance(batch, (tuple, list)) and all(isinstance(a, np.ndarray) for a in batch):
            if len(batch) < len(names):
                raise QuantizeError(f"gc.quantize: calibration batch {index} holds {len(batch)} arrays; the model "
                                    f"has {len(names)} inputs {names}")
            yield dict(zip(names, batch))
        elif isinstance(batch, np.ndarray) and len(names) == 1:
            yield {names[0]: batch}
        else:
            raise QuantizeError(f"gc.quantize: calibration batch {index} is a {type(batch).__name__}; expected a "
                                f"dict {{input name: array}} (inputs: {names}) or a tuple of arrays")


# ---------------------------------------------------------------- quantization parameters (numpy)

def activation_qparams(min_val, max_val) -> tuple[np.ndarray, np.ndarray]:
    """int8 affine (scale, zero point) of an observed range, as torch's ``calculate_qparams``."""
    qmin, qmax = ACTIVATION_RANGE
    lo = np.minimum(np.float32(min_val), np.float32(0))
    hi = np.maximum(np.float32(max_val), np.float32(0))
    scale = np.maximum((hi - lo) / np.float32(qmax - qmin), np.float32(EPS)).astype(np.float32)
    zero_point = np.clip(qmin - np.round(lo / scale), qmin, qmax).astype(np.int8)
    return scale, zero_point


def weight_qparams(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel symmetric int8 (scale (O,), zero point (O,) zeros) of a weight (O, ...)."""
    amax = np.abs(weight).reshape(weight.shape[0], -1).max(axis=1)
    scale = np.maximum(amax / np.float32(WEIGHT_RANGE[1]), np.float32(EPS)).astype(np.float32)
    return scale, np.zeros(weight.shape[0], np.int8)


# ---------------------------------------------------------------- fake quantization (graph)

def _qdq(x: Tensor, scale: Tensor, zero_point: Tensor, axis: int | None = None) -> Tensor:
    """DequantizeLinear(QuantizeLinear(x)): x rounded to the int8 grid, in x's dtype."""
    attrs = {} if axis is None else {"axis": axis}
    q = emit("QuantizeLinear", [x, scale, zero_point], attrs, shape=x.shape, dtype=np.int8)
    return emit("DequantizeLinear", [q, scale, zero_point], attrs, shape=x.shape, dtype=x.dtype)


def _dequantized_constant(values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None,
                          axis: int | None) -> Tensor:
    """DequantizeLinear of integer constants: how a QDQ model stores int8 weights and int32 biases."""
    attrs = {} if axis is None else {"axis": axis}
    inputs = [constant(values), constant(scale)] + ([constant(zero_point)] if zero_point is not None else [])
    return emit("DequantizeLinear", inputs, attrs, shape=values.shape, dtype=np.float32)


class FakeQuantize(Module):
    """Per-tensor int8 fake quantization of activations with a moving-average min/max observer.

    Buffers ``min_val``/``max_val`` start at +inf/-inf (nothing observed); in training mode each
    call observes the batch (``x.detach()``), moves the range by ``averaging_constant`` (the first
    batch sets it) and quantizes with the updated range; the gradient is the straight-through one.
    In eval mode the range is frozen into constants (an error if nothing was ever observed).

    >>> import graphc as gc
    >>> fq = gc.quantization.FakeQuantize()
    >>> sorted(fq.state_dict())
    ['max_val', 'min_val']
    """

    def __init__(self, averaging_constant: float = 0.01):
        super().__init__()
        if not 0.0 < averaging_constant <= 1.0:
            raise ValueError(f"FakeQuantize: averaging_constant must be in (0, 1], got {averaging_constant!r}")
        self.averaging_constant = averaging_constant
        self.register_buffer("min_val", np.array(np.inf, np.float32))
        self.register_buffer("max_val", np.array(-np.inf, np.float32))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != np.float32:
            raise TypeError(f"FakeQuantize: expected a float32 input, got {x.dtype}")
        if not self.training:
            scale, zero_point = self.qparams()
            return _qdq(x, constant(scale), constant(zero_point))
        seen = x.detach()
        new_min = self._moving(self.min_val, seen.min())
        new_max = self._moving(self.max_val, seen.max())
        qmin, qmax = ACTIVATION_RANGE
        lo, hi = new_min.clamp(max=0.0), new_max.clamp(min=0.0)
        scale = ((hi - lo) / float(qmax - qmin)).clamp(min=EPS)
        rounded = emit("Round", [lo / scale], shape=(), dtype=np.float32)
        zero_point = (float(qmin) - rounded).clamp(float(qmin), float(qmax)).astype("int8")
        out = _qdq(x, scale, zero_point)
        record_state_update(self.min_val, new_min, anchor=out)
        record_state_update(self.max_val, new_max, anchor=out)
        return out

    def _moving(self, running: Tensor, observed: Tensor) -> Tensor:
        """running + c * (observed - running); the observed value itself while running is still +-inf."""
        fresh = running.abs() == float("inf")
        moved = running + (observed - running) * self.averaging_constant
        return ops.where(fresh, observed, moved)

    def qparams(self) -> tuple[np.ndarray, np.ndarray]:
        """The current (scale, zero point), from the observed range."""
        lo, hi = float(self.min_val.data), float(self.max_val.data)
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise ValueError(f"FakeQuantize {self.min_val.name!r}: no range observed yet (min_val {lo}, max_val "
                             f"{hi}); train (or run training-mode steps on calibration data) before calling "
                             f"the model in eval mode")
        return activation_qparams(lo, hi)

    def extra_repr(self) -> str:
        return f"int8 per tensor, averaging_constant={self.averaging_constant}"


def fake_quantize_weight(weight: Tensor) -> Tensor:
    """Per-output-channel symmetric int8 fake quantization of ``weight`` (O, ...), straight-through gradient."""
    magnitude = weight.detach().abs()
    amax = ops.reduce("ReduceMax", magnitude, tuple(range(1, weight.ndim))) if weight.ndim > 1 else magnitude
    scale = (amax / float(WEIGHT_RANGE[1])).clamp(min=EPS)
    zero_point = constant(np.zeros(weight.shape[0], np.int8))
    return _qdq(weight, scale, zero_point, axis=0)


class _QATLayer(Module):
    """Shared by the QAT layers: input and output activations fake-quantized, weights per channel."""

    def _init_qat(self, layer: Module) -> None:
        self.weight, self.bias = layer.weight, layer.bias  # the same Parameters: trained values carry over
        self.input_fake_quant = FakeQuantize()
        self.output_fake_quant = FakeQuantize()
        self.train(layer.training)

    def _weights(self) -> tuple[Tensor, Tensor | None]:
        """Training: fake-quantized weight, float bias. Eval: int8 weight, int32 bias, as constants."""
        if self.training:
            return fake_quantize_weight(self.weight), self.bias
        weight = np.asarray(self.weight.data, np.float32)
        w_scale, w_zero = weight_qparams(weight)
        w_int8 = np.clip(np.round(weight / w_scale.reshape((-1,) + (1,) * (weight.ndim - 1))),
                         *WEIGHT_RANGE).astype(np.int8)
        dq_weight = _dequantized_constant(w_int8, w_scale, w_zero, axis=0)
        if self.bias is None:
            return dq_weight, None
        x_scale, _ = self.input_fake_quant.qparams()
        b_scale = (x_scale * w_scale).astype(np.float32)
        b_int32 = np.round(np.asarray(self.bias.data, np.float32) / b_scale).astype(np.int32)
        return dq_weight, _dequantized_constant(b_int32, b_scale, None, axis=0)

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self._weights()
        return self.output_fake_quant(self._apply(self.input_fake_quant(x), weight, bias))


class QATLinear(_QATLayer):
    """``nn.Linear`` with fake-quantized input, weight and output; same parameters (``weight``, ``bias``)."""

    def __init__(self, layer: Linear):
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self._init_qat(layer)

    def _apply(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class QATConv2d(_QATLayer):
    """``nn.Conv2d`` with fake-quantized input, weight (per output channel) and output."""

    def __init__(self, layer: Conv2d):
        super().__init__()
        self.stride, self.padding, self.dilation, self.groups = layer.stride, layer.padding, layer.dilation, \
            layer.groups
        if getattr(layer, "padding_mode", "zeros") != "zeros":
            raise ValueError(f"prepare_qat: Conv2d with padding_mode={layer.padding_mode!r} is not supported")
        self._init_qat(layer)

    def _apply(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, stride={self.stride}, padding={self.padding}"


_QAT_LAYERS = {Linear: QATLinear, Conv2d: QATConv2d}


def prepare_qat(model: Module, inplace: bool = True) -> Module:
    """Swap every ``nn.Linear`` and ``nn.Conv2d`` of ``model`` (in place) for its fake-quantized form.

    The swapped layers keep their Parameters (same objects, same ``state_dict`` names such as
    ``fc1.weight``) and add observer buffers (``fc1.input_fake_quant.min_val`` ...). Build the
    training graph *after* this call. Returns ``model``; ``inplace=False`` is refused (graphc's
    Parameters are graph values and are not deep-copied). Other layers (LSTM, BatchNorm) stay float.

    >>> import graphc as gc
    >>> from graphc import nn
    >>> net = gc.quantization.prepare_qat(nn.Sequential(nn.Linear(4, 3), nn.ReLU()))
    >>> type(net[0]).__name__, [n for n, _ in net.named_parameters()]
    ('QATLinear', ['0.weight', '0.bias'])
    """
    if not isinstance(model, Module):
        raise TypeError(f"prepare_qat: expected an nn.Module, got {type(model).__name__}")
    if not inplace:
        raise ValueError("prepare_qat: only inplace=True is supported (the model is modified and returned)")
    if type(model) in _QAT_LAYERS:
        raise TypeError(f"prepare_qat: pass the model that contains the {type(model).__name__} layers; a bare "
                        f"layer cannot be swapped in place (wrap it: nn.Sequential(layer))")
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module._modules.items()):
            kind = _QAT_LAYERS.get(type(child))
            if kind is not None:
                setattr(module, name, kind(child))
                swapped += 1
    if swapped == 0:
        raise ValueError(f"prepare_qat: {type(model).__name__} has no nn.Linear or nn.Conv2d layer to quantize")
    for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
        tensor.value.name = name  # names by the full dotted path (a swap renames one level only)
    return model
