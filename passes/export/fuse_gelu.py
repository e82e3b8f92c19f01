"""The primitive GELU patterns (as ``F.gelu`` emits them) become ONNX's ``Gelu`` (opset 20)."""

from __future__ import annotations

import math

import onnx_ir as ir
from onnxscript.rewriter import pattern

from passes.export.rule_pass import RulePass, constant_array, default_opset


def _is_scalar(value: ir.Value, expected: float) -> bool:
    array = constant_array(value)
    return array is not None and array.size == 1 and math.isclose(float(array.reshape(())), expected,
                                                                  rel_tol=1e-6)


def _common_check(context, x) -> pattern.MatchResult:
    result = pattern.MatchResult()
    if default_opset(context) < 20:
        return result.fail("Gelu needs opset 20")
    if x.dtype != ir.DataType.FLOAT:  # ONNX Runtime's float64 Gelu is less exact than Erf in float64
        return result.fail(f"input {x.name} is not float32")
    return result


class GeluErfFusion(pattern.RewriteRuleClassBase):
    """``x * 0.5 * (1 + erf(x * 1/sqrt(2)))`` -> ``Gelu(x)``."""

    def pattern(self, op, x, half, inv_sqrt2, one):
        return op.Mul(op.Mul(x, half), op.Add(op.Erf(op.Mul(x, inv_sqrt2)), one))

    def check(self, context, x, half, inv_sqrt2, one, **_) -> pattern.MatchResult:
        result = _common_check(context, x)
        if result and not (_is_scalar(half, 0.5) and _is_scalar(inv_sqrt2, 1 / math.sqrt(2))
                           and _is_scalar(one, 1.0)):
            return result.fail("the constants are not 0.5, 1/sqrt(2) and 1")
        return result

    def rewrite(self, op, x, **_):
        return op.Gelu(x)


class GeluTanhFusion(pattern.RewriteRuleClassBase):
    """``x * 0.5 * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))`` -> ``Gelu(x, approximate="tanh")``."""

    def pattern(self, op, x, half, cubic, sqrt_2_pi, one):
        inner = op.Add(x, op.Mul(op.Mul(op.Mul(x, x), x), cubic))
        return op.Mul(op.Mul(x, half), op.Add(op.Tanh(op.Mul(inner, sqrt_2_pi)), one))

    def check(self, context, x, half, cubic, sqrt_2_pi, one, **_) -> pattern.MatchResult:
        result = _common_check(context, x)
        if result and not (_is_scalar(half, 0.5) and _is_scalar(cubic, 0.044715)
                           and _is_scalar(sqrt_2_pi, math.sqrt(2 / math.pi)) and _is_scalar(one, 1.0)):
            return result.fail("the constants are not 0.5, 0.044715, sqrt(2/pi) and 1")
        return result

    def rewrite(self, op, x, **_):
        return op.Gelu(x, approximate="tanh")


class FuseGeluPass(RulePass):
    """Fuse graphc's primitive GELU (exact and tanh forms) into ``Gelu`` (models of opset >= 20).

    Rewrites: ``Mul(Mul(x, 0.5), Add(Erf(Mul(x, 1/sqrt(2))), 1)) -> Gelu(x)``;
    ``Mul(Mul(x, 0.5), Add(Tanh(Mul(Add(x, Mul(Mul(Mul(x, x), x), 0.044715)), sqrt(2/pi))), 1))
    -> Gelu(x, approximate="tanh")`` (operands of Mul/Add in either order).

    Checks: opset >= 20; float32 input (ORT's float64 Gelu loses precision); the constants equal those numbers (relative 1e-6); no
    intermediate read elsewhere.

    Invariant: outputs unchanged up to float rounding.
    """

    rules = (GeluErfFusion().rule(), GeluTanhFusion().rule())
    anchor_ops = frozenset({"Erf", "Tanh"})
    commute = True
