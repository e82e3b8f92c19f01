"""``Add(MatMul(a, b), c)`` on 2-D operands becomes one ``Gemm``."""

from __future__ import annotations

from onnxscript.rewriter.rules.common._matmul_add_to_gemm import MatMulAddToGemm, TransBMatMulAddToGemm

from passes.export.rule_pass import RulePass


class _BiasCheck:
    """Adds to onnxscript's rank-2 check: ``c`` must broadcast to (M, N) alone, as Gemm's C does."""

    def check(self, context, input_a, input_b, input_c=None, **kwargs):
        result = super().check(context, input_a, input_b, **kwargs)
        shape = input_c.shape if input_c is not None else None
        if result and (shape is None or len(shape) > 2):
            return result.fail(f"the added term {input_c.name} must have a known rank <= 2 to be Gemm's C")
        if result and input_c.dtype != input_a.dtype:
            return result.fail("the added term has another dtype")
        return result


class _Plain(_BiasCheck, MatMulAddToGemm):
    pass


class _TransB(_BiasCheck, TransBMatMulAddToGemm):
    pass


class MatMulAddToGemmPass(RulePass):
    """Fuse a 2-D ``MatMul`` and the ``Add`` of its result into ``Gemm`` (Add in either operand order).

    Rewrites: ``Add(MatMul(a, b), c) -> Gemm(a, b, c)``;
    ``Add(MatMul(a, Transpose(b, perm=[1, 0])), c) -> Gemm(a, b, c, transB=1)``.

    Checks: ``a`` and ``b`` have rank 2; ``c`` has a known rank <= 2 (Gemm broadcasts C to (M, N)
    only) and ``a``'s dtype. Higher-rank MatMuls (a Linear over a sequence) stay as they are.

    Invariant: outputs unchanged.
    """

    rules = (_Plain().rule(), _TransB().rule())
    anchor_ops = frozenset({"MatMul"})
    commute = True
