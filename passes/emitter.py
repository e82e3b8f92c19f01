"""A small node factory shared by the passes that write new graph pieces.

Autodiff rules and optimizer updates create many small nodes; ``Emitter``
keeps them in creation order (which is a topological order) so a pass can
append them to a graph in one go, and gives every node a readable name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir


def _attributes(attrs: Mapping[str, Any]) -> list[ir.Attr]:
    """``attrs`` as IR attributes. The plain Python ints, floats, strings, int lists and tensors the passes
    write are converted directly: onnx_ir's general converter infers each type through ``isinstance``
    checks against typing Protocols, which cost ~40 us a node (seconds on a 20k-node unrolled step)."""
    out = []
    for name, value in attrs.items():
        kind = type(value)
        if kind is int:
            out.append(ir.AttrInt64(name, value))
        elif kind is float:
            out.append(ir.AttrFloat32(name, value))
        elif kind is str:
            out.append(ir.AttrString(name, value))
        elif kind is ir.Tensor:
            out.append(ir.AttrTensor(name, value))
        elif kind in (list, tuple) and value and all(type(v) is int for v in value):
            out.append(ir.AttrInt64s(name, list(value)))
        else:
            out.append(ir.convenience.convert_attribute(name, value))
    return out


class Emitter:
    """Creates free-standing ``ai.onnx`` nodes and remembers them in order."""

    def __init__(self, prefix: str = "n"):
        self.prefix = prefix
        self.nodes: list[ir.Node] = []
        self._count = 0

    def op(self, op_type: str, inputs: Sequence[ir.Value | None], attrs: Mapping[str, Any] | None = None,
           *, num_outputs: int = 1, dtype: ir.DataType | None = None,
           shape: ir.Shape | None = None) -> Any:
        """Emit one node; returns its output value, or a tuple when ``num_outputs > 1``."""
        self._count += 1
        node = ir.Node("", op_type, list(inputs), _attributes(attrs or {}),
                       num_outputs=num_outputs, name=f"{self.prefix}/{op_type}_{self._count}")
        self.nodes.append(node)
        if dtype is not None:
            node.outputs[0].type = ir.TensorType(dtype)
        if shape is not None:
            node.outputs[0].shape = shape
        return node.outputs[0] if num_outputs == 1 else tuple(node.outputs)

    def const(self, array: Any, dtype: ir.DataType | np.dtype | None = None) -> ir.Value:
        """A ``Constant`` node holding ``array`` (cast to ``dtype`` when given)."""
        if isinstance(dtype, ir.DataType):
            dtype = dtype.numpy()
        arr = np.asarray(array, dtype=dtype)
        value = self.op("Constant", [], {"value": ir.Tensor(arr)})
        value.type = ir.TensorType(ir.DataType.from_numpy(arr.dtype))
        value.shape = ir.Shape(arr.shape)
        value.const_value = ir.Tensor(arr)
        return value

    def ints(self, values: Sequence[int]) -> ir.Value:
        """An int64 1-D constant, the form ONNX wants for axes, shapes and pads."""
        return self.const(np.asarray(list(values), dtype=np.int64))
