"""Read runner inputs from .npy/.npz/.json files and check them against a model.

Why: input files come from users and from elsewhere. Nothing here ever
unpickles (an object array in a .npy can run code when loaded), nothing
allocates what a header merely claims before checking that the file holds
it, and every mismatch is reported with the input's name, what the model
expects and what was given, e.g.
"input 'x': expected shape (batch, 784) float32, got (2, 783) float32".
"""

from __future__ import annotations

import json
import math
import os
import stat
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx


class InputError(ValueError):
    """An input file or feed does not fit; the message names the input."""


# ---------------------------------------------------------------- model inputs

_ORT_TYPES = {
    "float": np.float32, "double": np.float64, "float16": np.float16,
    "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
    "bool": np.bool_, "string": np.str_,
}


@dataclass(frozen=True)
class InputSpec:
    """What the model declares for one input.

    dtype is None for types numpy cannot hold (bfloat16, sequences, maps);
    shape is None when unknown, else a tuple of int (fixed), str (symbolic)
    or None (unnamed unknown dim).
    """

    name: str
    dtype: np.dtype | None
    shape: tuple | None
    required: bool = True
    type_name: str = ""


def input_specs(source) -> list[InputSpec]:
    """InputSpecs from an InferenceSession, a ModelProto, or a list of ORT NodeArgs / ValueInfoProtos.

    Prefer the ModelProto: a session cannot distinguish a scalar input from
    one of unknown shape, so its rank-0 inputs are left unchecked.
    """
    if hasattr(source, "get_inputs"):
        required = [_spec_from_node_arg(arg, True) for arg in source.get_inputs()]
        optional = [_spec_from_node_arg(arg, False) for arg in source.get_overridable_initializers()]
        return required + optional
    if isinstance(source, onnx.ModelProto):
        initialized = {init.name for init in source.graph.initializer}
        return [_spec_from_value_info(v, v.name not in initialized) for v in source.graph.input]
    specs = []
    for item in source:
        if isinstance(item, InputSpec):
            specs.append(item)
        elif isinstance(item, onnx.ValueInfoProto):
            specs.append(_spec_from_value_info(item, True))
        else:
            specs.append(_spec_from_node_arg(item, True))
    return specs


def _spec_from_node_arg(arg, required: bool) -> InputSpec:
    type_name = arg.type or ""
    dtype = None
    if type_name.startswith("tensor(") and type_name.endswith(")"):
        numpy_type = _ORT_TYPES.get(type_name[len("tensor("):-1])
        dtype = np.dtype(numpy_type) if numpy_type is not None else None
    # ORT reports both "scalar" and "shape unknown" as []; only a ModelProto tells them apart.
    shape = tuple(arg.shape) if isinstance(arg.shape, (list, tuple)) and arg.shape else None
    return InputSpec(arg.name, dtype, shape, required, type_name)


def _spec_from_value_info(value: onnx.ValueInfoProto, required: bool) -> InputSpec:
    if not value.type.HasField("tensor_type"):
        return InputSpec(value.name, None, None, required, value.type.WhichOneof("value") or "unknown")
    tensor_type = value.type.tensor_type
    elem = tensor_type.elem_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))
        if elem == onnx.TensorProto.STRING:
            dtype = np.dtype(np.str_)
    except (KeyError, TypeError, ValueError):
        dtype = None
    if dtype is not None and dtype.kind == "V":  # bfloat16/float8 map to opaque void types
        dtype = None
    shape = None
    if tensor_type.HasField("shape"):
        shape = tuple(
            d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim
        )
    type_name = f"tensor({onnx.TensorProto.DataType.Name(elem).lower()})"
    return InputSpec(value.name, dtype, shape, required, type_name)


def format_shape(shape, bindings: dict | None = None) -> str:
    """(batch, 784) style; a symbolic dim shows its value once known: (batch=2, 784)."""
    if shape is None:
        return "(unknown shape)"
    dims = []
    for dim in shape:
        if dim is None:
            dims.append("?")
        elif isinstance(dim, str):
            dims.append(f"{dim}={bindings[dim]}" if bindings and dim in bindings else dim)
        else:
            dims.append(str(dim))
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def dtype_name(dtype) -> str:
    if dtype is None:
        return "?"
    dtype = np.dtype(dtype)
    return "string" if dtype.kind == "U" else str(dtype)


# ---------------------------------------------------------------- reading files

def read_input_file(path, name: str, dtype=None, spec: InputSpec | None = None) -> np.ndarray:
    """The array in path for input `name`; dtype is the model's, used to convert .json numbers.

    With the model's InputSpec, a .npy/.npz header whose rank or fixed dims do not fit is refused
    before any data is read or inflated (a small .npz can inflate to gigabytes).
    """
    path = Path(path)
    if dtype is None and spec is not None:
        dtype = spec.dtype
    _check_regular_file(path, name)
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return _read_npy(path, name, spec)
        if suffix == ".npz":
            return _read_npz(path, name, spec)
        if suffix == ".json":
            return _read_json(path, name, dtype)
    except OSError as exc:
        raise InputError(f"input {name!r}: cannot read {path}: {exc.strerror or exc}") from None
    raise InputError(f"input {name!r}: {path}: unsupported file type {suffix or '(none)'!r}; use .npy, .npz or .json")


def _check_regular_file(path: Path, name: str) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"input {name!r}: file not found: {path}") from None
    except OSError as exc:
        raise InputError(f"input {name!r}: cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"input {name!r}: {path} is not a regular file")


def _read_npy_header(stream, size: int, what: str, name: str, spec: InputSpec | None = None):
    """(shape, fortran, dtype) after checking dims, dtype, the model's rank and fixed dims (spec),
    and that `size` bytes hold the data."""
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            shape, fortran, dtype = np.lib.format._read_array_header(stream, version)
    except (ValueError, EOFError, SyntaxError, TypeError, AttributeError, OverflowError, MemoryError) as exc:
        raise InputError(f"input {name!r}: {what} is not a valid .npy array ({exc})") from None
    # numpy accepts True and negative numbers as dims; neither describes an array.
    if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
        raise InputError(
            f"input {name!r}: {what} is not a valid .npy array (its header's shape {shape!r} "
            "is not a tuple of non-negative integers)"
        )
    if dtype.hasobject:
        raise InputError(f"input {name!r}: {what} holds a Python object array, refused (loading it would unpickle)")
    if spec is not None:
        # A zero-strided stand-in of the header's shape: the feed checks run before any data exists.
        _check_shape(spec, np.broadcast_to(np.zeros((), dtype), shape), {}, {})
    needed = math.prod(shape) * dtype.itemsize
    available = size - stream.tell()
    if needed > available:
        raise InputError(
            f"input {name!r}: {what} is truncated: its header claims shape {tuple(shape)} {dtype} "
            f"({needed} bytes) but only {available} bytes of data follow"
        )
    return shape, fortran, dtype


def _read_npy(path: Path, name: str, spec: InputSpec | None = None) -> np.ndarray:
    with open(path, "rb") as stream:  # checked and read through one descriptor
        _read_npy_header(stream, os.fstat(stream.fileno()).st_size, str(path), name, spec)
        stream.seek(0)
        try:
            return np.lib.format.read_array(stream, allow_pickle=False)
        except (ValueError, EOFError) as exc:
            raise InputError(f"input {name!r}: {path} is not a valid .npy array ({exc})") from None


def _read_npz(path: Path, name: str, spec: InputSpec | None = None) -> np.ndarray:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, ValueError) as exc:
        raise InputError(f"input {name!r}: {path} is not a valid .npz archive ({exc})") from None
    with archive:
        members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
        if name in members:
            member = members[name]
        elif len(members) == 1:
            member = next(iter(members.values()))
        else:
            raise InputError(
                f"input {name!r}: {path} has no array named {name!r} "
                f"(it holds {', '.join(sorted(members)) or 'nothing'}); name one with NAME=FILE per array"
            )
        what = f"{path}[{member.filename}]"
        try:
            # member.file_size is the size the zip directory declares; the header must fit the model's
            # input and its data fit that size before a byte of data is inflated.
            with archive.open(member) as stream:
                _read_npy_header(stream, member.file_size, what, name, spec)
            with archive.open(member) as stream:
                return np.lib.format.read_array(stream, allow_pickle=False)
        except InputError:
            raise  # already says what is wrong (InputError is a ValueError too)
        except (ValueError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
            raise InputError(f"input {name!r}: {what} cannot be read ({exc})") from None


def _reject_constant(token: str):
    raise ValueError(f"{token} is not allowed")


def _read_json(path: Path, name: str, dtype) -> np.ndarray:
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise InputError(f"input {name!r}: {path} is not valid numeric JSON ({exc})") from None
    try:
        return json_to_array(data, dtype)
    except (ValueError, OverflowError) as exc:
        raise InputError(f"input {name!r}: {path}: {exc}") from None


def json_to_array(data, dtype=None) -> np.ndarray:
    """Nested lists of numbers -> array of dtype; refuses ragged lists, strings, out-of-range values."""
    shape, leaves = _json_shape(data), []
    _json_leaves(data, leaves)
    target = np.dtype(dtype) if dtype is not None else None
    if target is None:
        target = np.dtype(np.float64 if any(isinstance(v, float) for v in leaves) else np.int64)
    if target.kind == "b":
        if not all(isinstance(v, bool) for v in leaves):
            raise ValueError("expected true/false values for a bool input")
        return np.array(leaves, dtype=np.bool_).reshape(shape)
    if any(isinstance(v, bool) for v in leaves):
        raise ValueError(f"true/false given where {target} numbers are expected")
    if target.kind in "iu":
        info = np.iinfo(target)
        for v in leaves:
            if isinstance(v, float) and not v.is_integer():
                raise ValueError(f"{v} is not an integer, as {target} needs")
            if not info.min <= v <= info.max:
                raise ValueError(f"{v} is out of range for {target}")
        return np.array([int(v) for v in leaves], dtype=target).reshape(shape)
    if target.kind == "f":
        with np.errstate(over="ignore"):
            array = np.array([float(v) for v in leaves], dtype=np.float64).astype(target)
        if not np.isfinite(array).all():
            raise ValueError(f"a value is too large for {target}")
        return array.reshape(shape)
    raise ValueError(f"JSON input cannot produce {dtype_name(target)} values")


def _json_shape(data) -> tuple:
    shape = []
    while isinstance(data, list):
        shape.append(len(data))
        if not data:
            break
        data = data[0]
    return tuple(shape)


def _json_leaves(data, leaves: list, depth: int = 0, expected: tuple | None = None) -> None:
    expected = _json_shape(data) if expected is None else expected
    if isinstance(data, list):
        if depth >= len(expected) or len(data) != expected[depth]:
            raise ValueError("ragged nested lists: every row must have the same length")
        for item in data:
            _json_leaves(item, leaves, depth + 1, expected)
        return
    if depth != len(expected):
        raise ValueError("ragged nested lists: every row must have the same depth")
    if isinstance(data, (int, float)):  # bool is an int too; json_to_array sorts them out
        if isinstance(data, float) and not math.isfinite(data):
            raise ValueError("NaN and Infinity are not allowed")
        leaves.append(data)
        return
    raise ValueError(f"expected numbers, found {type(data).__name__} {json.dumps(data)[:40]}")


# ---------------------------------------------------------------- checking feeds

def check_feeds(session_or_model_inputs, feeds: dict, cast: bool = False) -> dict:
    """Validate feeds against the model's inputs; returns the feeds, cast if cast=True.

    Checks: every name is an input; every required input is given; dtype
    (cast=True converts, refusing value-changing integer casts and float
    overflow); rank; each fixed dim; one value per symbolic dim across inputs.
    """
    specs = {spec.name: spec for spec in input_specs(session_or_model_inputs)}
    for feed_name in feeds:
        if feed_name not in specs:
            valid = ", ".join(repr(n) for n in specs) or "none"
            raise InputError(f"unknown input {feed_name!r}; the model's inputs are: {valid}")
    missing = [n for n, spec in specs.items() if spec.required and n not in feeds]
    if missing:
        raise InputError(
            "missing required input" + ("s " if len(missing) > 1 else " ")
            + ", ".join(f"{n!r} {format_shape(specs[n].shape)} {dtype_name(specs[n].dtype)}" for n in missing)
        )
    bindings: dict[str, int] = {}
    bound_by: dict[str, str] = {}
    checked = {}
    for feed_name, value in feeds.items():
        spec = specs[feed_name]
        array = np.asarray(value)
        array = _check_dtype(spec, array, cast)
        _check_shape(spec, array, bindings, bound_by)
        checked[feed_name] = array
    return checked


def _mismatch(spec: InputSpec, array: np.ndarray, detail: str, bindings=None) -> InputError:
    expected = f"{format_shape(spec.shape, bindings)} {dtype_name(spec.dtype)}"
    given = f"{format_shape(array.shape)} {dtype_name(array.dtype)}"
    return InputError(f"input {spec.name!r}: expected shape {expected}, got {given}: {detail}")


def _check_dtype(spec: InputSpec, array: np.ndarray, cast: bool) -> np.ndarray:
    if spec.dtype is None:
        raise InputError(f"input {spec.name!r} has type {spec.type_name or 'unknown'}, which the runner cannot feed")
    if array.dtype.hasobject:
        raise _mismatch(spec, array, "Python object arrays are not accepted")
    if array.dtype == spec.dtype or (spec.dtype.kind == "U" and array.dtype.kind == "U"):
        return array
    if not cast:
        raise _mismatch(spec, array, f"dtype {dtype_name(array.dtype)} is not {dtype_name(spec.dtype)} (convert the array, or pass --cast to the graphc runner)")
    return _cast(spec, array)


def _cast(spec: InputSpec, array: np.ndarray) -> np.ndarray:
    """Cast for --cast: floats may lose precision but not overflow; integers and bools must keep every value."""
    target = spec.dtype
    if array.dtype.kind not in "biuf" or target.kind not in "biuf":
        raise _mismatch(spec, array, f"cannot cast {dtype_name(array.dtype)} to {dtype_name(target)}")
    with np.errstate(over="ignore", invalid="ignore"):
        converted = array.astype(target)
        if target.kind == "f":
            lost = np.isfinite(array) & ~np.isfinite(converted) if array.dtype.kind == "f" else ~np.isfinite(converted)
            if np.any(lost):
                raise _mismatch(spec, array, f"values overflow {dtype_name(target)} when cast")
        elif np.any(converted.astype(array.dtype) != array) or (array.dtype.kind == "f" and not np.isfinite(array).all()):
            raise _mismatch(spec, array, f"values change when cast to {dtype_name(target)}")
    return converted


def _check_shape(spec: InputSpec, array: np.ndarray, bindings: dict, bound_by: dict) -> None:
    if spec.shape is None:
        return
    if array.ndim != len(spec.shape):
        raise _mismatch(spec, array, f"rank {array.ndim} is not {len(spec.shape)}", bindings)
    for axis, (want, got) in enumerate(zip(spec.shape, array.shape)):
        if isinstance(want, int) and want != got:
            raise _mismatch(spec, array, f"dim {axis} is {got}, expected {want}", bindings)
        if isinstance(want, str):
            if want in bindings and bindings[want] != got:
                raise _mismatch(
                    spec, array,
                    f"dim {axis} ({want!r}) is {got}, but {want!r} is {bindings[want]} in input {bound_by[want]!r}",
                    bindings,
                )
            bindings.setdefault(want, got)
            bound_by.setdefault(want, spec.name)
