"""Eval-mode BatchNormalization folded into the Conv or Gemm before it."""

from __future__ import annotations

from onnxscript.rewriter.rules.common._fuse_batchnorm import FuseBatchNormIntoConv, FuseBatchNormIntoGemm

from passes.export.rule_pass import RulePass


class _EvalOnly:
    """Adds to onnxscript's checks: inference-mode BatchNorm (one output, ``training_mode`` 0)."""

    def check(self, context, x, inbound_out, batchnorm_out):
        result = super().check(context, x, inbound_out, batchnorm_out)
        node = batchnorm_out.producer()
        mode = node.attributes.get("training_mode")
        if result and (len(node.outputs) != 1 or (mode is not None and mode.as_int() != 0)):
            return result.fail("BatchNormalization in training mode (batch statistics) cannot be folded")
        if result and len(inbound_out.uses()) != 1:
            return result.fail(f"{inbound_out.name} is also read by another node")
        return result


class _Conv(_EvalOnly, FuseBatchNormIntoConv):
    pass


class _Gemm(_EvalOnly, FuseBatchNormIntoGemm):
    pass


class FuseBatchNormPass(RulePass):
    """Fold ``BatchNormalization(Conv(x, W, B))`` into ``Conv(x, W', B')`` (likewise ``Gemm``).

    Rewrites, with s = gamma / sqrt(var + eps): ``W' = W * s`` along the output channels,
    ``B' = (beta_gemm * B - mean) * s + beta`` (B = 0 when absent).

    Checks: W, B and the four BatchNorm tensors are constant initializers (not graph inputs) used by
    nothing else; the BatchNorm is in inference mode (one output); the Conv/Gemm output feeds only it.

    Invariant: outputs unchanged up to float rounding of the folded weights.
    """

    rules = (_Conv().rule(), _Gemm().rule())
    anchor_ops = frozenset({"BatchNormalization"})
