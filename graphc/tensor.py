"""The symbolic ``Tensor``: a handle on one ``onnx_ir`` value plus its static shape.

Every builder op creates free-standing ``onnx_ir`` nodes through :func:`emit`;
a graph is whatever is reachable backwards from the outputs handed to
``gc.compile`` or ``gc.Trainer``. Nothing global is recorded, so a model can
be called on several inputs and compiled several times.

Shapes are tuples whose entries are ints, strings (symbolic dims such as
``"batch"``) or ``None`` (unknown). Every op checks shapes and dtypes when it
is called and raises :class:`~graphc.errors.ShapeError` naming the op, the
shapes and the user's line.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx_ir as ir

from graphc.dtypes import to_ir_dtype, to_numpy_dtype
from graphc.errors import shape_error
from graphc.user_messages import call_site, symbolic_value_error
from passes.names import OP_KEY, SOURCE_KEY

Dim = int | str | None
ShapeLike = tuple[Dim, ...]

_node_counter = itertools.count(1)
_scope_stack: list[str] = []


def _to_ir_shape(shape: Sequence[Dim]) -> ir.Shape:
    # str(d): a SymDim is stored as its plain name, so the IR holds no reference back to a Tensor
    return ir.Shape([d if isinstance(d, int) else ir.SymbolicDim(None if d is None else str(d)) for d in shape])


def _from_ir_shape(shape: ir.Shape | None) -> ShapeLike | None:
    if shape is None:
        return None
    return tuple(d if isinstance(d, int) else d.value for d in shape)


class SymDim(str):
    """A symbolic dim (``"batch"``) that remembers the tensor and axis it was read from.

    ``x.shape[0]`` and ``x.size(0)`` return one, so ``gc.zeros((2, x.size(0), 16))`` can take the
    size from ``Shape(x)`` at run time. It is a ``str``: it equals, hashes and prints as its name.

    >>> import graphc as gc
    >>> x = gc.input("x", ("batch", 3))
    >>> x.size(0) == "batch", x.size(0).axis
    (True, 0)
    """

    def __new__(cls, name: str, tensor: "Tensor", axis: int):
        dim = super().__new__(cls, name)
        dim.tensor, dim.axis = tensor, axis
        return dim

    def __reduce__(self):  # copies and pickles are plain names; the tensor does not travel
        return str, (str(self),)


class Tensor:
    """A symbolic tensor: the output of an op, a graph input, or a parameter.

    >>> import graphc as gc
    >>> x = gc.input("x", shape=("batch", 3))
    >>> (x * 2 + 1).shape
    ('batch', 3)
    """

    __array_priority__ = 1000  # numpy scalars on the left defer to Tensor's operators

    def __init__(self, value: ir.Value):
        self.value = value

    # ---- static facts -------------------------------------------------
    @property
    def shape(self) -> ShapeLike:
        shape = _from_ir_shape(self.value.shape)
        if shape is None:
            return None
        return tuple(SymDim(d, self, i) if isinstance(d, str) else d for i, d in enumerate(shape))

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.value.dtype.numpy())

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def name(self) -> str | None:
        return self.value.name

    def size(self, dim: int | None = None):
        """``torch.Tensor.size``: the shape, or one dim (an int, or a :class:`SymDim` naming a symbolic dim)."""
        if dim is None:
            return self.shape
        if not isinstance(dim, (int, np.integer)) or isinstance(dim, bool) or not -self.ndim <= dim < self.ndim:
            raise IndexError(f"size(): dim {dim!r} is out of range for a tensor of shape {self.shape} "
                             f"(expected an int in [{-self.ndim}, {self.ndim - 1}])")
        return self.shape[int(dim)]

    def numel(self):
        """The number of elements: an int when the shape is static, else a 0-d int64 Tensor computed at run time.

        >>> import graphc as gc
        >>> gc.input("x", (2, 3)).numel(), gc.input("y", ("batch", 3)).numel().shape
        (6, ())
        """
        return _ops().numel(self)

    def dim(self) -> int:
        return self.ndim

    def __repr__(self) -> str:
        return f"Tensor(name={self.name!r}, shape={self.shape}, dtype={self.dtype})"

    def __bool__(self):
        raise TypeError("a symbolic Tensor has no truth value at build time; use gc.where for data-dependent choices")

    def __len__(self):
        first = self.shape[0] if self.shape else None
        if not isinstance(first, int):
            raise TypeError(f"len() of a tensor whose first dim is symbolic ({first!r})")
        return first

    __hash__ = object.__hash__

    # ---- operators (each delegates to one builder op in graphc.ops) ---
    def __add__(self, other): return _ops().add(self, other)
    def __radd__(self, other): return _ops().add(other, self)
    def __sub__(self, other): return _ops().sub(self, other)
    def __rsub__(self, other): return _ops().sub(other, self)
    def __mul__(self, other): return _ops().mul(self, other)
    def __rmul__(self, other): return _ops().mul(other, self)
    def __truediv__(self, other): return _ops().div(self, other)
    def __rtruediv__(self, other): return _ops().div(other, self)
    def __pow__(self, other): return _ops().power(self, other)
    def __rpow__(self, other): return _ops().power(other, self)
    def __matmul__(self, other): return _ops().matmul(self, other)
    def __rmatmul__(self, other): return _ops().matmul(other, self)
    def __neg__(self): return _ops().neg(self)
    def __pos__(self): return self
    def __abs__(self): return _ops().absolute(self)
    def __getitem__(self, index): return _ops().getitem(self, index)
    def __lt__(self, other): return _ops().compare("Less", self, other)
    def __le__(self, other): return _ops().compare("LessOrEqual", self, other)
    def __gt__(self, other): return _ops().compare("Greater", self, other)
    def __ge__(self, other): return _ops().compare("GreaterOrEqual", self, other)
    # == and != build element-wise tensors as in PyTorch; hashing stays by identity (dict keys, sets)
    def __eq__(self, other): return _ops().compare("Equal", self, other)
    def __ne__(self, other): return _ops().not_equal(self, other)
    def __invert__(self): return _ops().logical_not(self)
    def eq(self, other): return _ops().compare("Equal", self, other)
    def ne(self, other): return _ops().not_equal(self, other)

    # ---- methods ------------------------------------------------------
    def reshape(self, *shape): return _ops().reshape(self, *shape)
    def view(self, *shape): return _ops().reshape(self, *shape)
    def flatten(self, start_dim: int = 0, end_dim: int = -1): return _ops().flatten(self, start_dim, end_dim)
    def transpose(self, dim0: int, dim1: int): return _ops().transpose(self, dim0, dim1)
    def permute(self, *dims): return _ops().permute(self, *dims)
    def sum(self, dim=None, keepdim: bool = False): return _ops().reduce("ReduceSum", self, dim, keepdim)
    def mean(self, dim=None, keepdim: bool = False): return _ops().reduce("ReduceMean", self, dim, keepdim)
    def max(self, dim=None, keepdim: bool = False): return _ops().reduce_max(self, dim, keepdim)
    def min(self, dim=None, keepdim: bool = False): return _ops().reduce_min(self, dim, keepdim)
    def argmax(self, dim=None, keepdim: bool = False): return _ops().argmax(self, dim, keepdim)
    def squeeze(self, dim=None): return _ops().squeeze(self, dim)
    def unsqueeze(self, dim: int): return _ops().unsqueeze(self, dim)
    def expand(self, *sizes): return _ops().expand(self, *sizes)
    def exp(self): return _ops().unary("Exp", self)
    def log(self): return _ops().unary("Log", self)
    def sqrt(self): return _ops().unary("Sqrt", self)
    def abs(self): return _ops().absolute(self)
    def relu(self): return _ops().unary("Relu", self)
    def sigmoid(self): return _ops().unary("Sigmoid", self)
    def tanh(self): return _ops().unary("Tanh", self)
    def detach(self): return _ops().stop_gradient(self)
    def astype(self, dtype): return _ops().cast(self, dtype)
    def float(self): return _ops().cast(self, "float32")
    def double(self): return _ops().cast(self, "float64")
    def long(self): return _ops().cast(self, "int64")
    def clamp(self, min=None, max=None): return _ops().clip(self, min, max)  # noqa: A002 (torch's names)
    def clip(self, min=None, max=None): return _ops().clip(self, min, max)  # noqa: A002
    def clamp_min(self, min): return _ops().clip(self, min, None)  # noqa: A002
    def clamp_max(self, max): return _ops().clip(self, None, max)  # noqa: A002
    def cumsum(self, dim: int, dtype=None): return _ops().cumsum(self, dim, dtype)

    # ---- values: PyTorch habits meet a symbolic tensor; the error says where values come from instead.
    # A Parameter holds its value and overrides numpy(), so item()/float() work on it as in torch.
    def numpy(self): raise symbolic_value_error(self, "numpy()")
    def backward(self, *args, **kwargs): raise symbolic_value_error(self, "backward()", "backward")
    def item(self): return self._value_for("item()").item()
    def tolist(self): return self._value_for("tolist()").tolist()
    def __float__(self): return float(self._value_for("float()").item())  # one element, any rank, as torch
    def __int__(self): return int(self._value_for("int()").item())

    def _value_for(self, what: str) -> np.ndarray:
        if type(self).numpy is Tensor.numpy:
            raise symbolic_value_error(self, what)
        return self.numpy()

    @property
    def T(self):
        return _ops().permute(self, *reversed(range(self.ndim)))


def _ops():
    # graphc.ops imports this module; the late import keeps the cycle harmless.
    from graphc import ops
    return ops


def node_name(op_type: str) -> str:
    scope = "/".join(_scope_stack)
    return f"{scope}/{op_type}_{next(_node_counter)}" if scope else f"{op_type}_{next(_node_counter)}"


def emit(op_type: str, inputs: Sequence[Tensor | ir.Value | None], attrs: Mapping[str, Any] | None = None, *,
         shape: Sequence[Dim] | None, dtype, num_outputs: int = 1,
         extra_outputs: Sequence[tuple[Sequence[Dim] | None, Any]] = ()) -> Any:
    """Create one ``ai.onnx`` node and return its output Tensor(s).

    ``shape``/``dtype`` describe output 0; ``extra_outputs`` gives
    ``(shape, dtype)`` for outputs 1.. when the op has several.
    """
    values = [t.value if isinstance(t, Tensor) else t for t in inputs]
    node = ir.Node("", op_type, values, ir.convenience.convert_attributes(dict(attrs or {})),
                   num_outputs=num_outputs, name=node_name(op_type))
    # Who built this node, so a run-time failure can name the user's call and line (runtime.run_errors).
    operation, source = call_site()
    if operation:
        node.metadata_props[OP_KEY] = operation
    node.metadata_props[SOURCE_KEY] = source
    specs = [(shape, dtype), *extra_outputs]
    outputs = []
    for value, (out_shape, out_dtype) in zip(node.outputs, specs):
        value.type = ir.TensorType(to_ir_dtype(out_dtype))
        if out_shape is not None:
            value.shape = _to_ir_shape(out_shape)
        outputs.append(Tensor(value))
    return outputs[0] if num_outputs == 1 else tuple(outputs)


def input(name: str, shape: Sequence[Dim], dtype="float32") -> Tensor:  # noqa: A001 (the contract's name)
    """A graph input. String dims are symbolic (``"batch"``), resolved at run time.

    >>> import graphc as gc
    >>> gc.input("x", shape=("batch", 784)).shape
    ('batch', 784)
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"input name must be a non-empty string, got {name!r}")
    for d in shape:
        if not (isinstance(d, str) and d) and not (isinstance(d, int) and d >= 0):
            raise ValueError(f"input {name!r}: each dim must be an int >= 0 or a symbolic name, got {tuple(shape)}")
    value = ir.Value(name=name, shape=_to_ir_shape(tuple(shape)), type=ir.TensorType(to_ir_dtype(dtype)))
    return Tensor(value)


def constant(array, dtype=None) -> Tensor:
    """A constant tensor (a ``Constant`` node) from a number or numpy array."""
    arr = np.asarray(array, dtype=to_numpy_dtype(dtype) if dtype is not None else None)
    if arr.dtype == np.float64 and dtype is None:
        arr = arr.astype(np.float32)  # PyTorch's default float dtype
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"constant: unsupported dtype {arr.dtype}")
    out = emit("Constant", [], {"value": ir.Tensor(arr)}, shape=arr.shape, dtype=arr.dtype)
    out.value.const_value = ir.Tensor(arr)
    return out


def as_tensor(x, like: Tensor | None = None, op: str = "op") -> Tensor:
    """Tensors pass through; Python numbers become constants of ``like``'s dtype (as in PyTorch)."""
    if isinstance(x, Tensor):
        return x
    if isinstance(x, SymDim):  # ``t / x.size(0)``: the dim's run-time size, used like a Python int
        size = _ops().dim_size(x)
        return size if like is None else _ops().cast(size, like.dtype)
    if isinstance(x, (bool, int, float, np.number)) and like is not None:
        return constant(x, dtype=like.dtype)
    if isinstance(x, (bool, int, float, np.number, np.ndarray, list, tuple)):
        return constant(x)
    raise shape_error(op, f"expected a Tensor or a number, got {type(x).__name__}")
