"""The VJP rule of ``Scan``, which the recurrent layers emit for symbolic sequence lengths."""

from __future__ import annotations

import itertools

import onnx_ir as ir

from passes.autodiff.helpers import zeros_like
from passes.autodiff.registry import VJPContext, is_float, register_vjp


_body_counter = itertools.count(1)


def name_body_values(graph: ir.Graph, prefix: str) -> None:
    """Give every value of a Scan body a name unique in the model.

    ONNX forbids a subgraph value to reuse a name of the enclosing graphs, and
    a cloned body repeats its original's names; the counter keeps bodies apart.
    """
    stem = f"{prefix}{next(_body_counter)}/"
    values = list(graph.inputs) + [v for node in graph for v in node.outputs]
    for index, value in enumerate(values):
        value.name = f"{stem}{index}"


def _source(value: ir.Value) -> ir.Value:
    """Follow Identity nodes back to the value they copy."""
    while value.producer() is not None and value.producer().op_type == "Identity":
        value = value.producer().inputs[0]
    return value


def _typed_like(name: str, like: ir.Value) -> ir.Value:
    return ir.Value(name=name, type=like.type, shape=like.shape)


@register_vjp("Scan")
def scan_vjp(ctx: VJPContext):
    """Scan(s_1..s_N, xs_1..xs_M; body, num_scan_inputs=M, axes, directions) -> (s_final, ys_1..ys_K).

    The body maps (s, x_t) -> (s', y_t). Backward is a second Scan that
    iterates the other way: its state carries ds (the cotangent of s), its
    scan inputs are the forward states s_t before each step, the x_t and the
    dy_t; its body is the forward body replayed on (s_t, x_t) followed by the
    body's own VJP (``core.vjp``), giving ds_t (the next state) and dx_t
    (scan outputs). The forward must supply s_t: every state is either
    loop-invariant (the body passes it through unchanged: weights, which the
    backward carries as state and whose cotangent accumulates there) or has a
    scan output that is the body's Identity of that state input (the state
    before the step). Float states only.
    """
    from passes.autodiff.core import vjp  # core imports the rules package

    node = ctx.node
    body: ir.Graph = ctx.attr("body")
    n_scan_in = ctx.attr("num_scan_inputs")
    n_states = len(node.inputs) - n_scan_in
    n_scan_out = len(node.outputs) - n_states
    in_axes = list(ctx.attr("scan_input_axes", None) or [0] * n_scan_in)
    in_dirs = list(ctx.attr("scan_input_directions", None) or [0] * n_scan_in)
    out_axes = list(ctx.attr("scan_output_axes", None) or [0] * n_scan_out)
    out_dirs = list(ctx.attr("scan_output_directions", None) or [0] * n_scan_out)
    body_in, body_out = list(body.inputs), list(body.outputs)
    for i in range(n_states):
        if not is_float(node.inputs[i]):
            raise NotImplementedError(f"Scan {node.name!r}: the VJP supports float states only; state {i} is "
                                      f"{node.inputs[i].dtype}")
    invariant = [_source(body_out[i]) is body_in[i] for i in range(n_states)]
    before: dict[int, int] = {}
    for k in range(n_scan_out):
        src = _source(body_out[n_states + k])
        if src in body_in[:n_states]:
            before.setdefault(body_in.index(src), k)
    missing = [i for i in range(n_states) if not invariant[i] and i not in before]
    if missing:
        raise NotImplementedError(
            f"Scan {node.name!r}: the VJP needs the per-step value of each carried state as a scan output "
            f"(an Identity of the body's state input); states {missing} have none")
    carried = [i for i in range(n_states) if not invariant[i]]
    invariants = [i for i in range(n_states) if invariant[i]]
    with_grad = [k for k in range(n_scan_out) if ctx.out_grads[n_states + k] is not None]
    wanted_x = [j for j in range(n_scan_in) if ctx.needs(n_states + j)]

    # The backward body: the forward body (cloned) with new inputs, then its VJP.
    try:
        bwd = body.clone()
    except ValueError as exc:  # the body reads values of the enclosing graph
        raise NotImplementedError(f"Scan {node.name!r}: the VJP needs a self-contained body (pass outer values "
                                  f"as loop-invariant states): {exc}") from exc
    f_in, f_out = list(bwd.inputs), list(bwd.outputs)
    d_state = [_typed_like(f"d_{f_in[i].name}", f_in[i]) for i in range(n_states)]
    d_y = [_typed_like(f"d_{f_out[n_states + k].name}", f_out[n_states + k]) for k in with_grad]
    grads, emitter = vjp([f_out[i] for i in range(n_states)] + [f_out[n_states + k] for k in with_grad],
                         [f_in[i] for i in range(n_states)] + [f_in[n_states + j] for j in wanted_x],
                         seeds=d_state + d_y)
    bwd.extend(emitter.nodes)
    bwd.inputs.clear()
    bwd.inputs.extend([*d_state, *[f_in[i] for i in invariants], *[f_in[i] for i in carried],
                       *[f_in[n_states + j] for j in range(n_scan_in)], *d_y])
    new_outputs: list[ir.Value] = []
    for value in [*grads[:n_states], *[f_in[i] for i in invariants], *grads[n_states:]]:
        if value.is_graph_input() or any(value is v for v in new_outputs):
            copy = ir.Node("", "Identity", [value])
            bwd.append(copy)
            copy.outputs[0].type, copy.outputs[0].shape = value.type, value.shape
            value = copy.outputs[0]
        new_outputs.append(value)
    bwd.outputs.clear()
    bwd.outputs.extend(new_outputs)
    bwd.name = f"{body.name or 'scan'}_vjp"
    name_body_values(bwd, bwd.name)

    seeds = [ctx.out_grads[i] if ctx.out_grads[i] is not None else zeros_like(ctx, node.inputs[i])
             for i in range(n_states)]
    scan_inputs = ([node.outputs[n_states + before[i]] for i in carried] + list(node.inputs[n_states:])
                   + [ctx.out_grads[n_states + k] for k in with_grad])
    axes = [out_axes[before[i]] for i in carried] + in_axes + [out_axes[k] for k in with_grad]
    dirs = [1 - out_dirs[before[i]] for i in carried] + [1 - d for d in in_dirs] + [1 - out_dirs[k] for k in with_grad]
    outs = ctx.op("Scan", [*seeds, *[node.inputs[i] for i in invariants], *scan_inputs],
                  {"body": bwd, "num_scan_inputs": len(scan_inputs), "scan_input_axes": axes,
                   "scan_input_directions": dirs, "scan_output_axes": [in_axes[j] for j in wanted_x],
                   "scan_output_directions": [1 - in_dirs[j] for j in wanted_x]},
                  num_outputs=n_states + len(invariants) + len(wanted_x))
    outs = outs if isinstance(outs, tuple) else (outs,)
    for i in range(n_states):
        outs[i].type, outs[i].shape = node.inputs[i].type, node.inputs[i].shape
    dxs = dict(zip(wanted_x, outs[n_states + len(invariants):]))
    for j, value in dxs.items():
        value.type, value.shape = node.inputs[n_states + j].type, node.inputs[n_states + j].shape
    return ([outs[i] if ctx.needs(i) else None for i in range(n_states)]
            + [dxs.get(j) for j in range(n_scan_in)])
