"""Atomic file replacement: a crash mid-write leaves the previous file, never a truncated one.

The target is replaced by ``rename``, so only regular files may be replaced:
renaming over ``/dev/null`` (as root) or a FIFO would swap the device node for
a plain file, and renaming over a symlink replaces the link itself rather than
the file it names. Such targets are refused before anything is written.

The new file gets the mode a plain ``open(path, "w")`` would give it: that of
the file it replaces, or ``0o666`` less the umask for a new one (a temporary
file starts at 0600, which would otherwise leak onto every saved model).
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Callable
from typing import IO


class UnsafeTargetError(OSError):
    """The path exists and is not a regular file, so replacing it atomically would destroy something else."""


_KINDS = [(stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket")]


def _kind(mode: int) -> str:
    for test, name in _KINDS:
        if test(mode):
            return name
    return "not a regular file"


def check_output_file(path, error, what: str, example: str) -> "Path":
    """``path`` as a ``Path`` if a model may be written there, else ``error("<what>: why")``.

    Refused early, before any work: a folder, a missing parent folder, an existing target that is
    not a regular file (see ``check_replaceable``). ``example`` is the file name suggested in a folder.
    """
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        raise error(f"{what}: {str(path)!r} is a folder; expected a file path such as {str(path / example)!r}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise error(f"{what}: the output folder {str(parent)!r} does not exist")
    try:
        check_replaceable(path)
    except OSError as exc:
        raise error(f"{what}: {exc}") from None
    return path


def check_replaceable(path) -> os.stat_result | None:
    """The ``lstat`` of ``path`` if it is a regular file, ``None`` if nothing is there; else raise.

    Symbolic links are refused even when they name a regular file: following
    one would write wherever it points, replacing it would silently turn the
    user's link into a copy.
    """
    path = os.fspath(path)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        hint = f" (pass the path it points to, {os.path.realpath(path)!r})" if stat.S_ISLNK(info.st_mode) else ""
        raise UnsafeTargetError(f"refusing to write {path!r}: it is {_kind(info.st_mode)}, expected a regular file "
                                f"or a new path{hint}")
    return info


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask can only swap it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, write: Callable[[IO[bytes]], None], prefix: str = ".tmp-") -> None:
    """Call ``write(file)`` on a unique temporary file next to ``path``, fsync it, rename it over
    ``path`` and fsync the folder.

    Raises ``UnsafeTargetError`` when ``path`` exists and is not a regular file (nothing is
    written) and ``FileNotFoundError`` when the folder does not exist.
    """
    path = os.fspath(path)
    existing = check_replaceable(path)
    mode = stat.S_IMODE(existing.st_mode) if existing is not None else 0o666 & ~_umask()
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        check_replaceable(path)  # narrows the window in which something else can appear there
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


def _initializers(graph):
    """Every initializer of ``graph`` and of its subgraphs (If/Loop/Scan bodies)."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                yield from _initializers(sub)


def atomic_save_external(model, path, size_threshold: int = 1024) -> None:
    """Write an ONNX ``ModelProto`` as ``path`` plus its weights in ``<file name>.data`` beside it.

    Both files are written from scratch, each through ``atomic_write``: the data file first, then the
    model that points into it (``onnx.save_model`` appends to an existing data file, so every save grew
    it). The location is a bare file name, so nothing is written outside the model's folder. Tensors
    of at least ``size_threshold`` bytes go to the data file; ``model`` itself is not changed.
    """
    import onnx  # only this helper needs it

    path = os.fspath(path)
    location = os.path.basename(path) + ".data"
    check_replaceable(path)  # refuse a device/FIFO/link model path before writing the data file
    out = onnx.ModelProto()
    out.CopyFrom(model)
    tensors = [t for t in _initializers(out.graph) if t.HasField("raw_data") and len(t.raw_data) >= size_threshold]

    def write_data(handle) -> None:
        offset = 0
        for tensor in tensors:
            handle.write(tensor.raw_data)
            del tensor.external_data[:]
            for key, value in (("location", location), ("offset", str(offset)), ("length", str(len(tensor.raw_data)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            offset += len(tensor.raw_data)
            tensor.data_location = onnx.TensorProto.EXTERNAL
            tensor.ClearField("raw_data")

    atomic_write(os.path.join(os.path.dirname(path), location), write_data)
    atomic_write(path, lambda handle: handle.write(out.SerializeToString()))
