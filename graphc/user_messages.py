"""What a PyTorch user reaches for first, answered in graphc's terms.

- :func:`call_site`: which graphc operation the user called and on which
  line; recorded on every emitted node so run-time failures can name them
  (``runtime.run_errors``).
- :func:`missing_name`: the AttributeError for ``gc.foo``, ``nn.Conv3d``,
  ``F.unfold``, listing what graphc does have.
- :class:`SymbolicValueError`: ``loss.backward()``, ``loss.item()``,
  ``float(loss)``: graphc tensors hold no values; the message says where the
  values are.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys

from graphc.errors import GraphcError

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_OWN_PACKAGES = tuple(os.path.join(_ROOT, name) + os.sep for name in ("graphc", "passes", "runtime"))
_is_own_file: dict[str, bool] = {}  # co_filename -> inside graphc's packages (cached: emit runs per node)

# Public spellings of the entry points a user calls (frame code names -> what the user wrote).
_OPERATORS = {"__add__": "+", "__radd__": "+", "__sub__": "-", "__rsub__": "-", "__mul__": "*", "__rmul__": "*",
              "__truediv__": "/", "__rtruediv__": "/", "__pow__": "**", "__rpow__": "**", "__matmul__": "@",
              "__rmatmul__": "@", "__neg__": "unary -", "__abs__": "abs()", "__getitem__": "indexing []",
              "__lt__": "<", "__le__": "<=", "__gt__": ">", "__ge__": ">=", "__eq__": "==", "__ne__": "!=",
              "__invert__": "~"}
_MODULE_PREFIX = {"graphc.nn.functional": "F.", "graphc.ops": "gc.", "graphc.tensor": "gc.", "graphc.program": "gc."}


def _own(filename: str) -> bool:
    own = _is_own_file.get(filename)
    if own is None:
        path = os.path.abspath(filename)
        own = _is_own_file[filename] = path.startswith(_OWN_PACKAGES) or "importlib" in path
    return own


def _operation_name(frame) -> str | None:
    """How the user spelled the graphc call made from their code (``Tensor.view``, ``F.relu``, ``nn.Linear``)."""
    code = frame.f_code
    name = code.co_name
    if name in _OPERATORS:
        return f"Tensor {_OPERATORS[name]}"
    if name in ("__call__", "forward"):
        owner = frame.f_locals.get("self")
        if owner is not None:
            return f"nn.{type(owner).__name__}"
    qualname = getattr(code, "co_qualname", name)
    if "." in qualname:  # a method: Tensor.view, Tensor.sum
        return qualname
    return _MODULE_PREFIX.get(frame.f_globals.get("__name__", ""), "") + name


def call_site() -> tuple[str | None, str]:
    """(the graphc operation the user called, ``file:line`` of that call) for the node being built now."""
    frame = sys._getframe(1)
    inner = None
    while frame is not None:
        if not _own(frame.f_code.co_filename):
            return (_operation_name(inner) if inner is not None else None,
                    f"{frame.f_code.co_filename}:{frame.f_lineno}")
        inner = frame
        frame = frame.f_back
    return None, "<unknown>"


def missing_name(module_label: str, module_name: str, name: str, available) -> AttributeError:
    """``graphc has no nn.Conv3d; did you mean ...? it has: ...`` as an AttributeError (so hasattr still works)."""
    public = sorted(n for n in available if not n.startswith("_"))
    close = difflib.get_close_matches(name, public, n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(module_label + c for c in close)}? " if close else ""
    error = AttributeError(f"graphc has no {module_label}{name}; {hint}{module_label.rstrip('.') or 'graphc'} "
                           f"has: {', '.join(public)}")
    error.name, error.obj = name, sys.modules.get(module_name)
    return error


def module_getattr(module_name: str, module_label: str):
    """A module ``__getattr__``: lazily imports a submodule that exists, else raises :func:`missing_name`."""

    def __getattr__(name: str):
        if name.startswith("__"):  # protocol probes (__path__, __wrapped__): the plain error, quickly
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        module = sys.modules[module_name]
        if hasattr(module, "__path__") and importlib.util.find_spec(f"{module_name}.{name}") is not None:
            return importlib.import_module(f"{module_name}.{name}")
        raise missing_name(module_label, module_name, name, module.__all__ if hasattr(module, "__all__")
                           else vars(module))

    return __getattr__


class SymbolicValueError(GraphcError, TypeError):
    """A graphc tensor was asked for a value it does not have (it is symbolic)."""


_HOW = {
    "backward": "graphc computes gradients inside the compiled training step: gc.Trainer(loss, optimizer, "
                "inputs=[...]).step(batch) runs forward, backward and the update in one call; for symbolic "
                "gradients use gc.grad(loss, params)",
    "value": "graphc tensors are symbolic (a graph, not numbers): train with gc.Trainer(loss, optimizer, "
             "inputs=[...]).step(batch), which returns the loss as a float; read values with "
             "gc.compile(inputs, {'out': tensor}).run(feeds)",
}


def symbolic_value_error(tensor, what: str, kind: str = "value") -> SymbolicValueError:
    """The error for ``what`` (``loss.backward()``, ``float(loss)``) on a symbolic ``tensor``."""
    return SymbolicValueError(f"{what} on {tensor!r}: {_HOW[kind]}")
