"""``LowerRecurrentPass``: ONNX's ``LSTM``, ``GRU`` and ``RNN`` nodes become primitive ops with VJP rules.

ONNX's recurrent ops have no gradient. Inference keeps them (ONNX Runtime runs
the fused op fast); differentiation first lowers them (``passes.autodiff.core.vjp``
calls :func:`lower_recurrent_nodes` on the nodes it will visit), so graphc's
layers and imported models train through the same code.

The lowering, per direction (ONNX semantics, gate orders LSTM ``i, o, f, c``,
GRU ``z, r, h``):

- one ``Gemm`` projects every time step at once (``X @ W^T + Wb (+ Rb)``), as
  fast implementations do; the recurrence then costs one small ``Gemm`` per
  step (skipped at the first step when there is no ``initial_h``: it is zero);
  LSTM's three sigmoid gates (contiguous in ONNX's order) share one ``Sigmoid``;
- a static sequence length is unrolled: one ``Split`` hands each step its slice
  of the projection, a step is ``Gemm`` + ``Split`` into gates + element-wise
  ops, one ``Concat`` stacks the step outputs;
- a Slice that keeps one time step of an unrolled Y (a classifier's ``out[:, -1, :]``)
  reads that step's output instead of the stacked Y, so the backward adds no zero step
  gradients (``_read_steps_directly``);
- a symbolic length becomes one ``Scan`` whose body takes the recurrent weights
  as loop-invariant state and also emits the state *before* each step, which
  the ``Scan`` VJP (``passes/autodiff/rules/scan.py``) replays.

Supported: ``direction`` forward/reverse/bidirectional, ``layout`` 0 and 1,
``B``, ``initial_h``, ``initial_c``, LSTM peepholes ``P``, GRU
``linear_before_reset`` 0 and 1, activations Sigmoid/Tanh/Relu without
alpha/beta. Refused with an error naming the node: ``sequence_lens``, ``clip``,
``input_forget``, other activations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from passes.autodiff.rules.scan import name_body_values
from passes.emitter import Emitter

RECURRENT_OPS = ("LSTM", "GRU", "RNN")
_INT64_MAX = np.iinfo(np.int64).max
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
_ACTIVATION_OPS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu"}


class RecurrentLoweringError(NotImplementedError):
    """A recurrent node uses a feature the lowering does not support."""


def is_recurrent(node: ir.Node) -> bool:
    return node.op_type in RECURRENT_OPS and node.domain in ("", "ai.onnx")


# ---- shapes ----------------------------------------------------------------------
def _dims(value: ir.Value) -> tuple | None:
    if value is None or value.shape is None:
        return None
    return tuple(d if isinstance(d, int) else d.value for d in value.shape)


def _shape(dims: Iterable) -> ir.Shape:
    return ir.Shape([d if isinstance(d, int) else ir.SymbolicDim(d) for d in dims])


def _mul(a, b):
    return a * b if isinstance(a, int) and isinstance(b, int) else None


class _Builder:
    """An Emitter that types every value it makes (the VJP rules read ranks and static dims)."""

    def __init__(self, emitter: Emitter, dtype: ir.DataType):
        self.e, self.dtype = emitter, dtype

    def op(self, op_type: str, inputs, attrs=None, shape=None, dtype=None) -> ir.Value:
        out = self.e.op(op_type, inputs, attrs, dtype=dtype or self.dtype)
        out.shape = None if shape is None else _shape(shape)
        return out

    def ints(self, values) -> ir.Value:
        return self.e.ints(values)

    def reshape(self, x, target, shape):
        return self.op("Reshape", [x, self.ints(target)], shape=shape)

    def squeeze(self, x, axis, shape):
        return self.op("Squeeze", [x, self.ints([axis])], shape=shape)

    def unsqueeze(self, x, axis):
        dims = list(_dims(x))
        dims.insert(axis, 1)
        return self.op("Unsqueeze", [x, self.ints([axis])], shape=dims)

    def split(self, x, axis: int, parts: int) -> list[ir.Value]:
        """``parts`` equal pieces along ``axis``."""
        if parts == 1:
            return [x]
        dims = list(_dims(x))
        dims[axis] = dims[axis] // parts if isinstance(dims[axis], int) else None
        outs = self.e.op("Split", [x], {"axis": axis, "num_outputs": parts}, num_outputs=parts)
        for out in outs:
            out.type, out.shape = ir.TensorType(self.dtype), _shape(dims)
        return list(outs)

    def split_sizes(self, x, axis: int, sizes: Sequence[int]) -> list[ir.Value]:
        outs = self.e.op("Split", [x, self.ints(sizes)], {"axis": axis}, num_outputs=len(sizes))
        dims = list(_dims(x))
        for out, size in zip(outs, sizes):
            dims[axis] = size
            out.type, out.shape = ir.TensorType(self.dtype), _shape(dims)
        return list(outs)

    def gemm(self, a, w, c=None):
        """``a @ w^T (+ c)``: ``w`` is (out, in), ONNX's W/R layout per direction."""
        return self.op("Gemm", [a, w] + ([c] if c is not None else []), {"transB": 1},
                       shape=(_dims(a)[0], _dims(w)[0]))

    def binary(self, op_type, a, b):
        da, db = _dims(a), _dims(b)
        return self.op(op_type, [a, b], shape=da if len(da) >= len(db) else db)

    def add(self, a, b):
        return self.binary("Add", a, b)

    def mul(self, a, b):
        return self.binary("Mul", a, b)

    def sub(self, a, b):
        return self.binary("Sub", a, b)

    def unary(self, op_type, x):
        return self.op(op_type, [x], shape=_dims(x))

    def concat(self, values, axis):
        if len(values) == 1:
            return values[0]
        dims = list(_dims(values[0]))
        sizes = [_dims(v)[axis] for v in values]
        dims[axis] = sum(sizes) if all(isinstance(s, int) for s in sizes) else None
        return self.op("Concat", values, {"axis": axis}, shape=dims)


# ---- the node's description --------------------------------------------------------
@dataclass
class _Spec:
    op: str
    hidden: int
    reverse: list[bool]  # per direction
    layout: int
    activations: list[list[str]]  # per direction, op types
    linear_before_reset: int
    name: str

    @property
    def gates(self) -> int:
        return _GATES[self.op]


def _check_inputs(node: ir.Node) -> None:
    if len(node.inputs) > 4 and node.inputs[4] is not None:
        raise RecurrentLoweringError(f"{node.op_type} node {node.name!r}: sequence_lens is not supported by the "
                                     f"gradient lowering (expected no sequence_lens input, got "
                                     f"{node.inputs[4].name!r})")


def lowering_spec(op_type: str, attrs: dict, x: ir.Value, r: ir.Value, where: str) -> _Spec:
    """Check a recurrent node's attributes (``attrs``: name -> value) and describe its lowering."""
    attr = attrs.get
    if attr("clip") is not None:
        raise RecurrentLoweringError(f"{where}: clip is not supported by the gradient lowering "
                                     f"(expected no clip attribute, got clip={attr('clip')})")
    if attr("input_forget", 0):
        raise RecurrentLoweringError(f"{where}: input_forget=1 is not supported by the gradient lowering "
                                     f"(expected 0)")
    if attr("activation_alpha") is not None or attr("activation_beta") is not None:
        raise RecurrentLoweringError(f"{where}: activation_alpha/activation_beta are not supported by the "
                                     f"gradient lowering (expected none)")
    direction = attr("direction", "forward")
    reverse = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}.get(direction)
    if reverse is None:
        raise RecurrentLoweringError(f"{where}: unknown direction {direction!r} (expected forward, reverse "
                                     f"or bidirectional)")
    per_dir = len(_DEFAULT_ACTIVATIONS[op_type])
    names = list(attr("activations", None) or _DEFAULT_ACTIVATIONS[op_type] * len(reverse))
    if len(names) != per_dir * len(reverse):
        raise RecurrentLoweringError(f"{where}: expected {per_dir * len(reverse)} activations, got {names}")
    unknown = [n for n in names if n.lower() not in _ACTIVATION_OPS]
    if unknown:
        raise RecurrentLoweringError(f"{where}: activations {unknown} are not supported by the gradient "
                                     f"lowering (expected Sigmoid, Tanh or Relu)")
    ops = [_ACTIVATION_OPS[n.lower()] for n in names]
    activations = [ops[d * per_dir:(d + 1) * per_dir] for d in range(len(reverse))]
    layout = attr("layout", 0)
    if layout not in (0, 1):
        raise RecurrentLoweringError(f"{where}: unknown layout {layout} (expected 0 or 1)")
    x_dims, r_dims = _dims(x), _dims(r)
    if x_dims is None or len(x_dims) != 3:
        raise RecurrentLoweringError(f"{where}: the gradient lowering needs X of known rank 3, got shape "
                                     f"{x.shape} (run shape inference first)")
    hidden = attr("hidden_size", None) or (r_dims[-1] if r_dims else None)
    if not isinstance(hidden, int):
        raise RecurrentLoweringError(f"{where}: the hidden size is unknown (expected a hidden_size attribute "
                                     f"or R of static shape, got R of shape {r.shape})")
    return _Spec(op_type, hidden, reverse, layout, activations, attr("linear_before_reset", 0), where)


# ---- per-direction pieces ----------------------------------------------------------------
def _direction_pieces(b: _Builder, value: ir.Value | None, axis: int, count: int) -> list[ir.Value | None]:
    """``value`` split along its direction ``axis`` into ``count`` pieces without that axis.

    Sees through the stacking graphc's layers emit (``Unsqueeze``, ``Concat`` of
    ``Unsqueeze``s), so the gradient reaches each piece without Split/Squeeze pairs.
    """
    if value is None:
        return [None] * count
    stacked = _unstacked(value, axis, count)
    if stacked is not None:
        return stacked
    dims = list(_dims(value))
    del dims[axis]
    return [b.squeeze(p, axis, dims) for p in b.split(value, axis, count)]


def _const_ints(value: ir.Value | None) -> list[int] | None:
    if value is None or value.const_value is None:
        return None
    return [int(v) for v in np.asarray(value.const_value.numpy()).reshape(-1)]


def _unsqueezed_source(value: ir.Value, axis: int) -> ir.Value | None:
    node = value.producer()
    if node is None or node.op_type != "Unsqueeze" or len(node.inputs) != 2:
        return None
    return node.inputs[0] if _const_ints(node.inputs[1]) == [axis] and _dims(node.inputs[0]) else None


def _unstacked(value: ir.Value, axis: int, count: int) -> list[ir.Value] | None:
    if count == 1 and _unsqueezed_source(value, axis) is not None:
        return [_unsqueezed_source(value, axis)]
    node = value.producer()
    if node is None or node.op_type != "Concat" or len(node.inputs) != count:
        return None
    if node.attributes["axis"].value != axis:
        return None
    sources = [_unsqueezed_source(v, axis) for v in node.inputs]
    return None if any(s is None for s in sources) else sources


@dataclass
class _Weights:
    """One direction's weights, ONNX layouts without the direction axis."""
    w: ir.Value  # (G*H, I)
    r: ir.Value  # (G*H, H_out)
    wb: ir.Value | None  # (G*H,)
    rb: ir.Value | None  # (G*H,)
    p: ir.Value | None = None  # LSTM peepholes (3*H,), order i, o, f
    projection: ir.Value | None = None  # graphc's LSTM proj_size extension: (H_out, H)


def _activation(b: _Builder, op_type: str, x):
    return b.unary(op_type, x)


# ---- cells: one time step, ONNX's formulas ------------------------------------------
# ``xp`` is the step's input projection (B, G*H) with the biases folded in
# (see _input_bias); ``state`` a tuple of (B, H) values or None for the zero
# initial state, where the recurrent product is skipped.
def _lstm_cell(b: _Builder, xp, state, w: _Weights, acts):
    f_act, g_act, h_act = acts
    gates = xp if state is None else b.gemm(state[0], w.r, xp)
    if w.p is None:
        return _lstm_cell_blocked(b, gates, state, w, acts)
    i, o, f, c = b.split(gates, 1, 4)
    peep = b.split(w.p, 0, 3)  # peepholes: i and f see c_{t-1} before their activation, o sees c_t
    if state is not None:
        i = b.add(i, b.mul(peep[0], state[1]))
        f = b.add(f, b.mul(peep[2], state[1]))
    i, f, c = _activation(b, f_act, i), _activation(b, f_act, f), _activation(b, g_act, c)
    cell = b.mul(i, c) if state is None else b.add(b.mul(f, state[1]), b.mul(i, c))
    o = b.add(o, b.mul(peep[1], cell))
    h = b.mul(_activation(b, f_act, o), _activation(b, h_act, cell))
    if w.projection is not None:
        h = b.gemm(h, w.projection)
    return h, cell


def _lstm_cell_blocked(b: _Builder, gates, state, w: _Weights, acts):
    """The cell without peepholes: i, o, f are contiguous in ONNX's gate order, so one activation covers them.

    One Sigmoid over (B, 3H) instead of three over (B, H), and autodiff's backward
    likewise (one Sigmoid gradient and one Concat instead of three and a wider
    Concat): about 6 nodes fewer per step (2371 -> 2048 nodes for the 2x128, 28-step
    classifier), for a Split of the activated block that copies 3BH more each way;
    step time unchanged within the noise (docs/performance.md). At the zero initial
    state f is never read, so only the (i, o) block is activated.
    """
    f_act, g_act, h_act = acts
    hidden = _dims(gates)[1] // 4
    if state is None:
        io_pre, _, c_pre = b.split_sizes(gates, 1, [2 * hidden, hidden, hidden])
        i, o = b.split(_activation(b, f_act, io_pre), 1, 2)
        cell = b.mul(i, _activation(b, g_act, c_pre))
    else:
        iof_pre, c_pre = b.split_sizes(gates, 1, [3 * hidden, hidden])
        i, o, f = b.split(_activation(b, f_act, iof_pre), 1, 3)
        cell = b.add(b.mul(f, state[1]), b.mul(i, _activation(b, g_act, c_pre)))
    h = b.mul(o, _activation(b, h_act, cell))
    if w.projection is not None:
        h = b.gemm(h, w.projection)
    return h, cell


def _gru_cell(lbr: int):
    def cell(b: _Builder, xp, state, w: _Weights, acts):
        f_act, g_act = acts
        hidden = _dims(xp)[1] // 3
        x_z, x_r, x_h = b.split(xp, 1, 3)
        rb = b.split(w.rb, 0, 3) if w.rb is not None else [None] * 3
        if lbr:
            if state is None:
                h_z, h_r, h_h = rb
            else:
                h_z, h_r, h_h = b.split(b.gemm(state[0], w.r, w.rb), 1, 3)
        else:
            r_zr, r_h = b.split_sizes(w.r, 0, [2 * hidden, hidden])
            rb_zr = None if w.rb is None else b.concat(rb[:2], 0)
            if state is None:
                h_z, h_r = rb[:2]
            else:
                h_z, h_r = b.split(b.gemm(state[0], r_zr, rb_zr), 1, 2)
        z = _activation(b, f_act, x_z if h_z is None else b.add(x_z, h_z))
        r = _activation(b, f_act, x_r if h_r is None else b.add(x_r, h_r))
        if lbr:
            gated = None if h_h is None else b.mul(r, h_h)
        else:
            gated = rb[2] if state is None else b.gemm(b.mul(r, state[0]), r_h, rb[2])
        n = _activation(b, g_act, x_h if gated is None else b.add(x_h, gated))
        if state is None:
            return (b.sub(n, b.mul(z, n)),)
        return (b.add(b.mul(b.sub(state[0], n), z), n),)  # (1 - z) n + z h, as ATen computes it
    return cell


def _rnn_cell(b: _Builder, xp, state, w: _Weights, acts):
    pre = xp if state is None else b.gemm(state[0], w.r, xp)
    return (_activation(b, acts[0], pre),)


def _cell(spec: _Spec):
    if spec.op == "LSTM":
        return _lstm_cell
    return _gru_cell(spec.linear_before_reset) if spec.op == "GRU" else _rnn_cell


def _input_bias(b: _Builder, spec: _Spec, w: _Weights):
    """The bias folded into the input projection: Wb + Rb, except GRU's Rb (the step adds it: Rb_h sits
    inside the reset gate's product)."""
    if w.wb is None:
        return None
    return w.wb if spec.op == "GRU" else b.add(w.wb, w.rb)


def _project(b: _Builder, x, w: _Weights, bias):
    """x (T, B, I) or (B, T, I) -> rows (T*B, G*H) or (B*T, G*H): one Gemm for every step."""
    dims = _dims(x)
    flat = b.reshape(x, [-1, dims[2]], (_mul(dims[0], dims[1]), dims[2]))
    return b.gemm(flat, w.w, bias)


def _unrolled(b: _Builder, spec: _Spec, x, time_axis: int, w: _Weights, state, acts, reverse: bool):
    """One direction over a static length; -> (per-step outputs in time order, final state)."""
    dims = _dims(x)
    steps, batch = dims[time_axis], dims[1 - time_axis]
    proj = _project(b, x, w, _input_bias(b, spec, w))
    gates = _dims(w.w)[0]
    if time_axis == 1:  # rows are b*T + t: view as (B, T*G) so each step is a column block
        proj = b.reshape(proj, [-1, steps * gates], (batch, steps * gates))
    step_inputs = b.split(proj, time_axis, steps)
    cell = _cell(spec)
    outputs: list = [None] * steps
    for t in (reversed(range(steps)) if reverse else range(steps)):
        state = cell(b, step_inputs[t], state, w, acts)
        outputs[t] = state[0]
    return outputs, state


def _zeros(b: _Builder, x, batch_axis: int, size: int):
    """Zeros (B, size), B read from ``x`` at run time."""
    batch = b.op("Shape", [x], {"start": batch_axis, "end": batch_axis + 1}, shape=(1,), dtype=ir.DataType.INT64)
    target = b.op("Concat", [batch, b.ints([size])], {"axis": 0}, shape=(2,), dtype=ir.DataType.INT64)
    zero = ir.Tensor(np.zeros((1,), dtype=b.dtype.numpy()))
    return b.op("ConstantOfShape", [target], {"value": zero}, shape=(_dims(x)[batch_axis], size))


def _body_input(name: str, dims, dtype: ir.DataType) -> ir.Value:
    return ir.Value(name=name, shape=_shape(dims), type=ir.TensorType(dtype))


def _scanned(b: _Builder, spec: _Spec, x, time_axis: int, w: _Weights, state, acts, reverse: bool):
    """One direction as one ONNX Scan over a sequence of any length; -> (outputs (T, B, H) or (B, T, H),
    final state).

    Scan inputs: the states, the loop invariants (recurrent weights), the
    projected sequence. Scan outputs: final states and invariants, the per-step
    states *before* each step (what the VJP replays, and, shifted by one step,
    the outputs).
    """
    dims = _dims(x)
    batch_axis = 1 - time_axis
    batch = dims[batch_axis]
    gates = _dims(w.w)[0]
    proj = _project(b, x, w, _input_bias(b, spec, w))
    lead = b.op("Shape", [x], {"start": 0, "end": 2}, shape=(2,), dtype=ir.DataType.INT64)
    target = b.op("Concat", [lead, b.ints([gates])], {"axis": 0}, shape=(3,), dtype=ir.DataType.INT64)
    seq = b.op("Reshape", [proj, target], shape=(dims[0], dims[1], gates))
    h_out = _dims(w.r)[1]
    if state is None:
        sizes = [h_out, spec.hidden] if spec.op == "LSTM" else [h_out]
        state = tuple(_zeros(b, x, batch_axis, size) for size in sizes)
    keep_rb = spec.op == "GRU" and w.rb is not None
    invariants = {"r": w.r, "rb": w.rb if keep_rb else None, "p": w.p, "projection": w.projection}
    invariants = {k: v for k, v in invariants.items() if v is not None}

    body = _Builder(Emitter(f"{spec.op.lower()}_step"), b.dtype)
    body_states = [_body_input(f"state{i}", _dims(s), b.dtype) for i, s in enumerate(state)]
    body_inv = {k: _body_input(f"invariant_{k}", _dims(v), b.dtype) for k, v in invariants.items()}
    body_x = _body_input("x_t", (batch, gates), b.dtype)
    body_w = _Weights(None, body_inv["r"], None, body_inv.get("rb"), body_inv.get("p"), body_inv.get("projection"))
    new_states = _cell(spec)(body, body_x, tuple(body_states), body_w, acts)

    def identity(v):
        return body.unary("Identity", v)

    # No per-step output of its own: h after step t is h before the next step (or the final h).
    # (A body output that is both a state and a scan output goes wrong in ONNX Runtime's Scan
    # once an optimizer drops the Identity between them.)
    body_outputs = [*new_states, *[identity(v) for v in body_inv.values()], *[identity(s) for s in body_states]]
    graph = ir.Graph([*body_states, *body_inv.values(), body_x], body_outputs, nodes=body.e.nodes,
                     name=f"{spec.op.lower()}_step")
    name_body_values(graph, graph.name)
    n_carried = len(state) + len(invariants)
    n_scan_out = len(state)
    direction = int(reverse)
    outs = b.e.op("Scan", [*state, *invariants.values(), seq],
                  {"body": graph, "num_scan_inputs": 1, "scan_input_axes": [time_axis],
                   "scan_input_directions": [direction], "scan_output_axes": [time_axis] * n_scan_out,
                   "scan_output_directions": [direction] * n_scan_out},
                  num_outputs=n_carried + n_scan_out)
    carried = [*state, *invariants.values()]
    for out, like in zip(outs, carried):
        out.type, out.shape = ir.TensorType(b.dtype), _shape(_dims(like))
    for out, like in zip(outs[n_carried:], state):
        per_step = list(_dims(like))
        per_step.insert(time_axis, dims[time_axis])
        out.type, out.shape = ir.TensorType(b.dtype), _shape(per_step)
    before, final = outs[n_carried], outs[0]
    steps_dims = list(_dims(before))
    start, end = ([0], [-1]) if reverse else ([1], [_INT64_MAX])
    rest = b.op("Slice", [before, b.ints(start), b.ints(end), b.ints([time_axis])],
                shape=[None if a == time_axis else d for a, d in enumerate(steps_dims)])
    last = b.unsqueeze(final, time_axis)
    y = b.concat([last, rest] if reverse else [rest, last], time_axis)
    y.shape = _shape(steps_dims)
    return y, tuple(outs[:len(state)])


# ---- one node -------------------------------------------------------------------------
def _x_time_major(x: ir.Value, layout: int) -> tuple[ir.Value, int]:
    """X and its time axis; sees through a batch-first -> time-first Transpose (graphc's layers emit one)."""
    if layout == 1:
        return x, 1
    node = x.producer()
    if node is not None and node.op_type == "Transpose" and _dims(node.inputs[0]) is not None:
        perm = node.attributes.get("perm")
        if perm is not None and list(perm.value) == [1, 0, 2]:
            return node.inputs[0], 1
    return x, 0


def build_lowering(emitter: Emitter, node_op: str, inputs: Sequence[ir.Value | None], spec: _Spec,
                   wanted: Sequence[bool], projection: Sequence[ir.Value] | None = None,
                   step_outputs: list | None = None) -> list[ir.Value | None]:
    """The values of an ONNX recurrent node's outputs (Y, Y_h[, Y_c]) computed by primitive ops.

    ``wanted[k]`` says whether output k is used. ``projection``: per direction an
    (H_out, H) LSTM projection (graphc's ``proj_size``, which ONNX's op lacks).
    ``step_outputs``: a list that receives, per direction, the step outputs (B, H) in
    time order (unrolled) or None (Scan).
    """
    x, w_all, r_all = inputs[0], inputs[1], inputs[2]
    padded = list(inputs) + [None] * (8 - len(inputs))
    b_all, h0, c0, p_all = padded[3], padded[5], padded[6], padded[7]
    b = _Builder(emitter, x.dtype)
    count = len(spec.reverse)
    state_axis = 0 if spec.layout == 0 else 1
    ws, rs = _direction_pieces(b, w_all, 0, count), _direction_pieces(b, r_all, 0, count)
    biases = _direction_pieces(b, b_all, 0, count)
    peeps = _direction_pieces(b, p_all, 0, count) if node_op == "LSTM" else [None] * count
    h0s, c0s = _direction_pieces(b, h0, state_axis, count), _direction_pieces(b, c0, state_axis, count)
    seq_x, time_axis = _x_time_major(x, spec.layout)
    steps = _dims(seq_x)[time_axis]
    ys, finals = [], []
    for d in range(count):
        wb = rb = None
        if biases[d] is not None:
            wb, rb = b.split(biases[d], 0, 2)
        weights = _Weights(ws[d], rs[d], wb, rb, peeps[d], projection[d] if projection else None)
        state = None
        if h0s[d] is not None or c0s[d] is not None:
            if node_op == "LSTM":
                h_out = _dims(rs[d])[1]
                h = h0s[d] if h0s[d] is not None else _zeros(b, seq_x, 1 - time_axis, h_out)
                c = c0s[d] if c0s[d] is not None else _zeros(b, seq_x, 1 - time_axis, spec.hidden)
                state = (h, c)
            else:
                state = (h0s[d],)
        if isinstance(steps, int):
            outputs, final = _unrolled(b, spec, seq_x, time_axis, weights, state, spec.activations[d],
                                       spec.reverse[d])
            y = _stack_steps(b, outputs, spec.layout) if wanted[0] else None
            if step_outputs is not None:
                step_outputs.append(outputs)
        else:
            if step_outputs is not None:
                step_outputs.append(None)
            y, final = _scanned(b, spec, seq_x, time_axis, weights, state, spec.activations[d], spec.reverse[d])
            if wanted[0]:  # (T, B, H) or (B, T, H) in the scan's time axis; to the layout's Y
                if time_axis != spec.layout:
                    dims = _dims(y)
                    y = b.op("Transpose", [y], {"perm": [1, 0, 2]}, shape=(dims[1], dims[0], dims[2]))
                y = b.unsqueeze(y, 1 if spec.layout == 0 else 2)
        ys.append(y)
        finals.append(final)
    results: list[ir.Value | None] = [None] * len(wanted)
    if wanted[0]:
        results[0] = b.concat(ys, 1 if spec.layout == 0 else 2)
    for k in range(1, len(wanted)):
        if wanted[k]:
            results[k] = b.concat([b.unsqueeze(f[k - 1], state_axis) for f in finals], state_axis)
    return results


def _stack_steps(b: _Builder, outputs: list, layout: int):
    """Step outputs (B, H) in time order -> (T, 1, B, H) (layout 0) or (B, T, 1, H) (layout 1)."""
    steps = len(outputs)
    batch, hidden = _dims(outputs[0])
    if layout == 0:
        joined = b.concat(outputs, 0)
        return b.reshape(joined, [steps, 1, -1, hidden], (steps, 1, batch, hidden))
    joined = b.concat(outputs, 1)
    return b.reshape(joined, [-1, steps, 1, hidden], (batch, steps, 1, hidden))


# ---- reads of one time step of Y -----------------------------------------------------------
# A classifier reads only the last step of Y (``out[:, -1, :]``: Squeeze, Transpose, Slice,
# Squeeze in graphc's layers). Through the stacked Y its gradient is a zero-padded (B, T, H)
# tensor, transposed and split back into T step gradients that the backward adds to each
# step's recurrent gradient, T - 1 of them zeros. Such a Slice reads the step output itself.
_LAYOUT_AXES = {0: "TDBH", 1: "BTDH"}  # Y's axes: time, direction, batch, hidden


def _const_input(node: ir.Node, index: int, default: list[int] | None = None) -> list[int] | None:
    """Input ``index`` as ints; ``default`` when the input is absent, None when it is not a constant."""
    if len(node.inputs) <= index or node.inputs[index] is None:
        return default
    return _const_ints(node.inputs[index])


def _single_step(node: ir.Node, axes: str, steps: int) -> int | None:
    """The time step a Slice of ``axes``-ordered Y keeps when it keeps exactly one and cuts nothing else."""
    starts, ends = _const_input(node, 1), _const_input(node, 2)
    if starts is None or ends is None or len(starts) != 1:
        return None
    sliced, strides = _const_input(node, 3, [0]), _const_input(node, 4, [1])
    if sliced is None or strides != [1] or sliced[0] % len(axes) != axes.index("T"):
        return None
    kept = range(steps)[slice(starts[0], ends[0])]  # ONNX's clamping of starts/ends is Python's
    return kept[0] if len(kept) == 1 else None


def _one_step_reads(value: ir.Value, axes: str, steps: int):
    """Yield (Slice node, step, axes of its output) for the one-step Slices reached from Y through
    Squeeze (not of the time axis) and Transpose."""
    for node, _ in value.uses():
        if node.domain not in ("", "ai.onnx") or node.inputs[0] is not value:
            continue
        if node.op_type == "Squeeze":
            dropped = _const_input(node, 1)
            if dropped is None or any(a % len(axes) == axes.index("T") for a in dropped):
                continue
            kept = "".join(a for i, a in enumerate(axes) if i not in {d % len(axes) for d in dropped})
            yield from _one_step_reads(node.outputs[0], kept, steps)
        elif node.op_type == "Transpose" and node.attributes.get("perm") is not None:
            yield from _one_step_reads(node.outputs[0], "".join(axes[p] for p in node.attributes["perm"].value),
                                       steps)
        elif node.op_type == "Slice":
            step = _single_step(node, axes, steps)
            if step is not None and axes.replace("T", "") == "BH":  # direction axis squeezed, batch before hidden
                yield node, step, axes


def _read_steps_directly(y: ir.Value, outputs: list[ir.Value], layout: int, graph: ir.Graph | None) -> None:
    """Point every one-step Slice of ``y`` at the step output itself (one Unsqueeze)."""
    for node, step, axes in list(_one_step_reads(y, _LAYOUT_AXES[layout], len(outputs))):
        if node.graph is not graph:  # a subgraph's Slice of an outer Y: left as it is
            continue
        emitter = Emitter(f"{node.name or 'Slice'}/step")
        old = node.outputs[0]
        value = emitter.op("Unsqueeze", [outputs[step], emitter.ints([axes.index("T")])])
        value.type, value.shape = old.type, old.shape
        is_output = graph is not None and old in graph.outputs
        if graph is not None:
            graph.insert_before(node, emitter.nodes)
        ir.convenience.replace_all_uses_with(old, value, replace_graph_outputs=True)
        if graph is not None:
            graph.remove(node, safe=True)  # its shape-only producers are left to dead-node removal
        if is_output:  # graph outputs keep their names
            old.name, value.name = None, old.name


def _is_wanted(value: ir.Value | None, graph_outputs) -> bool:
    return value is not None and (bool(value.uses()) or value in graph_outputs)


def lower_node(node: ir.Node) -> dict[ir.Value, ir.Value]:
    """Replace one ONNX LSTM/GRU/RNN node by its lowering; returns {old output: new value}.

    In a graph, the new nodes go before ``node``, which is removed; a free-standing
    node (graphc's builder) is bypassed: its consumers read the new values, while
    values the caller holds on to still come from the (fast) node.
    """
    _check_inputs(node)
    attrs = {name: a.value for name, a in node.attributes.items()}
    spec = lowering_spec(node.op_type, attrs, node.inputs[0], node.inputs[2],
                         f"{node.op_type} node {node.name!r}")
    graph = node.graph
    graph_outputs = list(graph.outputs) if graph is not None else []
    wanted = [_is_wanted(v, graph_outputs) for v in node.outputs]
    emitter = Emitter(f"{node.name or node.op_type}/lowered")
    steps: list = []
    new = build_lowering(emitter, node.op_type, list(node.inputs), spec, wanted, step_outputs=steps)
    if graph is not None:
        graph.insert_before(node, emitter.nodes)
    mapping = {}
    for old, value in zip(node.outputs, new):
        if value is None:
            continue
        ir.convenience.replace_all_uses_with(old, value, replace_graph_outputs=True)
        if graph is not None:
            old.name, value.name = None, old.name
        mapping[old] = value
    if graph is not None:
        graph.remove(node, safe=True)
    if new[0] is not None and len(steps) == 1 and steps[0] is not None:
        _read_steps_directly(new[0], steps[0], spec.layout, graph)
    # A free-standing node stays as it is: values the user holds (``h_n`` of a layer) still read it.
    return mapping


def lower_recurrent_nodes(nodes: Iterable[ir.Node]) -> dict[ir.Value, ir.Value]:
    """Lower every ONNX recurrent node among ``nodes``; returns {old output: new value} for all of them."""
    mapping: dict[ir.Value, ir.Value] = {}
    for node in [n for n in nodes if is_recurrent(n)]:
        mapping.update(lower_node(node))
    return mapping


class LowerRecurrentPass(ir.passes.InPlacePass):
    """Replace every ``LSTM``, ``GRU`` and ``RNN`` node of the main graph by primitive ops.

    Rewrites: each such node becomes an input-projection ``Gemm``, then per step
    ``Gemm`` + ``Split`` + element-wise ops (static sequence length) or one
    ``Scan`` per direction (symbolic length), then ``Concat``/``Reshape`` into
    ONNX's ``Y``, ``Y_h``, ``Y_c`` layouts. Outputs nobody reads are not
    computed. Invariant: every other node and every graph input, output and
    initializer is unchanged (graph outputs keep their names); the graph stays
    topologically sorted; values are typed and shaped.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        mapping = lower_recurrent_nodes(list(model.graph))
        return ir.passes.PassResult(model, modified=bool(mapping))
