"""graphc: define-and-compile deep learning that emits standard ONNX, for inference and training.

    import graphc as gc
    from graphc import nn
    import graphc.nn.functional as F

Layers: ``graphc`` (this front end) imports ``passes`` (graph transformations)
and ``runtime`` (ONNX Runtime sessions); neither of those imports ``graphc``.
"""

import sys as _sys

try:
    from graphc import data, nn, optim
    from graphc import distributed
    from graphc.autograd import grad
    from graphc.errors import GraphcError, ShapeError
    from graphc.history import History, plot_history
    from graphc.onnx_import import ImportedModule, load_onnx
    from graphc.ops import clip, concat, stack, where
    from graphc.ops import cat, cumsum, full, full_like, ones, ones_like, zeros, zeros_like
    from graphc.summary import ModelSummary, summary
    from graphc.program import Program, compile
    from graphc import quantization
    from graphc.quantization import quantize
    from graphc.random import manual_seed
    from graphc.tensor import Tensor, constant, input
    from graphc.trainer import CheckpointError, NonFiniteLossError, Trainer
    from graphc.user_messages import SymbolicValueError
    from graphc.user_messages import module_getattr as _module_getattr
    from runtime.run_errors import RunError
except KeyboardInterrupt:
    # ``python -m graphc`` imports this package (numpy, onnx, ONNX Runtime: seconds) before the CLI can catch
    # a Ctrl-C; runpy sets argv[0] to "-m" until the module is found. There, end as the CLI does on Ctrl-C:
    # one line and exit code 130 (runtime/cli.py), not a traceback. A user's ``import graphc`` re-raises.
    if _sys.argv[:1] != ["-m"]:
        raise
    _sys.stderr.write("graphc: error: interrupted\n")
    raise SystemExit(130) from None

__getattr__ = _module_getattr(__name__, "gc.")  # gc.foo: "graphc has no gc.foo; ... gc has: ..."

__version__ = "0.1.0"

__all__ = ["data", "distributed", "nn", "optim", "grad", "compile", "Program", "Trainer", "Tensor", "input", "constant", "manual_seed",
           "concat", "stack", "where", "clip", "cat", "cumsum", "zeros", "ones", "full", "zeros_like", "ones_like",
           "full_like", "summary", "ModelSummary", "GraphcError", "ShapeError", "NonFiniteLossError", "CheckpointError",
           "RunError", "SymbolicValueError", "load_onnx", "ImportedModule", "quantize", "quantization", "History", "plot_history", "__version__"]
