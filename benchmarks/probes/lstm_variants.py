"""Probe: variants of the LSTM training step's lowering, each in its own process, taking turns.

    python benchmarks/probes/lstm_variants.py [--rounds 4] [--steps 30] [--threads 1]
                                              [--variants per_gate,now,time_major+stacked_reuse]

Variants (patched into the worker before the Trainer is built; ``+`` combines them):
- ``now``: the tree as it is (one Sigmoid per step over the contiguous i, o, f gate block).
- ``per_gate``: the LSTM cell as before: one activation per gate (three Sigmoids per step).
- ``time_major``: the batch-first input projected time-major (graphc's Transpose kept), so each step's slice
  of the projection is a contiguous block of rows instead of a strided column block (tried, not kept).
- ``stacked_reuse``: ``reuse_stacked_gradients.py`` (this folder) after the gradient-sum fusion: the
  recurrent weight's fused product reads the stacked gate gradients instead of a fresh copy (tried, not
  kept; with ``time_major`` for the first layer too).
- ``stacked_y``: a one-step Slice of Y (the classifier's ``out[:, -1, :]``) reads the stacked Y, as before
  the lowering pointed it at the step output (its backward pads, transposes and splits T step gradients,
  T - 1 of them zeros).
- ``joint_input``: a layer whose input is narrower than its hidden state (the first layer: 28 features, 128
  hidden) projects no input ahead: each step multiplies ``[x_t | h_{t-1}]`` by ``[W | R]`` in one Gemm (the
  first step ``x_0`` by W), so the (B, T*4H) projection, its strided per-step Split and its gradient's Concat
  go, for 28/156 more per-step GEMM work each way (tried, not kept).
- ``split_gemms``: the LSTM gates as two products per step, the sigmoid block (i, o, f) and the tanh gate
  (two input projections, R's rows split once), so no per-step Split of a (B, 4H) Gemm output in the
  forward and no Concat of the gate gradients in the backward (their dh is two Gemms; tried, not kept).
- ``weight_blocks``: graphc's gate re-ordering ``Gather``s of W and R (PyTorch's gate order to ONNX's) read as
  ``Concat`` of the source's gate blocks, so their gradients are a Split instead of a ``ScatterND`` into zeros
  with index arithmetic (the biases too, taken from graphc's stacking). Tried, not kept: the blocks' copies
  cost what the scatter did (``lstm_profile_parts.py``).
Prints per variant the median wall ms/step over rounds [min-max], its ratio to the first variant in the
same round, and the process CPU ms per step (``time.process_time``), with the step's node count.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import cpu_ms_per_call, report, round_ratios, spread, take_turns, time_ms, worker_spec  # noqa: E402


def _per_gate_cell(b, xp, state, w, acts):
    """The LSTM cell as it was before issue 11's LSTM work: Split into four gates, one activation each."""
    from passes.lower_recurrent import _activation
    f_act, g_act, h_act = acts
    if w.p is not None:
        return _lowering_cell(b, xp, state, w, acts)
    gates = xp if state is None else b.gemm(state[0], w.r, xp)
    i, o, f, c = b.split(gates, 1, 4)
    i, f, c = _activation(b, f_act, i), _activation(b, f_act, f), _activation(b, g_act, c)
    cell = b.mul(i, c) if state is None else b.add(b.mul(f, state[1]), b.mul(i, c))
    h = b.mul(_activation(b, f_act, o), _activation(b, h_act, cell))
    if w.projection is not None:
        h = b.gemm(h, w.projection)
    return h, cell


_lowering_cell = None


def _time_major_input(x, layout):
    """Keep a time-major X as it is (graphc's layers feed Transpose(batch-first X)) instead of seeing through
    the Transpose: the projection's rows are then t*B + b, each step's slice a contiguous block of rows."""
    return x, 0 if layout == 0 else 1


def _with_stacked_reuse():
    """cleanup_pipeline with ReuseStackedGradientsPass (this folder) after the gradient-sum fusion."""
    import passes.pipelines as pipelines
    from reuse_stacked_gradients import ReuseStackedGradientsPass
    plain = pipelines.cleanup_pipeline

    def cleanup():
        pipeline = plain()
        named = list(zip(pipeline.names, pipeline.passes))
        at = pipeline.names.index("fuse-gradient-sums") + 1
        return pipelines.Pipeline(*named[:at], ("reuse-stacked-gradients", ReuseStackedGradientsPass()),
                                  *named[at:])
    pipelines.cleanup_pipeline = cleanup


def _joint_input_unrolled(b, spec, x, time_axis, w, state, acts, reverse):
    """``lower_recurrent._unrolled`` where the input is narrower than the hidden state: no projection ahead,
    one Gemm of [x_t | h_{t-1}] by [W | R] per step (LSTM without peepholes or projection only)."""
    from passes.lower_recurrent import _dims, _input_bias
    dims = _dims(x)
    steps, width, hidden = dims[time_axis], dims[2], _dims(w.r)[1]
    if spec.op != "LSTM" or w.p is not None or w.projection is not None or width >= hidden:
        return _plain_unrolled(b, spec, x, time_axis, w, state, acts, reverse)
    bias = _input_bias(b, spec, w)
    per_step = [b.squeeze(piece, time_axis, (dims[1 - time_axis], width))
                for piece in b.split(x, time_axis, steps)]
    joint = b.concat([w.w, w.r], 1)
    cell = _lowering_cell_now
    outputs = [None] * steps
    for t in (reversed(range(steps)) if reverse else range(steps)):
        if state is None:
            xp = b.gemm(per_step[t], w.w, bias)
            state = cell(b, xp, None, w, acts)
        else:
            both = b.concat([per_step[t], state[0]], 1)
            joined = type(w)(w.w, joint, w.wb, w.rb)
            state = cell(b, bias, (both, state[1]), joined, acts)
        outputs[t] = state[0]
    return outputs, state


_plain_unrolled = _lowering_cell_now = None


def _gate_blocks_reordered(b, value, gates):
    """A weight whose gate blocks a ``Gather`` of rows re-orders, as ``Concat`` of the source's blocks."""
    from passes.lower_recurrent import _const_ints, _dims
    node = value.producer()
    if node is None or node.op_type != "Gather":
        return value
    source, rows = node.inputs[0], _const_ints(node.inputs[1])
    dims = _dims(source)
    axis = node.attributes["axis"].value if "axis" in node.attributes else 0
    if rows is None or axis != 0 or not dims or dims[0] != len(rows) or dims[0] % gates:
        return value
    size = dims[0] // gates
    order = [rows[k * size] // size for k in range(gates)]
    expected = np.concatenate([np.arange(g * size, (g + 1) * size) for g in order])
    if sorted(order) != list(range(gates)) or not np.array_equal(expected, rows):
        return value
    blocks = b.split(source, 0, gates)
    return b.concat([blocks[g] for g in order], 0)


def _bias_halves(value):
    """graphc's B of one direction, ``Concat(Unsqueeze(Wb), Unsqueeze(Rb); axis=1)``: (Wb, Rb), else None."""
    from passes.lower_recurrent import _dims, _unsqueezed_source
    node = value.producer()
    if node is None or node.op_type != "Concat" or len(node.inputs) != 2 or node.attributes["axis"].value != 1:
        return None
    halves = [_unsqueezed_source(v, 0) for v in node.inputs]
    return halves if all(h is not None and len(_dims(h)) == 1 for h in halves) else None


def _split_gemms_unrolled(b, spec, x, time_axis, w, state, acts, reverse):
    """``lower_recurrent._unrolled`` with the LSTM's sigmoid block and tanh gate projected separately."""
    from passes.lower_recurrent import _activation, _dims, _input_bias, _project
    if spec.op != "LSTM" or w.p is not None:
        return _plain_unrolled(b, spec, x, time_axis, w, state, acts, reverse)
    dims = _dims(x)
    steps, batch, hidden = dims[time_axis], dims[1 - time_axis], spec.hidden
    sizes = [3 * hidden, hidden]
    w_parts, r_parts = b.split_sizes(w.w, 0, sizes), b.split_sizes(w.r, 0, sizes)
    bias = _input_bias(b, spec, w)
    bias_parts = b.split_sizes(bias, 0, sizes) if bias is not None else [None, None]
    per_step = []
    for w_part, b_part, size in zip(w_parts, bias_parts, sizes):
        proj = _project(b, x, type(w)(w_part, None, None, None), b_part)
        if time_axis == 1:
            proj = b.reshape(proj, [-1, steps * size], (batch, steps * size))
        per_step.append(b.split(proj, time_axis, steps))
    f_act, g_act, h_act = acts
    outputs = [None] * steps
    for t in (reversed(range(steps)) if reverse else range(steps)):
        xs, xg = per_step[0][t], per_step[1][t]
        if state is None:
            io_pre, _ = b.split_sizes(xs, 1, [2 * hidden, hidden])
            i, o = b.split(_activation(b, f_act, io_pre), 1, 2)
            cell = b.mul(i, _activation(b, g_act, xg))
        else:
            block = _activation(b, f_act, b.gemm(state[0], r_parts[0], xs))
            i, o, f = b.split(block, 1, 3)
            g = _activation(b, g_act, b.gemm(state[0], r_parts[1], xg))
            cell = b.add(b.mul(f, state[1]), b.mul(i, g))
        h = b.mul(o, _activation(b, h_act, cell))
        if w.projection is not None:
            h = b.gemm(h, w.projection)
        state = (h, cell)
        outputs[t] = h
    return outputs, state


def patch(variant: str) -> None:
    global _lowering_cell, _plain_unrolled
    import passes.lower_recurrent as lowering
    if variant == "per_gate":
        _lowering_cell = lowering._lstm_cell
        lowering._lstm_cell = _per_gate_cell
    elif variant == "time_major":
        lowering._x_time_major = _time_major_input
    elif variant == "stacked_reuse":
        _with_stacked_reuse()
    elif variant == "joint_input":
        global _lowering_cell_now
        _plain_unrolled, _lowering_cell_now = lowering._unrolled, lowering._lstm_cell
        lowering._unrolled = _joint_input_unrolled
    elif variant == "split_gemms":
        _plain_unrolled = lowering._unrolled
        lowering._unrolled = _split_gemms_unrolled
    elif variant == "weight_blocks":
        plain_pieces, plain_build = lowering._direction_pieces, lowering.build_lowering

        def pieces(b, value, axis, count):
            return [_gate_blocks_reordered(b, p, 4) if p is not None else None
                    for p in plain_pieces(b, value, axis, count)]

        def build(emitter, node_op, inputs, spec, *args, **kwargs):
            inputs = list(inputs)
            if node_op == "LSTM" and len(inputs) > 3 and inputs[3] is not None and len(spec.reverse) == 1:
                halves = _bias_halves(inputs[3])
                if halves is not None:  # B as Concat of the re-ordered halves: the scatter-free gradient
                    b = lowering._Builder(lowering.Emitter("lstm/bias"), inputs[3].dtype)
                    joined = b.concat([_gate_blocks_reordered(b, h, 4) for h in halves], 0)
                    inputs[3] = b.unsqueeze(joined, 0)
                    emitter.nodes.extend(b.e.nodes)
            return plain_build(emitter, node_op, inputs, spec, *args, **kwargs)
        lowering._direction_pieces, lowering.build_lowering = pieces, build
    elif variant == "stacked_y":
        lowering._read_steps_directly = lambda *args: None
    elif variant != "now":
        raise SystemExit(f"unknown variant {variant!r}")


def worker(spec: dict) -> None:
    for part in spec["variant"].split("+"):
        patch(part)
    from profile_lstm import BATCH, CLASSES, FEATURES, build
    trainer = build(spec["length"], profile=False, threads=spec["threads"])
    rng = np.random.default_rng(0)
    data = [(rng.standard_normal((BATCH, spec["length"], FEATURES)).astype(np.float32),
             rng.integers(0, CLASSES, BATCH)) for _ in range(10)]
    count = [0]

    def one():
        xb, yb = data[count[0] % len(data)]
        count[0] += 1
        trainer.step({"x": xb, "y": yb})
    wall = float(np.median(time_ms(one, spec["steps"])))
    report({"median_ms": wall, "cpu_ms": cpu_ms_per_call(one, spec["steps"]),
            "nodes": len(trainer.step_model.graph.node)})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--length", type=int, default=28)
    parser.add_argument("--variants", default="per_gate,now")
    args = parser.parse_args()
    variants = args.variants.split(",")
    runs = take_turns(__file__, {v: {"variant": v, "steps": args.steps, "threads": args.threads,
                                     "length": args.length} for v in variants}, args.rounds)
    print(f"LSTM 2x128, {args.length} steps, batch 64, Adam, {args.threads} thread(s), {args.rounds} rounds "
          f"[min-max]: wall ms/step, ratio to {variants[0]} in the same round; CPU ms/step, ratio; nodes")
    for v in variants:
        print(f"  {v:34s} {spread(r['median_ms'] for r in runs[v]):>22s}  {spread(round_ratios(runs, v, variants[0])):>18s}"
              f"  {spread(r['cpu_ms'] for r in runs[v]):>22s}  {spread(round_ratios(runs, v, variants[0], 'cpu_ms')):>18s}"
              f"  {runs[v][0]['nodes']}")


if __name__ == "__main__":
    spec = worker_spec(sys.argv[1:])
    worker(spec) if spec is not None else main()
