"""Back end: ONNX Runtime sessions (CPU/CUDA), device-resident training state,
data loading, checkpoints and the ``graphc`` command-line runner.

This package imports nothing of ``graphc`` or ``passes``: it works on ONNX
files, ``ModelProto``s and numpy arrays only.
"""
