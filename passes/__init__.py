"""Middle end: graph -> graph transformations on ``onnx_ir`` graphs.

Autodiff, the optimizer update, the training-step construction and graph
cleanup. This package imports nothing of ``graphc`` (the front end) or
``runtime`` (the back end): it sees only ``onnx_ir`` values, nodes and models.
"""

OPSET = 21
"""The default ``ai.onnx`` opset of every graph graphc builds (ONNX Runtime >= 1.20 runs it)."""

IR_VERSION = 10
"""The ONNX IR version graphc writes: ONNX Runtime 1.31 refuses anything above 13."""
