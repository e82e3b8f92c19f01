"""Recurrent layers: ``nn.RNN``, ``nn.LSTM``, ``nn.GRU`` with PyTorch's arguments, parameters and results.

Each layer (both directions) is one ONNX ``LSTM``/``GRU``/``RNN`` node, in
training mode as in eval mode: inference runs ONNX Runtime's fused op, and
differentiation lowers the node to primitive ops first
(``passes/lower_recurrent.py``: unrolled for a static sequence length, a
``Scan`` for a symbolic one), the same code that trains imported models.

The weights are re-ordered in the graph (ONNX gate orders: LSTM i,o,f,c and
GRU z,r,h against PyTorch's i,f,g,o and r,z,n) by ``Gather``s; in an inference
model ONNX Runtime folds them when the session is created, and the lowering
reads through them (no gradient Scatter).

Where ONNX Runtime has no kernel for the op (float64: its recurrent kernels
are float32 only) or ONNX has no such op (LSTM ``proj_size``), the layer emits
the lowering directly.

Long static sequences make big training graphs (about 63 nodes per unrolled
step of a 2-layer LSTM). The Trainer creates its ONNX Runtime session with the
batch dims written in and, above 5000 nodes, without graph optimisations
(runtime/training_session.py): building a 2x128 LSTM step and running its
first step takes about 0.3 s at 28 steps, 0.9 s at 100 and 4.3 s at 300
(``benchmarks/bench_lstm.py --build-only --length N``). Declare the time dim
symbolic to get the Scan lowering instead (a graph whose size does not grow
with the length, at some cost per step).
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np

from graphc import ops
from graphc import random as _random
from graphc.errors import shape_error
from graphc.nn import functional as F
from graphc.nn.module import Module
from graphc.nn.parameter import Parameter
from graphc.tensor import Tensor, constant, emit
from passes.emitter import Emitter
from passes.lower_recurrent import build_lowering, lowering_spec

__all__ = ["RNNBase", "RNN", "LSTM", "GRU"]

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


class LayerWeights(NamedTuple):
    """One layer and direction's parameters (``None`` where a layer has no bias / projection)."""
    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor | None
    b_hh: Tensor | None
    w_hr: Tensor | None = None


def _ints(values) -> Tensor:
    return constant(np.asarray(list(values), dtype=np.int64))


def _split(x: Tensor, axis: int, parts: int) -> list[Tensor]:
    """``parts`` equal pieces of ``x`` along ``axis`` (ONNX Split with ``num_outputs``)."""
    if parts == 1:
        return [x]
    size = x.shape[axis]
    piece = size // parts if isinstance(size, int) else None
    shape = x.shape[:axis] + (piece,) + x.shape[axis + 1:]
    outs = emit("Split", [x], {"axis": axis, "num_outputs": parts}, shape=shape, dtype=x.dtype,
                num_outputs=parts, extra_outputs=[(shape, x.dtype)] * (parts - 1))
    return list(outs)


# ---- one layer: ONNX's own recurrent op ---------------------------------------------
_ONNX_GATE_ORDER = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2], "RNN_TANH": [0], "RNN_RELU": [0]}
_ONNX_OP = {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN", "RNN_RELU": "RNN"}


def _onnx_gates(mode: str, w: Tensor, hidden: int) -> Tensor:
    """PyTorch's gate blocks of ``w`` (G*H, ...) in ONNX's order, with a leading direction axis."""
    order = _ONNX_GATE_ORDER[mode]
    if order != sorted(order):
        rows = np.concatenate([np.arange(g * hidden, (g + 1) * hidden) for g in order])
        w = emit("Gather", [w, _ints(rows)], {"axis": 0}, shape=w.shape, dtype=w.dtype)
    return ops.unsqueeze(w, 0)


def _stacked(tensors: list[Tensor], dim: int) -> Tensor:
    return tensors[0] if len(tensors) == 1 else ops.concat(tensors, dim)


def _run_onnx_layer(mode: str, x: Tensor, states, weights: list[LayerWeights], hidden: int, lower: bool):
    """One layer, both directions, as ONNX's LSTM/GRU/RNN (``lower``: its lowering). ``x`` is (T, B, I);
    returns the output (T, B, D*H_out) and the final states (D, B, ·)."""
    directions = len(weights)
    w = _stacked([_onnx_gates(mode, lw.w_ih, hidden) for lw in weights], 0)
    r = _stacked([_onnx_gates(mode, lw.w_hh, hidden) for lw in weights], 0)
    b = None
    if weights[0].b_ih is not None:
        b = _stacked([ops.concat([_onnx_gates(mode, lw.b_ih, hidden), _onnx_gates(mode, lw.b_hh, hidden)], 1)
                      for lw in weights], 0)
    initial = [None, None]
    if states[0] is not None:
        for k in range(len(states[0])):
            initial[k] = ops.stack([state[k] for state in states], 0)
    attrs = {"hidden_size": hidden, "direction": "bidirectional" if directions == 2 else "forward"}
    if mode == "GRU":
        attrs["linear_before_reset"] = 1  # PyTorch applies the reset gate after the recurrent product
    if mode.startswith("RNN"):
        attrs["activations"] = ["Tanh" if mode == "RNN_TANH" else "Relu"] * directions
    steps, batch = x.shape[0], x.shape[1]
    h_out = weights[0].w_hh.shape[1]
    inputs = [x, w, r, b, None, initial[0]] + ([initial[1], None] if mode == "LSTM" else [])
    while inputs[-1] is None:
        inputs.pop()
    n_out = 3 if mode == "LSTM" else 2
    if lower:
        outs = _lowered(_ONNX_OP[mode], inputs, attrs, [lw.w_hr for lw in weights], n_out)
    else:
        state_shapes = [(directions, batch, h_out), (directions, batch, hidden)][:n_out - 1]
        outs = emit(_ONNX_OP[mode], inputs, attrs, shape=(steps, directions, batch, h_out), dtype=x.dtype,
                    num_outputs=n_out, extra_outputs=[(s, x.dtype) for s in state_shapes])
    if directions == 1:
        y = ops.squeeze(outs[0], 1)  # (T, 1, B, H) -> (T, B, H): the same memory order, no copy
    else:
        y = ops.permute(outs[0], 0, 2, 1, 3)  # (T, B, D, H)
        y = emit("Reshape", [y, _ints([0, 0, directions * h_out])], shape=(steps, batch, directions * h_out),
                 dtype=x.dtype)
    return y, list(outs[1:])


def _lowered(op_type: str, inputs: list, attrs: dict, projections: list, n_out: int) -> list[Tensor]:
    """What the ONNX node would compute, as primitive ops now (no ORT kernel, or LSTM's proj_size)."""
    values = [t.value if t is not None else None for t in inputs]
    spec = lowering_spec(op_type, attrs, values[0], values[2], where=f"{op_type} layer")
    projection = [p.value for p in projections] if projections[0] is not None else None
    outs = build_lowering(Emitter(f"{op_type.lower()}_layer"), op_type, values, spec, [True] * n_out,
                          projection=projection)
    return [Tensor(v) for v in outs]


class RNNBase(Module):
    """What ``nn.RNN``, ``nn.LSTM`` and ``nn.GRU`` share: parameters, checks and the layer loop.

    Parameters, per layer ``k`` and direction (suffix ``_reverse``), in
    PyTorch's order: ``weight_ih_lk`` (G*H, I or D*H_out), ``weight_hh_lk``
    (G*H, H_out), ``bias_ih_lk``, ``bias_hh_lk`` (G*H,), LSTM's
    ``weight_hr_lk`` (proj_size, H) when ``proj_size > 0``; all drawn from
    U(-1/sqrt(H), 1/sqrt(H)) as PyTorch does.
    """

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, dtype="float32"):
        super().__init__()
        name = type(self).__name__
        if mode not in _GATES:
            raise ValueError(f"{name}: unknown mode {mode!r}")
        for arg, value in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"{name}: {arg} must be a positive int, got {value!r}")
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0 <= dropout <= 1:
            raise ValueError(f"{name}: dropout must be a number in [0, 1], got {dropout!r}")
        if proj_size < 0 or (proj_size and mode != "LSTM"):
            raise ValueError(f"{name}: proj_size must be >= 0 and is only supported by LSTM, got {proj_size}")
        if proj_size >= hidden_size:
            raise ValueError(f"{name}: proj_size ({proj_size}) must be smaller than hidden_size ({hidden_size})")
        if dropout > 0 and num_layers == 1:
            warnings.warn(f"{name}: dropout={dropout} acts between layers, so it does nothing with num_layers=1",
                          stacklevel=3)
        self.mode = mode
        self.input_size, self.hidden_size, self.num_layers = int(input_size), int(hidden_size), int(num_layers)
        self.bias, self.batch_first, self.dropout = bool(bias), bool(batch_first), float(dropout)
        self.bidirectional, self.proj_size = bool(bidirectional), int(proj_size)
        dtype = np.dtype(dtype)
        gate_rows = _GATES[mode] * hidden_size
        out_size = proj_size or hidden_size
        bound = 1.0 / math.sqrt(hidden_size)

        def param(shape):
            return Parameter(_random.uniform(bound, shape, dtype))

        for layer in range(num_layers):
            layer_in = input_size if layer == 0 else out_size * self.num_directions
            for direction in range(self.num_directions):
                suffix = f"_l{layer}" + ("_reverse" if direction else "")
                setattr(self, "weight_ih" + suffix, param((gate_rows, layer_in)))
                setattr(self, "weight_hh" + suffix, param((gate_rows, out_size)))
                if bias:
                    setattr(self, "bias_ih" + suffix, param((gate_rows,)))
                    setattr(self, "bias_hh" + suffix, param((gate_rows,)))
                if proj_size:
                    setattr(self, "weight_hr" + suffix, param((proj_size, hidden_size)))

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def layer_weights(self, layer: int, direction: int) -> LayerWeights:
        suffix = f"_l{layer}" + ("_reverse" if direction else "")
        get = self._parameters.get
        return LayerWeights(get("weight_ih" + suffix), get("weight_hh" + suffix), get("bias_ih" + suffix),
                            get("bias_hh" + suffix), get("weight_hr" + suffix))

    @property
    def all_weights(self) -> list[list[Parameter]]:
        """Per layer and direction, the parameters in PyTorch's order (as ``torch.nn.RNNBase.all_weights``)."""
        return [[p for p in self.layer_weights(layer, d) if p is not None]
                for layer in range(self.num_layers) for d in range(self.num_directions)]

    # ---- checks ------------------------------------------------------------
    def _check_state(self, op: str, h: Tensor, size: int, batch, unbatched: bool) -> None:
        layers = self.num_layers * self.num_directions
        expected = (layers, size) if unbatched else (layers, batch, size)
        if not isinstance(h, Tensor) or h.ndim != len(expected) or any(
                isinstance(a, int) and isinstance(b, int) and a != b for a, b in zip(h.shape, expected)):
            got = ops.fmt(h.shape) if isinstance(h, Tensor) else type(h).__name__
            raise shape_error(op, f"expected hidden state of shape {ops.fmt(expected)}, got {got}")

    def _states(self, op: str, hx, x: Tensor, batch, unbatched: bool):
        """Split hx into per (layer, direction) tuples of (B, H) tensors, or Nones."""
        layers = self.num_layers * self.num_directions
        if hx is None:
            return [None] * layers
        out_size = self.proj_size or self.hidden_size
        if self.mode == "LSTM":
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise shape_error(op, "hx must be a tuple (h_0, c_0)")
            sizes = [out_size, self.hidden_size]
            parts = list(hx)
        else:
            if isinstance(hx, (tuple, list)):
                raise shape_error(op, "hx must be one tensor h_0, not a tuple")
            sizes, parts = [self.hidden_size], [hx]
        per_tensor = []
        for h, size in zip(parts, sizes):
            self._check_state(op, h, size, batch, unbatched)
            if h.dtype != x.dtype:
                raise shape_error(op, f"hidden state dtype {h.dtype} differs from input dtype {x.dtype}")
            if unbatched:
                h = ops.unsqueeze(h, 1)
            per_tensor.append([ops.squeeze(p, 0) for p in _split(h, 0, layers)])
        return [tuple(column) for column in zip(*per_tensor)]

    # ---- forward -------------------------------------------------------------
    def forward(self, input: Tensor, hx=None):  # noqa: A002 (PyTorch's name)
        weights = [self.layer_weights(layer, direction)
                   for layer in range(self.num_layers) for direction in range(self.num_directions)]
        return self.forward_with(weights, input, hx)

    def forward_with(self, weights: list[LayerWeights], input: Tensor, hx=None):  # noqa: A002
        """``forward`` with the given weights (one LayerWeights per layer and direction) instead of the
        module's parameters: float64 tensors, say, or weights computed by another part of the graph."""
        op = type(self).__name__
        if not isinstance(input, Tensor):
            raise shape_error(op, f"input must be a Tensor, got {type(input).__name__}")
        if input.ndim not in (2, 3):
            raise shape_error(op, f"expected a 2-D (unbatched) or 3-D input, got {ops.fmt(input.shape)}")
        if len(weights) != self.num_layers * self.num_directions:
            raise ValueError(f"{op}: expected {self.num_layers * self.num_directions} LayerWeights, "
                             f"got {len(weights)}")
        weight = weights[0].w_ih
        if input.dtype != weight.dtype:
            raise shape_error(op, f"input dtype {input.dtype} differs from the weights' dtype {weight.dtype}")
        features = input.shape[-1]
        if isinstance(features, int) and features != self.input_size:
            raise shape_error(op, f"input {ops.fmt(input.shape)} must end in input_size={self.input_size}")
        unbatched = input.ndim == 2
        x = ops.unsqueeze(input, 1) if unbatched else input
        time_axis = 1 if self.batch_first and not unbatched else 0
        steps = x.shape[time_axis]
        if isinstance(steps, int) and steps == 0:
            raise shape_error(op, f"the sequence is empty: input {ops.fmt(input.shape)}")
        states = self._states(op, hx, x, x.shape[1 - time_axis], unbatched)
        # ONNX Runtime's recurrent kernels are float32 only, and ONNX's LSTM has no projection:
        # there the layer emits the lowering itself.
        lower = bool(self.proj_size) or x.dtype != np.float32
        layer_input = ops.permute(x, 1, 0, 2) if time_axis == 1 else x  # ONNX's layout 0: (T, B, I)
        finals: list[list[Tensor]] = []
        for layer in range(self.num_layers):
            if layer and self.dropout and self.training:
                layer_input = F.dropout(layer_input, self.dropout, True)
            picked = slice(layer * self.num_directions, (layer + 1) * self.num_directions)
            layer_input, layer_finals = _run_onnx_layer(self.mode, layer_input, states[picked], weights[picked],
                                                        self.hidden_size, lower)
            finals.append(layer_finals)
        output = ops.permute(layer_input, 1, 0, 2) if time_axis == 1 else layer_input
        output = ops.squeeze(output, 1) if unbatched else output
        results = []
        for k in range(len(finals[0])):
            stacked = _stacked([f[k] for f in finals], 0)
            results.append(ops.squeeze(stacked, 1) if unbatched else stacked)
        return output, (tuple(results) if self.mode == "LSTM" else results[0])

    def extra_repr(self) -> str:
        parts = [f"{self.input_size}, {self.hidden_size}"]
        if self.proj_size:
            parts.append(f"proj_size={self.proj_size}")
        if self.num_layers != 1:
            parts.append(f"num_layers={self.num_layers}")
        if not self.bias:
            parts.append("bias=False")
        if self.batch_first:
            parts.append("batch_first=True")
        if self.dropout:
            parts.append(f"dropout={self.dropout}")
        if self.bidirectional:
            parts.append("bidirectional=True")
        return ", ".join(parts)


class RNN(RNNBase):
    """Elman RNN: h_t = tanh(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh) (or relu), as ``torch.nn.RNN``.

    ``forward(x, h_0=None)`` returns ``(output, h_n)``: output (T, B, D*H)
    (``(B, T, D*H)`` with ``batch_first``), h_n (num_layers*D, B, H).

    >>> import graphc as gc
    >>> from graphc import nn
    >>> out, h_n = nn.RNN(8, 16, batch_first=True)(gc.input("x", ("batch", 5, 8)))
    >>> out.shape, h_n.shape
    (('batch', 5, 16), (1, 'batch', 16))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh",
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 dtype="float32"):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"RNN: unknown nonlinearity {nonlinearity!r}; use 'tanh' or 'relu'")
        super().__init__("RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU", input_size, hidden_size,
                         num_layers, bias, batch_first, dropout, bidirectional, dtype=dtype)
        self.nonlinearity = nonlinearity  # torch's printout leaves it out, and so does ours (RNNBase.extra_repr)


class LSTM(RNNBase):
    """Long short-term memory, as ``torch.nn.LSTM`` (gates i, f, g, o; optional ``proj_size``).

    ``forward(x, (h_0, c_0)=None)`` returns ``(output, (h_n, c_n))``.

    >>> import graphc as gc
    >>> from graphc import nn
    >>> out, (h_n, c_n) = nn.LSTM(28, 128, num_layers=2, batch_first=True)(gc.input("x", ("batch", 28, 28)))
    >>> out.shape, h_n.shape, c_n.shape
    (('batch', 28, 128), (2, 'batch', 128), (2, 'batch', 128))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, proj_size: int = 0,
                 dtype="float32"):
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         proj_size, dtype)


class GRU(RNNBase):
    """Gated recurrent unit, as ``torch.nn.GRU`` (gates r, z, n; n = tanh(W_in x + b_in + r (W_hn h + b_hn))).

    ``forward(x, h_0=None)`` returns ``(output, h_n)``.

    >>> import graphc as gc
    >>> from graphc import nn
    >>> out, h_n = nn.GRU(8, 16, bidirectional=True)(gc.input("x", (5, "batch", 8)))
    >>> out.shape, h_n.shape
    ((5, 'batch', 32), (2, 'batch', 16))
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False, dtype="float32"):
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
                         dtype=dtype)
