"""Reverse-mode automatic differentiation over ``onnx_ir`` values.

``vjp`` walks the nodes between the ``wrt`` values and the outputs, visits them
in reverse topological order and calls each op's registered rule. It creates
free-standing nodes (kept in the emitter, in topological order); callers
either append them to a graph (the autodiff pass, the training step) or wrap
the resulting values (``gc.grad``).

Invariants: only nodes that depend on a ``wrt`` value and lead to an output
are visited; a value used several times gets the sum of its cotangents;
integer and boolean values carry no cotangent (except ``QuantizeLinear``'s output:
fake quantization's straight-through path, ``registry.is_float``); ``Identity`` nodes marked with
the ``graphc.stop_gradient`` metadata key stop the flow.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

import passes.autodiff.rules  # noqa: F401  (registers every rule)
from passes.autodiff.helpers import zeros_of
from passes.autodiff.registry import VJP_RULES, MissingGradientError, VJPContext, is_float
from passes.emitter import Emitter
from passes.lower_recurrent import is_recurrent, lower_recurrent_nodes
from passes.names import STOP_GRADIENT_KEY
from passes.traversal import topological_nodes


def _is_stop_gradient(node: ir.Node) -> bool:
    return node.metadata_props.get(STOP_GRADIENT_KEY) == "1"


def _sum(emitter: Emitter, parts: list[ir.Value]) -> ir.Value:
    return parts[0] if len(parts) == 1 else emitter.op("Sum", parts)


def _ones_like(emitter: Emitter, value: ir.Value) -> ir.Value:
    if value.shape is not None and all(isinstance(d, int) for d in value.shape):
        return emitter.const(np.ones(tuple(value.shape), dtype=value.dtype.numpy()))
    one = ir.Tensor(np.ones((1,), dtype=value.dtype.numpy()))
    return emitter.op("ConstantOfShape", [emitter.op("Shape", [value])], {"value": one})


def _differentiated(outputs: Sequence[ir.Value], wrt: Sequence[ir.Value]) -> tuple[list[ir.Node], set[ir.Value]]:
    """The nodes a gradient of ``outputs`` w.r.t. ``wrt`` crosses (topological order) and the values it reaches."""
    depends: set[ir.Value] = set(wrt)
    active: list[ir.Node] = []
    for node in topological_nodes(outputs):
        if _is_stop_gradient(node):
            continue
        if any(v in depends for v in node.inputs if is_float(v)) and any(is_float(o) for o in node.outputs):
            active.append(node)
            depends.update(o for o in node.outputs if is_float(o))
    return active, depends


def differentiated_nodes(outputs: Sequence[ir.Value], wrt: Sequence[ir.Value]) -> list[ir.Node]:
    """The nodes ``vjp(outputs, wrt)`` visits: those depending on ``wrt`` that lead to ``outputs``."""
    return _differentiated(outputs, wrt)[0]


def vjp(outputs: Sequence[ir.Value], wrt: Sequence[ir.Value],
        seeds: Sequence[ir.Value | None] | None = None,
        emitter: Emitter | None = None, unreachable: str = "zeros") -> tuple[list[ir.Value | None], Emitter]:
    """Cotangents of ``wrt`` for ``sum(seed_i * outputs_i)``.

    ``seeds`` default to ones shaped like each output. Returns one value per
    ``wrt`` entry and the emitter holding the new nodes in topological order.
    An entry that does not influence the outputs gets zeros (``unreachable="zeros"``,
    as JAX) or ``None`` (``"none"``, as PyTorch's ``.grad``: optimizers skip it).
    """
    emitter = emitter or Emitter("grad")
    for w in wrt:
        if not is_float(w):
            raise TypeError(f"cannot differentiate with respect to {w.name!r} of dtype {w.dtype}")
    active, depends = _differentiated(outputs, wrt)
    # ONNX's LSTM/GRU/RNN: lowered in place, then walked. In a pipeline LowerDifferentiatedRecurrentPass
    # has done it already; gc.grad's free-standing graphs (no model yet) are lowered here.
    if any(is_recurrent(node) for node in active):
        lowered = lower_recurrent_nodes(active)
        return vjp([lowered.get(v, v) for v in outputs], [lowered.get(v, v) for v in wrt], seeds, emitter,
                   unreachable)

    contributions: dict[ir.Value, list[ir.Value]] = {}
    seeds = list(seeds) if seeds is not None else [None] * len(outputs)
    for out, seed in zip(outputs, seeds):
        if out in depends:
            contributions.setdefault(out, []).append(seed if seed is not None else _ones_like(emitter, out))

    for node in reversed(active):
        out_grads = [_sum(emitter, contributions[o]) if o in contributions else None for o in node.outputs]
        if all(g is None for g in out_grads):
            continue
        rule = VJP_RULES.get(node.op_type)
        if rule is None:
            raise MissingGradientError(
                f"no gradient rule for ONNX op {node.op_type!r} (node {node.name!r}); "
                f"registered: {', '.join(sorted(VJP_RULES))}")
        needs = [v is not None and v in depends and is_float(v) for v in node.inputs]
        in_grads = rule(VJPContext(node, out_grads, needs, emitter))
        for value, grad, need in zip(node.inputs, in_grads, needs):
            if need and grad is not None:
                contributions.setdefault(value, []).append(grad)

    results = []
    emitted = set(emitter.nodes)
    for w in wrt:
        if w not in contributions and unreachable == "none":
            results.append(None)
            continue
        grad = _sum(emitter, contributions[w]) if w in contributions else zeros_of(emitter, w)
        if grad.producer() not in emitted or grad in results:  # a caller's seed: do not retype it
            grad = emitter.op("Identity", [grad])
        grad.type = ir.TensorType(w.dtype)
        grad.shape = ir.Shape(list(w.shape)) if w.shape is not None else None
        results.append(grad)
    return results, emitter
