"""Reverse-mode autodiff: rules per ONNX op (``rules/``), the walker (``core``), the pass (``autodiff_pass``)."""
