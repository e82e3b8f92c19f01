"""Dtype names accepted by the builder and their ONNX / numpy forms."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

_ALIASES = {"float": "float32", "double": "float64", "half": "float16", "long": "int64", "int": "int32"}


def to_numpy_dtype(dtype) -> np.dtype:
    """Accept "float32", np.float32, np.dtype or an ``ir.DataType``; return a numpy dtype."""
    if isinstance(dtype, ir.DataType):
        return np.dtype(dtype.numpy())
    if isinstance(dtype, str):
        dtype = _ALIASES.get(dtype, dtype)
    try:
        return np.dtype(dtype)
    except TypeError as exc:
        raise TypeError(f"unknown dtype {dtype!r}; use a numpy name such as 'float32' or 'int64'") from exc


def to_ir_dtype(dtype) -> ir.DataType:
    return ir.DataType.from_numpy(to_numpy_dtype(dtype))


def is_floating(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.floating)
