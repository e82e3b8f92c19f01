"""``nn.Parameter``: a trainable tensor that holds its value (an initializer in the graph)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from graphc.dtypes import to_ir_dtype
from graphc.tensor import Tensor, _to_ir_shape
from passes.names import PARAMETER_KEY


# Two process-wide counters, read per run/step (a compare of two ints):
# - the values version moves whenever any parameter's value may have changed (a training step, an
#   assignment to ``.data``, a checkpoint load), so a compiled Program knows it must take new values;
# - the requires_grad version moves whenever a parameter is frozen or unfrozen, so a Trainer knows it
#   must rebuild its step for the new set of trained parameters.
_versions = {"values": 0, "requires_grad": 0}


def values_version() -> int:
    return _versions["values"]


def mark_values_changed() -> None:
    _versions["values"] += 1


def requires_grad_version() -> int:
    return _versions["requires_grad"]


class Parameter(Tensor):
    """A named leaf Tensor with data; ``gc.compile`` writes it as an initializer.

    While a Trainer trains it, ``.data`` reads the Trainer's current value
    (fetched from the device on demand, not copied every step).
    """

    def __init__(self, data, requires_grad: bool = True):
        array = np.array(data, copy=True)
        if array.dtype == np.float64 and not isinstance(data, np.ndarray):
            array = array.astype(np.float32)  # Python numbers and lists: PyTorch's default dtype
        value = ir.Value(name="param", shape=_to_ir_shape(array.shape), type=ir.TensorType(to_ir_dtype(array.dtype)))
        value.const_value = ir.Tensor(array)
        value.meta[PARAMETER_KEY] = self
        super().__init__(value)
        self.requires_grad = requires_grad
        self._data = array
        self._live = None  # set by a Trainer: an object with read(param) and write(param, array)

    @property
    def requires_grad(self) -> bool:
        """``False`` freezes the parameter, as in PyTorch: no gradient, never changed by an optimizer."""
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, flag: bool) -> None:
        if not isinstance(flag, (bool, np.bool_)):
            raise TypeError(f"parameter {self.name!r}: requires_grad must be a bool, got {flag!r}")
        if getattr(self, "_requires_grad", None) != bool(flag):
            _versions["requires_grad"] += 1
        self._requires_grad = bool(flag)

    def requires_grad_(self, flag: bool = True) -> "Parameter":
        self.requires_grad = flag
        return self

    @property
    def data(self) -> np.ndarray:
        if self._live is not None:
            return self._live.read(self)
        return self._data

    @data.setter
    def data(self, array) -> None:
        array = np.asarray(array)
        if array.shape != self._data.shape:
            raise ValueError(f"parameter {self.name!r}: expected shape {self._data.shape}, got {array.shape}")
        array = np.array(array, dtype=self._data.dtype, copy=True)
        self._data = array
        if self._live is not None:
            self._live.write(self, array)
        mark_values_changed()

    def numpy(self) -> np.ndarray:
        return np.array(self.data, copy=True)

    def __repr__(self) -> str:
        return f"Parameter(name={self.name!r}, shape={self.shape}, dtype={self.dtype})"


def parameter_of(value: ir.Value) -> Parameter | None:
    """The Parameter behind a graph value, if any."""
    return value.meta.get(PARAMETER_KEY)
