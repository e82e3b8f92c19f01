"""The primitive layer-norm pattern (as ``F.layer_norm`` emits it) becomes ``LayerNormalization``."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern

from passes.export.rule_pass import RulePass, constant_array, default_opset


def _trailing_axes(x: ir.Value, axes: ir.Value) -> int | None:
    """The first normalized axis (negative) when ``axes`` are exactly x's last k dims, else None."""
    array = constant_array(axes)
    if array is None or x.shape is None or array.ndim != 1 or array.size == 0:
        return None
    rank = len(x.shape)
    normalized = sorted(int(a) % rank for a in array.tolist()) if rank else []
    if normalized != list(range(rank - len(normalized), rank)) or len(set(normalized)) != len(normalized):
        return None
    return -len(normalized)


class LayerNormFusion(pattern.RewriteRuleClassBase):
    """``(x - mean(x)) * 1/sqrt(var(x) + eps) * scale`` -> ``LayerNormalization(x, scale)``."""

    def pattern(self, op, x, axes, axes2, epsilon, scale):
        deviation = op.Sub(x, op.ReduceMean(x, axes, keepdims=1))
        variance = op.ReduceMean(op.Mul(deviation, deviation), axes2, keepdims=1)
        std = op.Sqrt(op.Add(variance, epsilon))
        normalized = pattern.OrValue([op.Mul(deviation, op.Reciprocal(std)), op.Div(deviation, std)])
        return op.Mul(normalized, scale)

    def check(self, context, x, axes, axes2, epsilon, scale, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if default_opset(context) < 18:
            return result.fail("LayerNormalization needs opset 17 and ReduceMean's axes input opset 18")
        if x.dtype != ir.DataType.FLOAT:
            return result.fail(f"input {x.name} is not float32")
        axis = _trailing_axes(x, axes)
        second = constant_array(axes2)
        if axis is None or second is None or not np.array_equal(constant_array(axes), second):
            return result.fail("the reduced axes are not the same trailing dims in both means")
        eps = constant_array(epsilon)
        if eps is None or eps.size != 1:
            return result.fail("epsilon is not a constant scalar")
        normalized_shape = list(x.shape)[axis:]
        if scale.shape is None or list(scale.shape) != normalized_shape or scale.dtype != x.dtype:
            return result.fail(f"scale {scale.name} does not have the normalized shape {normalized_shape}")
        self._axis, self._epsilon = axis, float(eps.reshape(()))
        return result

    def rewrite(self, op, x, scale, **_):
        return op.LayerNormalization(x, scale, axis=self._axis, epsilon=self._epsilon)


class LayerNormBiasFusion(pattern.RewriteRuleClassBase):
    """``LayerNormalization(x, scale) + bias`` -> ``LayerNormalization(x, scale, bias)``."""

    def pattern(self, op, x, scale, bias):
        return op.Add(op.LayerNormalization(x, scale, _outputs=["normalized"]), bias)

    def check(self, context, x, scale, bias, normalized, **_) -> pattern.MatchResult:
        result = pattern.MatchResult()
        if bias.shape is None or scale.shape is None or list(bias.shape) != list(scale.shape):
            return result.fail(f"bias {bias.name} does not have the scale's shape")
        if bias.dtype != x.dtype or len(normalized.producer().outputs) != 1:
            return result.fail("bias dtype differs, or the mean/inverse-std outputs are used")
        return result

    def rewrite(self, op, x, scale, bias, normalized, **_):
        return op.LayerNormalization(x, scale, bias, **normalized.producer().attributes)


class FuseLayerNormPass(RulePass):
    """Fuse graphc's primitive layer norm into ONNX's ``LayerNormalization`` (opset >= 18 models).

    Rewrites: ``Sub(x, ReduceMean(x, axes))`` = d; ``Mul(d, Reciprocal(Sqrt(Add(ReduceMean(Mul(d, d),
    axes), eps))))`` (or ``Div(d, Sqrt(...))``) times ``scale`` -> ``LayerNormalization(x, scale,
    axis=-k, epsilon=eps)``; then ``+ bias`` is taken in as its third input.

    Checks: float32 input; both means reduce the same trailing k axes (keepdims); eps a constant
    scalar; scale (and bias) of exactly the normalized shape; no intermediate read elsewhere.

    Invariant: outputs unchanged up to float rounding.
    """

    rules = (LayerNormFusion().rule(), LayerNormBiasFusion().rule())
    anchor_ops = frozenset({"ReduceMean"})
    commute = True
