"""Errors of the front end, and where in the user's code they happened."""

from __future__ import annotations

import os
import sys

_PACKAGE_ROOTS = tuple(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep + name + os.sep
    for name in ("graphc", "passes", "runtime")
)


class GraphcError(Exception):
    """Base class of graphc's own errors."""


class ShapeError(GraphcError, ValueError):
    """A shape or dtype that an op cannot accept, found at build time."""


def user_location() -> str:
    """``file:line`` of the innermost stack frame outside graphc's own packages."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not filename.startswith(_PACKAGE_ROOTS) and "importlib" not in filename:
            return f"{frame.f_code.co_filename}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>"


def shape_error(op: str, message: str) -> ShapeError:
    """A build-time error that names the op and the user's file and line."""
    return ShapeError(f"{op}: {message} (at {user_location()})")
