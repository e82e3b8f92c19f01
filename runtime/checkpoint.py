"""Checkpoints: named arrays plus a JSON manifest, in one zip file, written atomically, verified on load.

Format (version 1): a zip archive holding ``manifest.json`` and one ``.npy``
entry per array (so ``numpy.load(path, allow_pickle=False)`` also reads the
arrays). The manifest records the format version, each array's dtype, shape
and SHA-256, and free-form JSON metadata (step, RNG and data position).
Nothing is ever unpickled: object arrays are refused on save and on load.

Writing goes to a unique temporary file in the target folder, is fsynced,
renamed over the target and the folder fsynced, so a crash at any moment
leaves either the old or the new checkpoint, never a mix.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from collections.abc import Mapping

import numpy as np

from runtime.atomic import atomic_write

FORMAT = "graphc-checkpoint"
VERSION = 1
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20


class CheckpointError(Exception):
    """A checkpoint cannot be written or does not verify; the message says what is wrong."""


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(array.tobytes(order="C")).hexdigest()  # tobytes keeps 0-d arrays 0-d


def save_checkpoint(path, arrays: Mapping[str, np.ndarray], metadata: Mapping | None = None) -> None:
    """Atomically write ``arrays`` and JSON-serialisable ``metadata`` to ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint path {path!r} is a directory; give a file path")
    entries = {}
    for index, (name, value) in enumerate(arrays.items()):
        array = np.asarray(value)
        if array.dtype.hasobject:
            raise CheckpointError(f"checkpoint: array {name!r} has dtype object, which is not saved")
        entries[name] = {"file": f"{index:05d}.npy", "dtype": array.dtype.str, "shape": list(array.shape),
                         "sha256": _sha256(array)}
    manifest = {"format": FORMAT, "version": VERSION, "arrays": entries, "metadata": dict(metadata or {})}
    try:
        manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    except TypeError as exc:
        raise CheckpointError(f"checkpoint metadata is not JSON-serialisable: {exc}") from None
    if not os.path.isdir(folder):
        raise CheckpointError(f"checkpoint folder {folder!r} does not exist")

    def write(handle) -> None:
        with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_STORED) as archive:
            archive.writestr(MANIFEST, manifest_bytes)
            for name, value in arrays.items():
                with archive.open(entries[name]["file"], "w") as member:  # streamed: no second copy in memory
                    np.lib.format.write_array(member, np.require(np.asarray(value), requirements="C"),
                                              allow_pickle=False)

    atomic_write(path, write, prefix=".ckpt-")


def load_checkpoint(path) -> tuple[dict[str, np.ndarray], dict]:
    """Read and fully verify a checkpoint; returns (arrays, metadata) or raises CheckpointError."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist or is not a file")
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo(MANIFEST)
            if info.file_size > MAX_MANIFEST_BYTES:
                raise CheckpointError(f"checkpoint {path!r}: manifest is implausibly large")
            manifest = json.loads(archive.read(MANIFEST))
            _check_manifest(path, manifest)
            arrays = {}
            for name, entry in manifest["arrays"].items():
                data = archive.read(str(entry["file"]))
                array = np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
                if array.dtype.str != entry["dtype"] or list(array.shape) != entry["shape"]:
                    raise CheckpointError(f"checkpoint {path!r}: array {name!r} is {array.dtype} "
                                          f"{array.shape}, the manifest says {entry['dtype']} {entry['shape']}")
                if _sha256(array) != entry["sha256"]:
                    raise CheckpointError(f"checkpoint {path!r}: array {name!r} fails its checksum (corrupted)")
                arrays[name] = array
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, KeyError, TypeError, ValueError, OSError, EOFError) as exc:
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupted: {exc}") from None
    return arrays, manifest["metadata"]


def _check_manifest(path: str, manifest) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path!r} is not a graphc checkpoint")
    version = manifest.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"checkpoint {path!r} has format version {version!r}; this graphc reads up to "
                              f"version {VERSION} (upgrade graphc)")
    if not isinstance(manifest.get("arrays"), dict) or not isinstance(manifest.get("metadata"), dict):
        raise CheckpointError(f"checkpoint {path!r}: malformed manifest")
