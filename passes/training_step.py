"""Build the whole training step (forward, backward, optimizer update) as one ONNX graph.

Input: a forward model whose output ``loss`` is a scalar and whose trainable
parameters are initializers. Output: a model whose

- inputs are the batch inputs, then every trainable parameter, every optimizer
  state slot (``<param>.<slot>``), ``step`` (int64 scalar, steps done so far)
  and ``lr`` (float scalar, so schedules need no rebuild);
- outputs are ``loss``, any extra forward outputs (metrics), optional
  ``grad_norm``, ``grad_check`` (0 when every gradient element is finite, else NaN), then
  ``<name>.updated`` for every parameter, slot and ``step``.

``state_pairs`` says which output feeds which input at the next step; the same
list is stored in the model's ``graphc.state_pairs`` metadata so a saved
training step describes itself. Works on any model, graphc-built or imported.

``TrainingStepPass`` does the autodiff and the update; ``build_training_step`` runs it inside
``passes.pipelines.training_step_pipeline`` (recurrent lowering before, cleanup after). The helpers
(``_apply_flat``, ``_carry``, ...) are shared with the data-parallel step (``passes/split_step.py``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from passes.autodiff.core import vjp
from passes.emitter import Emitter
from passes.names import BATCH_INPUTS_KEY, GRAD_CHECK, GRAD_NORM, LOSS, LR, STATE_PAIRS_KEY, STEP, UPDATED
from passes.optimizers import OptimizerConfig, StepScalars

SMALL_PARAMETER = 4096  # parameters up to this many elements share one flat update (fewer tiny ops)


@dataclass
class TrainingStep:
    model: ir.Model
    state_pairs: list[tuple[str, str]]  # (input name, output name that feeds it next step)
    initial_values: dict[str, np.ndarray]  # the starting value of every state input
    batch_inputs: list[str]
    extra_outputs: list[str]  # metrics after the loss
    # For each flat optimizer update (``optimizer.small``, ``optimizer``): the parameters laid out in its
    # ``<prefix>.<slot>`` inputs, with their sizes, so state can be split per parameter and regrouped.
    flat_layouts: dict[str, list[tuple[str, int]]]


def forward_outputs(graph: ir.Graph, loss: str, state_updates: dict[str, str]):
    """``(loss value, outputs by name, batch input names, metric output names)`` of a forward graph whose
    output ``loss`` must be a scalar; outputs that carry state updates are not metrics."""
    outputs = {v.name: v for v in graph.outputs}
    if loss not in outputs:
        raise ValueError(f"the forward model has no output {loss!r}; outputs: {sorted(outputs)}")
    loss_value = outputs[loss]
    if loss_value.shape is not None and len(loss_value.shape) != 0:
        raise ValueError(f"the loss must be a scalar, got shape {loss_value.shape}")
    batch_inputs = [v.name for v in graph.inputs]
    extra_outputs = [v.name for v in graph.outputs if v.name != loss and v.name not in state_updates.values()]
    return loss_value, outputs, batch_inputs, extra_outputs


def _scalar_input(name: str, dtype: ir.DataType) -> ir.Value:
    return ir.Value(name=name, shape=ir.Shape([]), type=ir.TensorType(dtype))


def _global_norm_clip(e: Emitter, grads: list[ir.Value], max_norm: float, dtype: ir.DataType):
    """torch.nn.utils.clip_grad_norm_: scale all grads by min(1, max_norm / (norm + 1e-6))."""
    squares = [e.op("ReduceSum", [e.op("Mul", [g, g])], {"keepdims": 0}) for g in grads]
    norm = e.op("Sqrt", [squares[0] if len(squares) == 1 else e.op("Sum", squares)])
    c = lambda v: e.const(np.asarray(v, dtype=dtype.numpy()))  # noqa: E731
    coef = e.op("Min", [e.op("Div", [c(max_norm), e.op("Add", [norm, c(1e-6)])]), c(1.0)])
    return [e.op("Mul", [g, coef]) for g in grads], norm


def _finiteness_check(e: Emitter, grads: list[ir.Value], dtype: ir.DataType) -> ir.Value:
    """``grad_check``: the sum over all gradients of ``g * 0``: 0 when every element is finite, else NaN.

    Summing the gradients themselves overflowed for large but finite ones (float32 sums above 3.4e38
    read as Inf), refusing good steps. ``g * 0`` is 0 for finite g and NaN for NaN or +-Inf (IEEE 754),
    so the sum is exactly 0 or NaN whatever the magnitudes; a Mul and a ReduceSum per gradient.
    The runtime refuses the step when it is not 0.
    """
    zero = e.const(np.asarray(0, dtype=dtype.numpy()))
    sums = [e.op("ReduceSum", [e.op("Mul", [g, zero])], {"keepdims": 0}) for g in grads]
    check = sums[0] if len(sums) == 1 else e.op("Sum", sums)
    check.name = GRAD_CHECK
    check.type, check.shape = ir.TensorType(dtype), ir.Shape([])
    return check


def _carry(e: Emitter, source: ir.Value, result: ir.Value, pairs: list, updated: list) -> None:
    """Make ``result`` the output ``<source>.updated`` that feeds ``source`` at the next step."""
    result = e.op("Identity", [result]) if result.name is not None or result in updated else result
    result.name = source.name + UPDATED
    result.type, result.shape = source.type, source.shape
    updated.append(result)
    pairs.append((source.name, result.name))


def _initializer_to_input(graph: ir.Graph, name: str, initial: dict, what: str) -> ir.Value:
    """Turn initializer ``name`` into a graph input, recording its value in ``initial``."""
    value = graph.initializers.get(name)
    if value is None:
        raise ValueError(f"{what} {name!r} is not an initializer of the model")
    initial[name] = np.array(value.const_value.numpy(), copy=True)
    graph.initializers.pop(name)
    value.const_value = None
    graph.inputs.append(value)
    return value


def _state_input(graph: ir.Graph, name: str, like: ir.Value, shape: ir.Shape) -> ir.Value:
    value = ir.Value(name=name, shape=shape, type=ir.TensorType(like.dtype))
    graph.inputs.append(value)
    return value


def _apply_per_parameter(e, graph, scalars, optimizer, params, grads, initial):
    """One update per parameter; state slots are inputs named ``<param>.<slot>``."""
    slots_of, update = optimizer.spec.slots, optimizer.spec.update
    pairs: list[tuple[str, str]] = []
    updated: list[ir.Value] = []
    for param, grad in zip(params, grads):
        state = {}
        for slot, init in slots_of(optimizer.hparams).items():
            state[slot] = _state_input(graph, f"{param.name}.{slot}", param, param.shape)
            initial[state[slot].name] = np.full(initial[param.name].shape, init, dtype=param.dtype.numpy())
        new_param, new_state = update(e, scalars, param, grad, state, optimizer.hparams)
        _carry(e, param, new_param, pairs, updated)
        for slot, value in new_state.items():
            _carry(e, state[slot], value, pairs, updated)
    return pairs, updated


def _apply_flat(e, graph, scalars, optimizer, params, grads, initial, layouts, prefix: str = "optimizer"):
    """One update over all parameters concatenated (a multi-tensor apply).

    Optimizer math is element-wise, so updating the concatenation equals
    updating each parameter; it replaces ~13 small element-wise ops per
    parameter by 13 ops in all, plus one Concat of parameters, one of
    gradients and one Split. State slots are flat inputs ``optimizer.<slot>``
    laid out in parameter order.
    """
    slots_of, update = optimizer.spec.slots, optimizer.spec.update
    sizes = [int(np.prod(initial[p.name].shape)) for p in params]
    layouts[prefix] = [(p.name, size) for p, size in zip(params, sizes)]
    total = sum(sizes)
    flat_shape = ir.Shape([total])
    minus_one = e.ints([-1])
    flat_p = e.op("Concat", [e.op("Reshape", [p, minus_one]) for p in params], {"axis": 0})
    flat_g = e.op("Concat", [e.op("Reshape", [g, minus_one]) for g in grads], {"axis": 0})
    state = {}
    for slot, init in slots_of(optimizer.hparams).items():
        state[slot] = _state_input(graph, f"{prefix}.{slot}", params[0], flat_shape)
        initial[state[slot].name] = np.full((total,), init, dtype=params[0].dtype.numpy())
    new_flat, new_state = update(e, scalars, flat_p, flat_g, state, optimizer.hparams)
    pairs: list[tuple[str, str]] = []
    updated: list[ir.Value] = []
    pieces = e.op("Split", [new_flat, e.ints(sizes)], {"axis": 0}, num_outputs=len(params))
    for param, piece in zip(params, pieces):
        _carry(e, param, e.op("Reshape", [piece, e.ints(initial[param.name].shape)]), pairs, updated)
    for slot, value in new_state.items():
        _carry(e, state[slot], value, pairs, updated)
    return pairs, updated


class TrainingStepPass(ir.passes.InPlacePass):
    """Turn a forward model into the training step: autodiff of ``loss``, then the optimizer update.

    Rewrites (the module docstring gives the resulting signature): the ``trainable`` and ``frozen``
    initializers, and those named by ``state_updates``, become graph inputs; inputs ``step`` and ``lr``
    are added; the backward nodes (``passes.autodiff``), optional global-norm clipping, the
    ``grad_check`` finiteness output and the optimizer update (``passes/optimizers.py``) are appended;
    the outputs become ``loss``, the metrics, ``grad_norm``?, ``grad_check``, then ``<name>.updated`` for
    every carried input; ``graphc.state_pairs`` and ``graphc.batch_inputs`` metadata are written.
    Invariant: the forward nodes are untouched; the new nodes come after them (topologically sorted);
    ``ai.onnx`` ops only. Dead nodes and repeated work are left to the cleanup passes that follow
    (``passes/pipelines.py``). After ``call``, ``result`` holds the :class:`TrainingStep`.

    ``fuse_update`` applies the optimizer to all parameters at once (see ``_apply_flat``); off by
    default, since it measured no faster on the 2-core CPU (see graphc.Trainer).
    ``state_updates`` maps initializers that are non-gradient state (BatchNorm running
    statistics) to the forward outputs holding their next values; they are carried like
    optimizer state. ``frozen`` names parameters (``requires_grad=False``) that become carried inputs
    the optimizer never changes and autodiff never differentiates, so they stay readable and writable
    between steps without a gradient being computed.
    """

    def __init__(self, trainable: list[str], optimizer: OptimizerConfig, *, loss: str = LOSS,
                 max_grad_norm: float | None = None, fuse_update: bool = False,
                 state_updates: dict[str, str] | None = None, frozen: list[str] = ()):
        super().__init__()
        self.trainable = list(trainable)
        self.optimizer = optimizer
        self.loss = loss
        self.max_grad_norm = max_grad_norm
        self.fuse_update = fuse_update
        self.state_updates = dict(state_updates or {})
        self.frozen = list(frozen)
        self.result: TrainingStep | None = None

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        state_updates, optimizer, loss = self.state_updates, self.optimizer, self.loss
        graph = model.graph
        loss_value, outputs, batch_inputs, extra_outputs = forward_outputs(graph, loss, state_updates)

        initial: dict[str, np.ndarray] = {}
        params = [_initializer_to_input(graph, name, initial, "trainable parameter") for name in self.trainable]
        frozen_params = [_initializer_to_input(graph, name, initial, "frozen parameter") for name in self.frozen]

        dtype = params[0].dtype if params else ir.DataType.FLOAT
        step = _scalar_input(STEP, ir.DataType.INT64)
        lr = _scalar_input(LR, ir.DataType.DOUBLE)  # float64, as torch.optim's Python scalars
        graph.inputs.extend([step, lr])
        hp = optimizer.hparams
        initial[STEP] = np.asarray(0, dtype=np.int64)
        initial[LR] = np.asarray(hp["lr"], dtype=np.float64)

        e = Emitter("train")
        all_grads, _ = vjp([loss_value], params, emitter=e, unreachable="none")
        # As torch.optim, parameters the loss does not reach (detached, unused) are not updated at all.
        frozen = frozen_params + [p for p, g in zip(params, all_grads) if g is None]
        params, grads = [p for p in params if p not in frozen], [g for g in all_grads if g is not None]
        new_outputs: list[ir.Value] = [loss_value] + [outputs[n] for n in extra_outputs]
        if self.max_grad_norm is not None and grads:
            grads, norm = _global_norm_clip(e, grads, self.max_grad_norm, dtype)
            norm.name = GRAD_NORM
            norm.type, norm.shape = ir.TensorType(dtype), ir.Shape([])
            new_outputs.append(norm)
        if grads:
            # The carried statistics too (BatchNorm's running mean and variance): a batch with one value per
            # channel makes the unbiased variance NaN while the loss stays finite (PyTorch raises there).
            statistics = [outputs[n] for n in state_updates.values() if outputs[n].dtype == dtype]
            new_outputs.append(_finiteness_check(e, grads + statistics, dtype))

        next_step = e.op("Add", [step, e.const(np.asarray(1, dtype=np.int64))])
        next_step.name = STEP + UPDATED
        next_step.type, next_step.shape = step.type, step.shape
        scalars = StepScalars(e, next_step, lr, dtype)
        layouts: dict[str, list[tuple[str, int]]] = {}
        flat = self.fuse_update and len(params) > 1 and len({p.dtype for p in params}) == 1
        if flat:
            pairs, updated = _apply_flat(e, graph, scalars, optimizer, params, grads, initial, layouts)
        else:
            small = [i for i, p in enumerate(params) if int(np.prod(initial[p.name].shape)) <= SMALL_PARAMETER]
            if len(small) < 2 or len({params[i].dtype for i in small}) != 1:
                small = []
            big = [i for i in range(len(params)) if i not in small]
            pairs, updated = _apply_per_parameter(e, graph, scalars, optimizer, [params[i] for i in big],
                                                  [grads[i] for i in big], initial)
            if small:
                more_pairs, more_updated = _apply_flat(e, graph, scalars, optimizer, [params[i] for i in small],
                                                       [grads[i] for i in small], initial, layouts,
                                                       prefix="optimizer.small")
                pairs += more_pairs
                updated += more_updated
        for param in frozen:
            _carry(e, param, param, pairs, updated)
        for name, output_name in state_updates.items():
            _carry(e, _initializer_to_input(graph, name, initial, "state"), outputs[output_name], pairs, updated)
        updated.append(next_step)
        pairs.append((STEP, next_step.name))

        graph.extend(e.nodes)
        graph.outputs.clear()
        graph.outputs.extend(new_outputs + updated)
        model.metadata_props[STATE_PAIRS_KEY] = json.dumps(pairs)
        model.metadata_props[BATCH_INPUTS_KEY] = json.dumps(batch_inputs)
        self.result = TrainingStep(model, pairs, initial, batch_inputs, extra_outputs, layouts)
        return ir.passes.PassResult(model, modified=True)


def build_training_step(forward: ir.Model, trainable: list[str], optimizer: OptimizerConfig, *,
                        loss: str = LOSS, max_grad_norm: float | None = None,
                        fuse_update: bool = False, state_updates: dict[str, str] | None = None,
                        frozen: list[str] = ()) -> TrainingStep:
    """Turn ``forward`` (consumed: cloned by the caller if still needed) into the training step.

    Runs ``passes.pipelines.training_step_pipeline``: recurrent lowering, :class:`TrainingStepPass`
    (arguments as its), cleanup.
    """
    from passes.pipelines import training_step_pipeline  # pipelines imports this module for the pass

    step_pass = TrainingStepPass(trainable, optimizer, loss=loss, max_grad_norm=max_grad_norm,
                                 fuse_update=fuse_update, state_updates=state_updates, frozen=frozen)
    model = training_step_pipeline(step_pass)(forward).model
    return dataclasses.replace(step_pass.result, model=model)
