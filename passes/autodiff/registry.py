"""The registry of vector-Jacobian product rules, one per ONNX ``op_type``.

A rule receives a :class:`VJPContext` (the forward node, the cotangents of its
outputs, an :class:`~passes.emitter.Emitter`) and returns one cotangent per
node input, ``None`` where the input is not differentiable or not needed.
Rules emit ``ai.onnx`` ops only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from passes.emitter import Emitter

VJPRule = Callable[["VJPContext"], Sequence[ir.Value | None]]
VJP_RULES: dict[str, VJPRule] = {}

FLOAT_TYPES = {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}


class MissingGradientError(NotImplementedError):
    """Raised when autodiff meets an op with no registered rule."""


def register_vjp(op_type: str) -> Callable[[VJPRule], VJPRule]:
    """Decorator: register ``rule`` as the VJP of ``op_type`` (one rule per op)."""

    def wrap(rule: VJPRule) -> VJPRule:
        if op_type in VJP_RULES:
            raise ValueError(f"a VJP rule for {op_type} is already registered")
        VJP_RULES[op_type] = rule
        return rule

    return wrap


def is_float(value: ir.Value | None) -> bool:
    """Whether ``value`` carries a cotangent: a floating-point value, or the integer output of
    ``QuantizeLinear``, whose float cotangent carries fake quantization's straight-through gradient
    to ``DequantizeLinear`` (see ``rules/quantize.py``)."""
    if value is None:
        return False
    if value.dtype in FLOAT_TYPES:
        return True
    producer = value.producer()
    return producer is not None and producer.op_type == "QuantizeLinear" and producer.domain in ("", "ai.onnx")


class VJPContext:
    """What a rule sees: the forward node, output cotangents and a node factory."""

    def __init__(self, node: ir.Node, out_grads: Sequence[ir.Value | None],
                 needs: Sequence[bool], emitter: Emitter):
        self.node = node
        self.inputs = list(node.inputs)
        self.outputs = list(node.outputs)
        self.out_grads = list(out_grads)
        self._needs = list(needs)
        self.e = emitter

    @property
    def g(self) -> ir.Value:
        """The cotangent of the first output (the usual single-output case)."""
        return self.out_grads[0]

    def needs(self, index: int) -> bool:
        """Whether input ``index`` needs a cotangent (skip work when it does not)."""
        return index < len(self._needs) and self._needs[index]

    def attr(self, name: str, default: Any = None) -> Any:
        attribute = self.node.attributes.get(name)
        return default if attribute is None else attribute.value

    def const(self, value: Any, like: ir.Value) -> ir.Value:
        """A scalar constant with the dtype of ``like``."""
        return self.e.const(np.asarray(value, dtype=like.dtype.numpy()))

    def op(self, op_type: str, inputs: Sequence[ir.Value | None], attrs: dict | None = None,
           **kwargs: Any) -> Any:
        return self.e.op(op_type, inputs, attrs, **kwargs)
