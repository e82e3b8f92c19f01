"""The training step split in two standard ONNX graphs around a gradient reduction (data parallelism).

``build_training_step`` makes forward + backward + update one graph. Data-parallel training must average
the gradients across processes between backward and update, so this builds the same step as two graphs:

- **gradient graph**: inputs are the batch, every parameter (trained and frozen), the non-gradient state
  (BatchNorm running statistics), ``rng_key`` if any, and ``grad_scale`` (a scalar of the parameters'
  dtype, ``1 / world_size``). Outputs: ``reduce.buffer`` = ``grad_scale * concat(flat gradients, loss,
  scalar float metrics)``, the other metrics (kept per process), then ``<state>.updated`` for the
  BatchNorm statistics. Summing ``reduce.buffer`` over the processes (one Allreduce) gives the mean
  gradient and the global mean loss and metrics at once; scaling before the sum cannot overflow where the
  mean does not.
- **update graph**: inputs are the trained parameters, ``reduce.buffer.sum`` (the summed buffer), the
  optimizer slots, ``step`` and ``lr``. Outputs: optional ``grad_norm`` (of the averaged gradient: clipping
  by the global norm), ``grad_check`` (0 when the whole summed buffer is finite, else NaN: a NaN or Inf on
  any process reaches every process through the sum), then ``<name>.updated`` for every parameter, slot
  and ``step``.

The optimizer update reuses ``training_step``'s per-parameter / small-flat layout, so the state inputs
have the same names as the one-graph step's and checkpoints move between the two. Invariant: both graphs
are ``ai.onnx`` only; with ``grad_scale = 1`` and no reduction the pair computes exactly what
``build_training_step`` computes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from passes.autodiff.core import vjp
from passes.emitter import Emitter
from passes.names import (
    BATCH_INPUTS_KEY,
    GRAD_NORM,
    GRAD_SCALE,
    LOSS,
    LR,
    REDUCE_BUFFER,
    REDUCED,
    STATE_PAIRS_KEY,
    STEP,
    UPDATED,
)
from passes.optimizers import OptimizerConfig, StepScalars
from passes.pipelines import cleanup_pipeline
from passes.training_step import (
    SMALL_PARAMETER,
    _apply_flat,
    _apply_per_parameter,
    _carry,
    _finiteness_check,
    _global_norm_clip,
    _initializer_to_input,
    _scalar_input,
    forward_outputs,
)


@dataclass
class SplitStep:
    grad_model: ir.Model
    update_model: ir.Model
    grad_pairs: list[tuple[str, str]]  # carried state of the gradient graph (BatchNorm statistics)
    update_pairs: list[tuple[str, str]]  # parameters, optimizer slots, step
    initial_values: dict[str, np.ndarray]  # every state input of either graph, and ``lr``
    batch_inputs: list[str]
    extra_outputs: list[str]  # every metric name, in the user's order
    reduced_names: list[str]  # loss and the metrics averaged with the gradient, in buffer order
    gradient_size: int  # elements of the buffer that are gradient; the reduced scalars follow
    flat_layouts: dict[str, list[tuple[str, int]]]


def _cleanup(model: ir.Model) -> None:
    cleanup_pipeline()(model)  # in place: the same cleanup as the one-graph step's


def _reducible(value: ir.Value) -> bool:
    """A metric averaged across processes: a float scalar (others stay per process)."""
    return value.shape is not None and len(value.shape) == 0 and value.dtype is not None and \
        value.dtype.is_floating_point()


def build_split_step(forward: ir.Model, trainable: list[str], optimizer: OptimizerConfig, *,
                     loss: str = LOSS, max_grad_norm: float | None = None,
                     state_updates: dict[str, str] | None = None, frozen: list[str] = (),
                     fuse_update: bool = False) -> SplitStep:
    """Split ``forward`` (consumed) into the gradient and update graphs described in the module docstring.

    Arguments as ``build_training_step``'s. Parameters the loss does not reach are inputs of the gradient
    graph that never change (as frozen ones), like the one-graph step's.
    """
    state_updates = dict(state_updates or {})
    graph = forward.graph
    loss_value, outputs, batch_inputs, extra_outputs = forward_outputs(graph, loss, state_updates)

    initial: dict[str, np.ndarray] = {}
    params = [_initializer_to_input(graph, name, initial, "trainable parameter") for name in trainable]
    frozen_params = [_initializer_to_input(graph, name, initial, "frozen parameter") for name in frozen]
    e = Emitter("grad")
    all_grads, _ = vjp([loss_value], params, emitter=e, unreachable="none")
    params, grads = [p for p, g in zip(params, all_grads) if g is not None], [g for g in all_grads if g is not None]
    if not grads:
        raise ValueError("no trainable parameter reaches the loss: there is no gradient to average")
    if len({p.dtype for p in params}) != 1:
        raise ValueError(f"data-parallel training needs every trained parameter of one dtype (one flat "
                         f"gradient buffer), got {sorted({str(p.dtype) for p in params})}")
    dtype = params[0].dtype
    scale = _scalar_input(GRAD_SCALE, dtype)
    graph.inputs.append(scale)

    # ---- the gradient graph: one flat buffer to sum across processes
    minus_one = e.ints([-1])
    reduced_names = [loss] + [n for n in extra_outputs if _reducible(outputs[n])]
    scalars = []
    for name in reduced_names:
        value = outputs[name]
        value = value if value.dtype == dtype else e.op("Cast", [value], {"to": dtype})
        scalars.append(e.op("Reshape", [value, minus_one]))
    sizes = [int(np.prod(initial[p.name].shape)) for p in params]
    flat = e.op("Concat", [e.op("Reshape", [g, minus_one]) for g in grads] + scalars, {"axis": 0})
    buffer = e.op("Mul", [flat, scale])
    buffer.name = REDUCE_BUFFER
    buffer.type, buffer.shape = ir.TensorType(dtype), ir.Shape([sum(sizes) + len(scalars)])
    grad_pairs: list[tuple[str, str]] = []
    grad_updated: list[ir.Value] = []
    for name, output_name in state_updates.items():
        _carry(e, _initializer_to_input(graph, name, initial, "state"), outputs[output_name], grad_pairs,
               grad_updated)
    local = [outputs[n] for n in extra_outputs if n not in reduced_names]
    graph.extend(e.nodes)
    graph.outputs.clear()
    graph.outputs.extend([buffer] + local + grad_updated)
    forward.metadata_props[STATE_PAIRS_KEY] = json.dumps(grad_pairs)
    forward.metadata_props[BATCH_INPUTS_KEY] = json.dumps(batch_inputs)
    _cleanup(forward)

    # ---- the update graph: the summed buffer -> clipped, checked optimizer update
    u = Emitter("update")
    u_params = [ir.Value(name=p.name, shape=p.shape, type=p.type) for p in params]
    reduced = ir.Value(name=REDUCED, shape=ir.Shape([buffer.shape[0]]), type=ir.TensorType(dtype))
    step = _scalar_input(STEP, ir.DataType.INT64)
    lr = _scalar_input(LR, ir.DataType.DOUBLE)
    update_graph = ir.Graph([*u_params, reduced, step, lr], [], nodes=[],
                            opset_imports=dict(forward.opset_imports), name="graphc_update")
    initial[STEP] = np.asarray(0, dtype=np.int64)
    initial[LR] = np.asarray(optimizer.hparams["lr"], dtype=np.float64)
    flat_grad = u.op("Slice", [reduced, u.ints([0]), u.ints([sum(sizes)])])
    pieces = u.op("Split", [flat_grad, u.ints(sizes)], {"axis": 0}, num_outputs=len(params))
    pieces = [pieces] if len(params) == 1 else list(pieces)
    new_grads = [u.op("Reshape", [piece, u.ints(initial[p.name].shape)]) for p, piece in zip(params, pieces)]
    new_outputs: list[ir.Value] = []
    if max_grad_norm is not None:
        new_grads, norm = _global_norm_clip(u, new_grads, max_grad_norm, dtype)
        norm.name = GRAD_NORM
        norm.type, norm.shape = ir.TensorType(dtype), ir.Shape([])
        new_outputs.append(norm)
    new_outputs.append(_finiteness_check(u, [reduced], dtype))
    next_step = u.op("Add", [step, u.const(np.asarray(1, dtype=np.int64))])
    next_step.name = STEP + UPDATED
    next_step.type, next_step.shape = step.type, step.shape
    step_scalars = StepScalars(u, next_step, lr, dtype)
    layouts: dict[str, list[tuple[str, int]]] = {}
    # The layout build_training_step picks (same state names): with fuse_update all parameters flat,
    # otherwise big parameters one by one and the small ones flat.
    if fuse_update and len(params) > 1:
        pairs, updated = _apply_flat(u, update_graph, step_scalars, optimizer, u_params, new_grads, initial,
                                     layouts)
    else:
        small = [i for i, size in enumerate(sizes) if size <= SMALL_PARAMETER]
        small = small if len(small) >= 2 else []
        big = [i for i in range(len(params)) if i not in small]
        pairs, updated = _apply_per_parameter(u, update_graph, step_scalars, optimizer,
                                              [u_params[i] for i in big], [new_grads[i] for i in big], initial)
        if small:
            more_pairs, more_updated = _apply_flat(u, update_graph, step_scalars, optimizer,
                                                   [u_params[i] for i in small], [new_grads[i] for i in small],
                                                   initial, layouts, prefix="optimizer.small")
            pairs += more_pairs
            updated += more_updated
    updated.append(next_step)
    pairs.append((STEP, next_step.name))
    update_graph.extend(u.nodes)
    update_graph.outputs.extend(new_outputs + updated)
    update_model = ir.Model(update_graph, ir_version=forward.ir_version, producer_name="graphc")
    update_model.metadata_props[STATE_PAIRS_KEY] = json.dumps(pairs)
    update_model.metadata_props[BATCH_INPUTS_KEY] = json.dumps([REDUCED])
    _cleanup(update_model)
    return SplitStep(forward, update_model, grad_pairs, pairs, initial, batch_inputs, extra_outputs,
                     reduced_names, sum(sizes), layouts)
