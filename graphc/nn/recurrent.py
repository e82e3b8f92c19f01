"""Recurrent layers: ``nn.RNN``, ``nn.LSTM``, ``nn.GRU`` with PyTorch's arguments, parameters and results.

ONNX's ``LSTM``/``GRU``/``RNN`` ops have no gradient, so the layers are
lowered to primitive ops that have VJP rules:

- The input projection of every time step is one ``Gemm`` over the whole
  sequence (``x @ W_ih^T + b``, the rows of all steps at once), as fast
  implementations do; the recurrence then costs one small ``Gemm`` per step.
- A static sequence length (an int) is unrolled: ``Split`` hands each step its
  slice of the projection, each step is ``Gemm`` + ``Split`` into gates +
  element-wise ops, and one ``Concat`` stacks the step outputs. Autodiff sees
  a plain graph.
- A symbolic sequence length (``"seq"``) becomes one ``Scan`` per layer and
  direction. The step's body takes the recurrent weights as loop-invariant
  state (so the body references nothing outside itself) and also emits the
  state *before* each step as a scan output; the ``Scan`` VJP rule
  (``passes/autodiff/rules/scan.py``) runs a reverse ``Scan`` over those.

Long static sequences make big graphs: with a symbolic batch, ONNX Runtime's
session setup grows faster than linearly (a 2x128 LSTM training step: 0.7 s
at 28 steps, ~10 s at 100, ~110 s at 300); declare the time dim symbolic
there to get the Scan lowering (0.1 s, at some cost per step).

Gate layouts are PyTorch's: LSTM rows ``i, f, g, o``; GRU rows ``r, z, n``
with ``b_hn`` inside ``r * (W_hn h + b_hn)``.
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import numpy as np
import onnx_ir as ir

from graphc import ops
from graphc import random as _random
from graphc.dtypes import to_ir_dtype
from graphc.errors import shape_error
from graphc.nn import functional as F
from graphc.nn.module import Module
from graphc.nn.parameter import Parameter
from graphc.tensor import Tensor, _to_ir_shape, constant, emit
from passes.autodiff.rules.scan import name_body_values
from passes.traversal import leaf_values, topological_nodes

__all__ = ["RNNBase", "RNN", "LSTM", "GRU"]

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


class LayerWeights(NamedTuple):
    """One layer and direction's parameters (``None`` where a layer has no bias / projection)."""
    w_ih: Tensor
    w_hh: Tensor
    b_ih: Tensor | None
    b_hh: Tensor | None
    w_hr: Tensor | None = None


# ---- small emitters ------------------------------------------------------
def _mul_dims(a, b):
    return a * b if isinstance(a, int) and isinstance(b, int) else None


def _ints(values) -> Tensor:
    return constant(np.asarray(list(values), dtype=np.int64))


def _reshape(x: Tensor, target, shape) -> Tensor:
    """Reshape to a constant ``target`` (may hold one -1), declaring the symbolic ``shape`` it has."""
    return emit("Reshape", [x, _ints(target)], shape=shape, dtype=x.dtype)


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


def _gemm(a: Tensor, w: Tensor, c: Tensor | None = None) -> Tensor:
    """``a @ w^T (+ c)`` as one Gemm (transB=1): w is PyTorch's (out, in) layout."""
    return emit("Gemm", [a, w] + ([c] if c is not None else []), {"transB": 1},
                shape=(a.shape[0], w.shape[0]), dtype=a.dtype)


# ---- cells: one time step, PyTorch's formulas --------------------------------
# ``xp`` is the step's input projection (B, G), input bias included; ``state``
# is a tuple of (B, H) tensors, or None for the zero initial state (the step
# then skips the recurrent Gemm, whose result would be exactly zero).
def _lstm_cell(xp: Tensor, state, w: LayerWeights):
    gates = xp if state is None else _gemm(state[0], w.w_hh, xp)
    i, f, g, o = _split(gates, 1, 4)
    i, f, g, o = F.sigmoid(i), F.sigmoid(f), F.tanh(g), F.sigmoid(o)
    c = i * g if state is None else f * state[1] + i * g
    h = o * F.tanh(c)
    if w.w_hr is not None:
        h = _gemm(h, w.w_hr)
    return h, c


def _gru_cell(xp: Tensor, state, w: LayerWeights):
    x_r, x_z, x_n = _split(xp, 1, 3)
    if state is None:
        if w.b_hh is None:
            h_r = h_z = h_n = None
        else:
            h_r, h_z, h_n = _split(w.b_hh, 0, 3)
    else:
        h_r, h_z, h_n = _split(_gemm(state[0], w.w_hh, w.b_hh), 1, 3)
    r = F.sigmoid(x_r if h_r is None else x_r + h_r)
    z = F.sigmoid(x_z if h_z is None else x_z + h_z)
    n = F.tanh(x_n if h_n is None else x_n + r * h_n)
    h = n - z * n if state is None else (state[0] - n) * z + n  # (1 - z) n + z h, as ATen computes it
    return (h,)


def _rnn_cell(activation):
    def cell(xp: Tensor, state, w: LayerWeights):
        pre = xp if state is None else _gemm(state[0], w.w_hh, xp)
        return (activation(pre),)
    return cell


_CELLS = {"LSTM": _lstm_cell, "GRU": _gru_cell, "RNN_TANH": _rnn_cell(F.tanh), "RNN_RELU": _rnn_cell(F.relu)}


def _input_bias(mode: str, w: LayerWeights) -> Tensor | None:
    """The bias added to the input projection: b_ih + b_hh, except GRU's b_hn, which r gates."""
    if w.b_ih is None:
        return None
    return w.b_ih if mode == "GRU" else w.b_ih + w.b_hh


def _project(x: Tensor, w_ih: Tensor, bias: Tensor | None) -> Tensor:
    """x (T, B, I) or (B, T, I) -> (T*B, G) or (B*T, G) rows: x @ W_ih^T + b for every step in one Gemm."""
    rows = _mul_dims(x.shape[0], x.shape[1])
    flat = _reshape(x, [-1, x.shape[2]], (rows, x.shape[2]))
    return _gemm(flat, w_ih, bias)


# ---- static sequence length: unrolled ------------------------------------------
def _run_unrolled(mode: str, x: Tensor, state, w: LayerWeights, time_axis: int, reverse: bool):
    """One layer, one direction over a sequence of static length; -> (outputs in x's layout, final state)."""
    steps, batch = x.shape[time_axis], x.shape[1 - time_axis]
    proj = _project(x, w.w_ih, _input_bias(mode, w))
    gates = w.w_ih.shape[0]
    if time_axis == 1:  # rows are b*T + t: view as (B, T*G) so each step is a column block
        proj = _reshape(proj, [-1, steps * gates], (batch, steps * gates))
    step_inputs = _split(proj, time_axis, steps)
    cell = _CELLS[mode]
    outputs: list[Tensor | None] = [None] * steps
    for t in (reversed(range(steps)) if reverse else range(steps)):
        state = cell(step_inputs[t], state, w)
        outputs[t] = state[0]
    hidden = outputs[0].shape[1]
    joined = outputs[0] if steps == 1 else ops.concat(outputs, time_axis)
    if time_axis == 0:
        out = _reshape(joined, [steps, -1, hidden], (steps, batch, hidden))
    else:
        out = _reshape(joined, [-1, steps, hidden], (batch, steps, hidden))
    return out, state


# ---- symbolic sequence length: Scan ------------------------------------------------
def _body_input(name: str, shape, dtype) -> Tensor:
    return Tensor(ir.Value(name=name, shape=_to_ir_shape(shape), type=ir.TensorType(to_ir_dtype(dtype))))


def _body_graph(inputs: list[Tensor], outputs: list[Tensor], name: str) -> ir.Graph:
    """The nodes between ``inputs`` and ``outputs`` as a self-contained ONNX graph (a Scan body)."""
    allowed = {t.value for t in inputs}
    out_values = [t.value for t in outputs]
    order = topological_nodes(out_values, stop=allowed)
    for leaf in leaf_values(out_values, order):
        if leaf not in allowed:
            raise RuntimeError(f"a recurrent step body must not reference {leaf.name!r} from outside; "
                               f"pass it as loop-invariant state")
    graph = ir.Graph([t.value for t in inputs], [t.value for t in outputs], nodes=order, name=name)
    name_body_values(graph, name)
    return graph


def _zeros_state(x: Tensor, batch_axis: int, size: int) -> Tensor:
    """Zeros (B, size) with B read from ``x`` at run time."""
    batch = emit("Shape", [x], {"start": batch_axis, "end": batch_axis + 1}, shape=(1,), dtype=np.int64)
    shape = emit("Concat", [batch, _ints([size])], {"axis": 0}, shape=(2,), dtype=np.int64)
    zero = ir.Tensor(np.zeros((1,), dtype=x.dtype))
    return emit("ConstantOfShape", [shape], {"value": zero}, shape=(x.shape[batch_axis], size), dtype=x.dtype)


def _run_scan(mode: str, x: Tensor, state, w: LayerWeights, time_axis: int, reverse: bool):
    """One layer, one direction as one ONNX Scan over a sequence of any length.

    Scan inputs: states (h[, c]), then the loop invariants (recurrent weights),
    then the projected sequence. Scan outputs: the final states and invariants,
    then the per-step outputs, then the per-step states *before* each step
    (what the Scan VJP rule replays the step from).
    """
    batch_axis = 1 - time_axis
    batch = x.shape[batch_axis]
    proj = _project(x, w.w_ih, _input_bias(mode, w))
    gates = w.w_ih.shape[0]
    lead = emit("Shape", [x], {"start": 0, "end": 2}, shape=(2,), dtype=np.int64)
    target = emit("Concat", [lead, _ints([gates])], {"axis": 0}, shape=(3,), dtype=np.int64)
    seq = emit("Reshape", [proj, target], shape=x.shape[:2] + (gates,), dtype=x.dtype)

    hidden = w.w_hh.shape[1]
    if state is None:
        sizes = [hidden, w.w_hh.shape[0] // 4] if mode == "LSTM" else [hidden]
        state = tuple(_zeros_state(x, batch_axis, size) for size in sizes)
    invariants = [v for v in (w.w_hh, w.b_hh if mode == "GRU" else None, w.w_hr) if v is not None]

    body_states = [_body_input(f"state{i}", s.shape, s.dtype) for i, s in enumerate(state)]
    body_invariants = [_body_input(f"invariant{i}", v.shape, v.dtype) for i, v in enumerate(invariants)]
    body_x = _body_input("x_t", (batch, gates), x.dtype)
    it = iter(body_invariants)
    body_w = LayerWeights(None, next(it), None, next(it) if mode == "GRU" and w.b_hh is not None else None,
                          next(it) if w.w_hr is not None else None)
    new_states = _CELLS[mode](body_x, tuple(body_states), body_w)

    def identity(t: Tensor) -> Tensor:
        return emit("Identity", [t], shape=t.shape, dtype=t.dtype)

    body_outputs = [*new_states, *[identity(v) for v in body_invariants], identity(new_states[0]),
                    *[identity(s) for s in body_states]]
    body = _body_graph([*body_states, *body_invariants, body_x], body_outputs, f"{mode.lower()}_step")
    n_states = len(state) + len(invariants)
    n_scan_out = 1 + len(state)
    direction = int(reverse)
    specs = [(s.shape, s.dtype) for s in state] + [(v.shape, v.dtype) for v in invariants]
    out_shape = x.shape[:2] + (hidden,)
    specs += [(out_shape, x.dtype)] + [(x.shape[:2] + (s.shape[1],), x.dtype) for s in state]
    outs = emit("Scan", [*state, *invariants, seq],
                {"body": body, "num_scan_inputs": 1, "scan_input_axes": [time_axis],
                 "scan_input_directions": [direction], "scan_output_axes": [time_axis] * n_scan_out,
                 "scan_output_directions": [direction] * n_scan_out},
                shape=specs[0][0], dtype=specs[0][1], num_outputs=len(specs), extra_outputs=specs[1:])
    final = tuple(outs[:len(state)])
    return outs[n_states], final


# ---- the modules -----------------------------------------------------------------
# ---- inference: ONNX's own recurrent ops -------------------------------------
# ONNX's LSTM/GRU/RNN ops have no gradient, so training unrolls (or scans) the
# recurrence; in eval mode the layer emits the fused op, which ONNX Runtime runs
# about 1.5x faster than the unrolled graph (benchmarks/bench_lstm.py). The
# weights are re-ordered in the graph (ONNX gate orders: LSTM i,o,f,c and GRU
# z,r,h against PyTorch's i,f,g,o and r,z,n); as initializers of an inference
# model, ONNX Runtime folds those Gathers away when the session is created.
_ONNX_GATE_ORDER = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2], "RNN_TANH": [0], "RNN_RELU": [0]}
_ONNX_OP = {"LSTM": "LSTM", "GRU": "GRU", "RNN_TANH": "RNN", "RNN_RELU": "RNN"}


def _onnx_gates(mode: str, w: Tensor, hidden: int) -> Tensor:
    """PyTorch's gate blocks of ``w`` (G*H, ...) in ONNX's order, with a leading direction axis."""
    rows = np.concatenate([np.arange(g * hidden, (g + 1) * hidden) for g in _ONNX_GATE_ORDER[mode]])
    picked = emit("Gather", [w, _ints(rows)], {"axis": 0}, shape=w.shape, dtype=w.dtype)
    return ops.unsqueeze(picked, 0)


def _run_onnx_layer(mode: str, x: Tensor, states, weights: list[LayerWeights], hidden: int):
    """One layer, both directions, as a single ONNX LSTM/GRU/RNN node. ``x`` is (T, B, I)."""
    directions = len(weights)
    w = ops.concat([_onnx_gates(mode, lw.w_ih, hidden) for lw in weights], 0)
    r = ops.concat([_onnx_gates(mode, lw.w_hh, hidden) for lw in weights], 0)
    b = None
    if weights[0].b_ih is not None:
        b = ops.concat([ops.concat([_onnx_gates(mode, lw.b_ih, hidden), _onnx_gates(mode, lw.b_hh, hidden)], 1)
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
    inputs = [x, w, r, b, None, initial[0]] + ([initial[1], None] if mode == "LSTM" else [])
    while inputs[-1] is None:
        inputs.pop()
    state_shape = (directions, batch, hidden)
    outs = emit(_ONNX_OP[mode], inputs, attrs, shape=(steps, directions, batch, hidden), dtype=x.dtype,
                num_outputs=3 if mode == "LSTM" else 2,
                extra_outputs=[(state_shape, x.dtype)] * (2 if mode == "LSTM" else 1))
    y = ops.permute(outs[0], 0, 2, 1, 3)  # (T, B, D, H)
    y = _reshape(y, [0, 0, directions * hidden], (steps, batch, _mul_dims(directions, hidden)))
    return y, list(outs[1:])


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
        if not self.training and not self.proj_size:
            return self._forward_fused(x, time_axis, states, weights, unbatched)
        run = _run_unrolled if isinstance(steps, int) else _run_scan

        finals = []
        layer_input = x
        for layer in range(self.num_layers):
            outputs = []
            for direction in range(self.num_directions):
                index = layer * self.num_directions + direction
                out, final = run(self.mode, layer_input, states[index], weights[index], time_axis,
                                 reverse=bool(direction))
                outputs.append(out)
                finals.append(final)
            layer_input = outputs[0] if len(outputs) == 1 else ops.concat(outputs, 2)
            if self.dropout and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, True)

        output = ops.squeeze(layer_input, 1) if unbatched else layer_input
        results = []
        for k in range(len(finals[0])):
            stacked = ops.stack([f[k] for f in finals], 0)
            results.append(ops.squeeze(stacked, 1) if unbatched else stacked)
        return output, (tuple(results) if self.mode == "LSTM" else results[0])

    def _forward_fused(self, x: Tensor, time_axis: int, states, weights: list[LayerWeights], unbatched: bool):
        """Eval mode: each layer as one ONNX recurrent op (no gradient rule: build training graphs in train mode)."""
        layer_input = ops.permute(x, 1, 0, 2) if time_axis == 1 else x  # ONNX wants (T, B, I)
        finals: list[list[Tensor]] = []
        for layer in range(self.num_layers):
            picked = slice(layer * self.num_directions, (layer + 1) * self.num_directions)
            layer_input, layer_finals = _run_onnx_layer(self.mode, layer_input, states[picked], weights[picked],
                                                        self.hidden_size)
            finals.append(layer_finals)
        output = ops.permute(layer_input, 1, 0, 2) if time_axis == 1 else layer_input
        output = ops.squeeze(output, 1) if unbatched else output
        results = []
        for k in range(len(finals[0])):
            stacked = finals[0][k] if len(finals) == 1 else ops.concat([f[k] for f in finals], 0)
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
