"""Load any .onnx file safely, and build ONNX Runtime sessions for it.

Why: the runner accepts files from anywhere. A bad file must give one clear
line naming it (not a protobuf traceback), and a model must not be able to
make us read files outside its own folder through external tensor data
(`location: "../../etc/passwd"`, absolute paths, symlinks, offsets past the
end). Every external location is checked before anything opens it.
"""

from __future__ import annotations

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


class ModelLoadError(Exception):
    """The model file cannot be read, parsed, trusted or loaded by ONNX Runtime."""


def load_model(path) -> onnx.ModelProto:
    """Parse the model at path (external data not loaded) and vet its external-data references."""
    path = Path(path)
    data = _read_model_bytes(path)
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelLoadError(f"{path}: not a valid ONNX model (truncated or corrupt protobuf: {exc})") from None
    if not model.HasField("graph"):
        raise ModelLoadError(f"{path}: not a valid ONNX model (it has no graph)")
    check_external_data(model, path.parent, model_name=str(path))
    return model


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
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"{path}: cannot read model file: {exc.strerror or exc}") from None


# ---------------------------------------------------------------- external data

def iter_tensors(model: onnx.ModelProto):
    """Every TensorProto in the model: initializers, sparse ones, attributes, subgraphs, functions."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node)


def _graph_tensors(graph: onnx.GraphProto):
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto):
    for attr in node.attribute:
        if attr.HasField("t"):
            yield attr.t
        yield from attr.tensors
        if attr.HasField("sparse_tensor"):
            yield attr.sparse_tensor.values
            yield attr.sparse_tensor.indices
        for sparse in attr.sparse_tensors:
            yield sparse.values
            yield sparse.indices
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for graph in attr.graphs:
            yield from _graph_tensors(graph)


def has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in iter_tensors(model))


def check_external_data(model: onnx.ModelProto, base_dir, model_name: str = "model") -> None:
    """Refuse external-data references that leave base_dir or lie about their extent.

    Rejected: empty, absolute or drive-letter locations; any location whose
    resolved path is outside base_dir; a symlink at any step below base_dir;
    a target that is not a regular file; offset/length not within the file.
    Only lstat() is used here: nothing is opened.
    """
    base = Path(os.path.realpath(base_dir))
    for tensor in iter_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        where = f"{model_name}: tensor {tensor.name!r} external data"
        location = info.get("location", "")
        target = _safe_location(base, location, where)
        size = target.lstat().st_size
        offset = _parse_extent(info.get("offset", "0"), "offset", where)
        length = _parse_extent(info.get("length"), "length", where) if "length" in info else size - offset
        if offset > size or offset + length > size:
            raise ModelLoadError(
                f"{where}: offset {offset} + length {length} is past the end of {location!r} ({size} bytes)"
            )


def _safe_location(base: Path, location: str, where: str) -> Path:
    if not location:
        raise ModelLoadError(f"{where}: no location given")
    if "\0" in location:
        raise ModelLoadError(f"{where}: location contains a NUL byte")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", location):
        raise ModelLoadError(f"{where}: absolute location {location!r} is not allowed (must be relative to the model's folder)")
    seps = "[" + re.escape(os.sep + (os.altsep or "")) + "]"
    parts = [p for p in re.split(seps, location) if p not in ("", ".")]
    # Walk one component at a time: never above base, never through a symlink.
    current = base
    for part in parts:
        current = Path(os.path.normpath(current / part))
        if current != base and base not in current.parents:
            raise ModelLoadError(f"{where}: location {location!r} points outside the model's folder")
        if part == "..":
            continue
        try:
            st = current.lstat()
        except OSError:
            raise ModelLoadError(f"{where}: file {location!r} not found next to the model") from None
        if stat.S_ISLNK(st.st_mode):
            raise ModelLoadError(f"{where}: location {location!r} goes through a symlink, which is not allowed")
    resolved = current
    if not stat.S_ISREG(resolved.lstat().st_mode):
        raise ModelLoadError(f"{where}: location {location!r} is not a regular file")
    return resolved


def _parse_extent(text, what: str, where: str) -> int:
    if not isinstance(text, str) or not re.fullmatch(r"[0-9]{1,19}", text):
        raise ModelLoadError(f"{where}: {what} {text!r} is not a non-negative integer")
    return int(text)


# ---------------------------------------------------------------- sessions

def make_session(path_or_proto, provider: str = "cpu") -> ort.InferenceSession:
    """An InferenceSession on the requested provider ("cpu", "cuda" or "auto").

    Raises ModelLoadError when ONNX Runtime refuses the model (unknown
    operator or domain, unsupported opset or IR version) and ProviderError
    when "cuda" was asked for but does not load.
    """
    providers = resolve_providers(provider)
    if isinstance(path_or_proto, onnx.ModelProto):
        name = f"model {path_or_proto.graph.name!r}" if path_or_proto.graph.name else "model"
        if has_external_data(path_or_proto):
            raise ModelLoadError(f"{name}: has external tensor data; pass the model's file path instead")
        source = path_or_proto.SerializeToString()
    else:
        name = str(path_or_proto)
        load_model(path_or_proto)  # vets bytes and external data before ORT touches anything
        source = str(path_or_proto)  # ORT resolves external data next to the file
    error = None
    with capture_native_stderr() as log:
        try:
            session = ort.InferenceSession(source, providers=providers)
        except Exception as exc:  # ORT raises its own pybind classes (Fail, InvalidGraph, ...)
            error = exc
    if error is not None:
        raise ModelLoadError(f"{name}: ONNX Runtime cannot load this model: {clean_ort_message(error)}") from None
    check_session_providers(session, provider, log.text)
    announce_auto_choice(session, provider, log.text)
    return session

