"""Load any .onnx file safely, and build ONNX Runtime sessions for it.

Why: the runner accepts files from anywhere. A bad file must give one clear
line naming it (not a protobuf traceback), and a model must not be able to
make us read files outside its own folder through external tensor data
(`location: "../../etc/passwd"`, absolute paths, symlinks, hard links,
offsets past the end). External data is read by us, through the very
descriptor that was checked, and handed to ONNX Runtime as bytes: ONNX
Runtime never opens a path named in the model, so a file swapped in after
the check is never read.
"""

from __future__ import annotations

import errno
import math
import os
import re
import stat
from pathlib import Path

import onnx
import onnxruntime as ort
from google.protobuf.message import DecodeError

from runtime.providers import (
    announce_auto_choice,
    capture_native_stderr,
    check_session_providers,
    clean_ort_message,
    resolve_providers,
)

PROTOBUF_LIMIT = 2**31 - 1  # protobuf refuses to parse a message of 2 GiB or more
INT64_MAX = 2**63 - 1
_DEFINED_DATA_TYPES = frozenset(onnx.TensorProto.DataType.values())


class ModelLoadError(Exception):
    """The model file cannot be read, parsed, trusted or loaded by ONNX Runtime (exit code 1)."""


class InvalidModelError(ModelLoadError):
    """The file parses but breaks the ONNX format: a name that is not UTF-8, an element type ONNX
    does not define, a negative or overflowing dim. The runner treats it as bad input (exit code 2)."""


def load_model(path) -> onnx.ModelProto:
    """Parse the model at path (external data not loaded), validate it and vet its external-data references."""
    return _load(Path(path))[0]


def _load(path: Path) -> tuple[onnx.ModelProto, bytes]:
    data = _read_model_bytes(path)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a valid ONNX model (truncated or corrupt protobuf: {exc})") from None
    if not model.HasField("graph"):
        raise ModelLoadError(f"{path}: not a valid ONNX model (it has no graph)")
    validate_model(model, str(path))
    check_external_data(model, path.parent, model_name=str(path))
    return model, data


def _read_model_bytes(path: Path) -> bytes:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ModelLoadError(f"{path}: model file not found") from None
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read model file: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ModelLoadError(f"{path}: is a directory, not an .onnx model file")
    if not stat.S_ISREG(st.st_mode):
        raise ModelLoadError(f"{path}: not a regular file")
    if st.st_size == 0:
        raise ModelLoadError(f"{path}: empty file, not an ONNX model")
    # Checked before reading: protobuf would refuse it anyway, after we had read it all into memory.
    if st.st_size > PROTOBUF_LIMIT:
        raise ModelLoadError(
            f"{path}: {st.st_size} bytes is over the 2 GiB limit of an .onnx (protobuf) file; "
            "large models keep their tensors in external data files"
        )
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read model file: {exc.strerror or exc}") from None


# ---------------------------------------------------------------- walking the model

def _messages(message, where: str):
    """(message, where) for message and every message nested in it, depth first.

    Generic over the schema on purpose: tensors hide in initializers, sparse
    initializers, node and function attributes (and their defaults), subgraphs
    and training_info; a hand-written walk misses the next place one is added.
    """
    yield message, where
    if isinstance(message, onnx.TensorProto):
        return  # a tensor holds no further messages of interest (only its data)
    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        if _repeated(field):
            if field.message_type.GetOptions().map_entry:
                continue
            for i, item in enumerate(value):
                yield from _messages(item, f"{where}.{field.name}[{i}]")
        else:
            yield from _messages(value, f"{where}.{field.name}")


def _repeated(field) -> bool:
    # protobuf 6+ spells it is_repeated; `label` is deprecated and gone in newer releases
    is_repeated = getattr(field, "is_repeated", None)
    return is_repeated if is_repeated is not None else field.label == field.LABEL_REPEATED


def iter_tensors(model: onnx.ModelProto):
    """Every TensorProto in the model: initializers, sparse ones, attributes and their defaults, subgraphs,
    functions, training info."""
    for message, _ in _messages(model, "model"):
        if isinstance(message, onnx.TensorProto):
            yield message


def validate_model(model: onnx.ModelProto, model_name: str = "model") -> None:
    """Refuse what the ONNX format forbids and the tools downstream choke on (InvalidModelError).

    - string fields that are not UTF-8 (protobuf hands them over as bytes; doc strings are not checked);
    - element and data types that ONNX does not define;
    - negative dims, or dims whose product passes int64.
    """
    for message, where in _messages(model, "model"):
        for field, value in message.ListFields():
            if field.type != field.TYPE_STRING or field.name == "doc_string":
                continue
            for text in value if _repeated(field) else (value,):
                if isinstance(text, bytes):
                    raise InvalidModelError(
                        f"{model_name}: {where}.{field.name} {text!r} is not valid UTF-8, as ONNX requires"
                    )
        if isinstance(message, onnx.TypeProto.Tensor | onnx.TypeProto.SparseTensor):
            if message.elem_type not in _DEFINED_DATA_TYPES:
                raise InvalidModelError(
                    f"{model_name}: {where} has elem_type {message.elem_type}, which ONNX does not define "
                    f"(expected one of {min(_DEFINED_DATA_TYPES)}..{max(_DEFINED_DATA_TYPES)})"
                )
        elif isinstance(message, onnx.TensorProto):
            name = f"tensor {message.name!r}" if message.name else where
            if message.data_type not in _DEFINED_DATA_TYPES:
                raise InvalidModelError(
                    f"{model_name}: {name} has data_type {message.data_type}, which ONNX does not define "
                    f"(expected one of {min(_DEFINED_DATA_TYPES)}..{max(_DEFINED_DATA_TYPES)})"
                )
            dims = list(message.dims)
            if any(d < 0 for d in dims) or math.prod(dims) > INT64_MAX:
                raise InvalidModelError(
                    f"{model_name}: {name} has dims {dims}; expected non-negative dims whose product fits in int64"
                )


# ---------------------------------------------------------------- external data

def has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in iter_tensors(model))


def check_external_data(model: onnx.ModelProto, base_dir, model_name: str = "model") -> None:
    """Refuse external-data references that leave base_dir or lie about their extent.

    Rejected: empty, absolute or drive-letter locations; any location that
    leaves base_dir; a symlink at any step below base_dir; a target that is
    not a regular file or has more than one hard link (a link made inside the
    folder to a file outside it); offset/length not within the file.
    """
    read_external_data(model, base_dir, model_name, read=False)


def read_external_data(model: onnx.ModelProto, base_dir, model_name: str = "model", read: bool = True) -> dict:
    """{location: bytes} for every external-data file the model names, after the checks of
    check_external_data; each file is opened once, without following links, checked with fstat
    and read from that same descriptor (bytes up to the end of the last extent used)."""
    base = os.path.realpath(base_dir)
    extents: dict[str, int] = {}  # location -> end of the furthest extent
    handles: dict[str, tuple[int, int]] = {}  # location -> (fd, size)
    try:
        for tensor in iter_tensors(model):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            info = {entry.key: entry.value for entry in tensor.external_data}
            where = f"{model_name}: tensor {tensor.name!r} external data"
            location = info.get("location", "")
            if location not in handles:
                handles[location] = _open_location(base, location, where)
            size = handles[location][1]
            offset = _parse_extent(info.get("offset", "0"), "offset", where)
            length = _parse_extent(info.get("length"), "length", where) if "length" in info else size - offset
            if offset > size or offset + length > size:
                raise ModelLoadError(
                    f"{where}: offset {offset} + length {length} is past the end of {location!r} ({size} bytes)"
                )
            extents[location] = max(extents.get(location, 0), offset + length)
        if not read:
            return {}
        return {location: _read_exactly(handles[location][0], end, location, model_name)
                for location, end in extents.items()}
    finally:
        for fd, _ in handles.values():
            os.close(fd)


def _open_location(base: str, location: str, where: str) -> tuple[int, int]:
    """(fd, size) of the regular, singly linked file at location below base, opened without following links."""
    if not location:
        raise ModelLoadError(f"{where}: no location given")
    if "\0" in location:
        raise ModelLoadError(f"{where}: location contains a NUL byte")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location):
        raise ModelLoadError(f"{where}: absolute location {location!r} is not allowed (must be relative to the model's folder)")
    seps = "[" + re.escape(os.sep + (os.altsep or "")) + "]"
    parts = []
    for part in re.split(seps, location):
        if part == "..":
            if not parts:
                raise ModelLoadError(f"{where}: location {location!r} points outside the model's folder")
            parts.pop()  # lexical: sound because no component may be a symlink (enforced below)
        elif part not in ("", "."):
            parts.append(part)
    if not parts:
        raise ModelLoadError(f"{where}: location {location!r} is not a regular file")
    # One component at a time, each opened relative to its parent and never through a symlink,
    # so nothing can be swapped in between checking a path and opening it.
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(base, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | nofollow | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
            if not last:
                flags |= getattr(os, "O_DIRECTORY", 0)
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                raise _open_error(exc, fd, part, last, location, where) from None
            os.close(fd)
            fd = child
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelLoadError(f"{where}: location {location!r} is not a regular file")
        if st.st_nlink > 1:
            raise ModelLoadError(
                f"{where}: location {location!r} has {st.st_nlink} hard links; expected 1 "
                "(a hard link can bring a file from outside the model's folder)"
            )
        result, fd = (fd, st.st_size), -1
        return result
    finally:
        if fd >= 0:
            os.close(fd)


def _open_error(exc: OSError, parent_fd: int, part: str, last: bool, location: str, where: str) -> ModelLoadError:
    try:
        st = os.stat(part, dir_fd=parent_fd, follow_symlinks=False)
    except OSError:
        return ModelLoadError(f"{where}: file {location!r} not found next to the model")
    if stat.S_ISLNK(st.st_mode):
        return ModelLoadError(f"{where}: location {location!r} goes through a symlink, which is not allowed")
    if not last and exc.errno == errno.ENOTDIR:
        return ModelLoadError(f"{where}: location {location!r} is not a regular file")
    return ModelLoadError(f"{where}: cannot open {location!r}: {exc.strerror or exc}")


def _read_exactly(fd: int, size: int, location: str, model_name: str) -> bytes:
    buffer = bytearray(size)
    view, done = memoryview(buffer), 0
    while done < size:
        n = os.preadv(fd, [view[done:]], done) if hasattr(os, "preadv") else os.readv(fd, [view[done:]])
        if n == 0:
            raise ModelLoadError(f"{model_name}: external data file {location!r} shrank while being read")
        done += n
    return bytes(buffer)


def _parse_extent(text, what: str, where: str) -> int:
    if not isinstance(text, str) or not re.fullmatch(r"[0-9]{1,19}", text):
        raise ModelLoadError(f"{where}: {what} {text!r} is not a non-negative integer")
    return int(text)


# ---------------------------------------------------------------- sessions

def make_session(path_or_proto, provider: str = "cpu") -> ort.InferenceSession:
    """An InferenceSession on the requested provider ("cpu", "cuda" or "auto").

    Raises ModelLoadError when ONNX Runtime refuses the model (unknown
    operator or domain, unsupported opset or IR version) and ProviderError
    when "cuda" was asked for but does not load. A path is read once; its
    external data is read by read_external_data and given to ONNX Runtime
    from memory (ONNX Runtime copies what it needs while building the session).
    """
    providers = resolve_providers(provider)
    options = ort.SessionOptions()
    if isinstance(path_or_proto, onnx.ModelProto):
        name = f"model {path_or_proto.graph.name!r}" if path_or_proto.graph.name else "model"
        if has_external_data(path_or_proto):
            raise ModelLoadError(f"{name}: has external tensor data; pass the model's file path instead")
        validate_model(path_or_proto, name)
        source = path_or_proto.SerializeToString()
    else:
        name = str(path_or_proto)
        model, source = _load(Path(path_or_proto))
        files = read_external_data(model, Path(path_or_proto).parent, name)
        if files:
            locations = list(files)
            buffers = [files[location] for location in locations]
            options.add_external_initializers_from_files_in_memory(locations, buffers, [len(b) for b in buffers])
    error = None
    with capture_native_stderr() as log:
        try:
            session = ort.InferenceSession(source, options, providers=providers)
        except Exception as exc:  # ORT raises its own pybind classes (Fail, InvalidGraph, ...)
            error = exc
    if error is not None:
        raise ModelLoadError(f"{name}: ONNX Runtime cannot load this model: {clean_ort_message(error)}") from None
    check_session_providers(session, provider, log.text)
    announce_auto_choice(session, provider, log.text)
    return session
