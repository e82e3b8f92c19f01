"""Back end: ONNX Runtime sessions (CPU/CUDA), device-resident training state,
data loading, checkpoints and the ``graphc`` command-line runner.

This package imports nothing of ``graphc`` or ``passes``: it works on ONNX
files, ``ModelProto``s and numpy arrays only.

ONNX Runtime telemetry is off by default: importing this package sets
``ORT_DISABLE_TELEMETRY=1`` (unless the variable is already set; set it to
``0`` to opt in) before anything imports onnxruntime, which otherwise writes
a telemetry queue under ``~/.cache/Microsoft/DeveloperTools`` at import, and
``runtime.providers`` calls ``onnxruntime.disable_telemetry_events()``.
Child processes inherit the variable.
"""

import os as _os

_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
