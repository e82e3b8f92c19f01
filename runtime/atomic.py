"""Atomic file replacement: a crash mid-write leaves the previous file, never a truncated one."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import IO


def atomic_write(path, write: Callable[[IO[bytes]], None], prefix: str = ".tmp-") -> None:
    """Call ``write(file)`` on a unique temporary file next to ``path``, fsync it, rename it over
    ``path`` and fsync the folder. Raises ``FileNotFoundError`` when the folder does not exist."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
