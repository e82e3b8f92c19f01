"""graphc: define-and-compile deep learning that emits standard ONNX, for inference and training.

    import graphc as gc
    from graphc import nn
    import graphc.nn.functional as F

Layers: ``graphc`` (this front end) imports ``passes`` (graph transformations)
and ``runtime`` (ONNX Runtime sessions); neither of those imports ``graphc``.
"""

from graphc import data, nn, optim
from graphc.autograd import grad
from graphc.errors import GraphcError, ShapeError
from graphc.ops import clip, concat, stack, where
from graphc.program import Program, compile
from graphc.random import manual_seed
from graphc.tensor import Tensor, constant, input
from graphc.trainer import CheckpointError, NonFiniteLossError, Trainer

__version__ = "0.1.0"

__all__ = ["data", "nn", "optim", "grad", "compile", "Program", "Trainer", "Tensor", "input", "constant", "manual_seed",
           "concat", "stack", "where", "clip", "GraphcError", "ShapeError", "NonFiniteLossError", "CheckpointError",
           "__version__"]
