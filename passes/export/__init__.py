"""The export pipeline: graph -> graph passes that make an inference model deployment-ready.

Each pass is one file, an ``onnx_ir`` pass (``call(model) -> PassResult``) whose docstring lists its
rewrites and the invariant it keeps: the model's outputs for every valid feed are unchanged (up to
float rounding). Rewrites are rules (pattern, replacement, check) for the onnxscript rewriter; the
generic clean-up comes from ``onnx_ir.passes.common``. ``pipeline.py`` runs them in order.
"""
