"""Checkpoints: named arrays plus a JSON manifest, in one zip file, written atomically, verified on load.

Format (version 2): a zip archive holding ``manifest.json`` and one ``.npy``
entry per array (so ``numpy.load(path, allow_pickle=False)`` also reads the
arrays). The manifest records the format version, each array's dtype, shape
and SHA-256, free-form JSON metadata (step, RNG and data position) and the
SHA-256 of that metadata (``metadata_sha256``, over its canonical JSON).
Version 1 (no metadata checksum) is still read; its metadata goes through the
same validation, it just cannot be told apart from a hand-edited one.
Nothing is ever unpickled: object arrays are refused on save and on load.

Writing goes through ``runtime.atomic.atomic_write`` (temporary file, fsync,
rename, folder fsync), so a crash at any moment leaves either the old or the
new checkpoint, never a mix.

Reading is ordered so that a hostile file costs little: the manifest (size
capped) is parsed and checked, names, dtypes and shapes are compared with
what the caller ``expected``, and each member's uncompressed size in the zip
directory is compared with what its shape needs, all before any array member
is decompressed. zipfile never inflates a member past the directory's size.
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

from runtime.atomic import atomic_write

FORMAT = "graphc-checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 16 << 20
MAX_NPY_HEADER = 1 << 16  # numpy writes a version 1.0 header (< 64 KiB) for any array it can describe
_READ_CHUNK = 16 << 20

# What a broken file can make the zip, JSON and npy readers raise; all become CheckpointError.
_READ_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, KeyError, TypeError, ValueError, OSError,
                EOFError, RecursionError, NotImplementedError, OverflowError, AttributeError, IndexError)


class CheckpointError(Exception):
    """A checkpoint cannot be written or does not verify; the message says what is wrong."""


def _sha256(array: np.ndarray) -> str:
    return hashlib.sha256(array.tobytes(order="C")).hexdigest()  # tobytes keeps 0-d arrays 0-d


def _metadata_digest(metadata: Mapping) -> str:
    return hashlib.sha256(json.dumps(metadata, sort_keys=True).encode()).hexdigest()


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
    metadata = dict(metadata or {})
    try:
        manifest = {"format": FORMAT, "version": VERSION, "arrays": entries, "metadata": metadata,
                    "metadata_sha256": _metadata_digest(metadata)}
        manifest_bytes = json.dumps(manifest, sort_keys=True).encode()
    except (TypeError, ValueError) as exc:
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

    try:
        atomic_write(path, write, prefix=".ckpt-")
    except OSError as exc:  # refused target (device, FIFO, symlink), permissions, full disk
        raise CheckpointError(f"cannot write checkpoint {path!r}: {exc}") from None


def load_checkpoint(path, expected: Mapping[str, tuple] | None = None,
                    optional: Mapping[str, tuple] | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Read and fully verify a checkpoint; returns (arrays, metadata) or raises CheckpointError.

    ``expected`` ({name: (dtype, shape)}) is what the caller will accept: the names, dtypes and shapes
    are compared with the manifest before any array is read, so a checkpoint of another model (or a
    crafted one) is refused without decompressing anything. ``optional`` (same form) names arrays the
    file may hold or not (a frozen parameter's optimizer slots); those it holds are checked alike.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist or is not a file")
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = _read_manifest(path, archive)
            entries = _check_entries(path, manifest["arrays"])
            if expected is not None:
                _compare_expected(path, entries, expected, optional or {})
            sizes = {name: _check_member_size(path, archive, name, entry) for name, entry in entries.items()}
            arrays = {name: _read_member(path, archive, name, entry, sizes[name]) for name, entry in entries.items()}
    except CheckpointError:
        raise
    except _READ_ERRORS as exc:
        raise CheckpointError(f"checkpoint {path!r} is truncated or corrupted: {type(exc).__name__}: {exc}") \
            from None
    return arrays, manifest["metadata"]


def _read_manifest(path: str, archive: zipfile.ZipFile) -> dict:
    try:
        info = archive.getinfo(MANIFEST)
    except KeyError:
        raise CheckpointError(f"checkpoint {path!r} is not a graphc checkpoint (no {MANIFEST})") from None
    if info.file_size > MAX_MANIFEST_BYTES:
        raise CheckpointError(f"checkpoint {path!r}: manifest is implausibly large ({info.file_size} bytes, "
                              f"at most {MAX_MANIFEST_BYTES})")
    manifest = json.loads(archive.read(MANIFEST))
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path!r} is not a graphc checkpoint")
    version = manifest.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version not in READABLE_VERSIONS:
        raise CheckpointError(f"checkpoint {path!r} has format version {version!r}; this graphc reads versions "
                              f"{list(READABLE_VERSIONS)} (a newer one needs a newer graphc)")
    if not isinstance(manifest.get("arrays"), dict) or not isinstance(manifest.get("metadata"), dict):
        raise CheckpointError(f"checkpoint {path!r}: malformed manifest ('arrays' and 'metadata' must be objects)")
    if version >= 2 and manifest.get("metadata_sha256") != _metadata_digest(manifest["metadata"]):
        raise CheckpointError(f"checkpoint {path!r}: the metadata fails its checksum (corrupted or edited)")
    return manifest


def _check_entries(path: str, arrays: dict) -> dict[str, tuple[np.dtype, tuple, str, str]]:
    """{name: (dtype, shape, member, sha256)} from the manifest, every field type-checked."""
    entries = {}
    for name, entry in arrays.items():
        where = f"checkpoint {path!r}: manifest entry for {name!r}"
        if not isinstance(entry, dict):
            raise CheckpointError(f"{where} is {type(entry).__name__}, expected an object")
        member, descr, shape, digest = (entry.get(k) for k in ("file", "dtype", "shape", "sha256"))
        if not isinstance(member, str) or not isinstance(descr, str) or not isinstance(digest, str):
            raise CheckpointError(f"{where}: 'file', 'dtype' and 'sha256' must be strings, got "
                                  f"{member!r:.80}, {descr!r:.80}, {digest!r:.80}")
        if not isinstance(shape, list) or len(shape) > 64 or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise CheckpointError(f"{where}: 'shape' must be a list of at most 64 integers >= 0, got {shape!r:.200}")
        dtype = np.dtype(descr)
        if dtype.hasobject or dtype.str != descr:
            raise CheckpointError(f"{where}: dtype {descr!r} is not a plain array dtype")
        entries[name] = (dtype, tuple(shape), member, digest)
    return entries


def _compare_expected(path: str, entries: dict, expected: Mapping[str, tuple], optional: Mapping[str, tuple]) -> None:
    missing = sorted(set(expected) - set(entries))
    unexpected = sorted(set(entries) - set(expected) - set(optional))
    if missing or unexpected:
        raise CheckpointError(f"checkpoint {path!r} does not fit: missing {missing}, unexpected {unexpected}")
    present = {name: optional[name] for name in entries if name in optional and name not in expected}
    for name, (dtype, shape) in {**expected, **present}.items():
        saved_dtype, saved_shape = entries[name][:2]
        if saved_dtype != np.dtype(dtype) or saved_shape != tuple(shape):
            raise CheckpointError(f"checkpoint {path!r}: {name!r} is {saved_dtype} {saved_shape}, expected "
                                  f"{np.dtype(dtype)} {tuple(shape)}")


def _check_member_size(path: str, archive: zipfile.ZipFile, name: str, entry: tuple) -> int:
    """The array's byte count, once the zip directory's uncompressed size is shown to fit it (nothing read)."""
    dtype, shape, member, _ = entry
    nbytes = dtype.itemsize * math.prod(shape)
    try:
        info = archive.getinfo(member)
    except KeyError:
        raise CheckpointError(f"checkpoint {path!r}: array {name!r} has no member {member!r:.80}") from None
    if not 0 < info.file_size - nbytes <= MAX_NPY_HEADER:
        raise CheckpointError(f"checkpoint {path!r}: member {member!r} of array {name!r} is {info.file_size} bytes "
                              f"uncompressed; {dtype} {shape} needs {nbytes} bytes plus a header of at most "
                              f"{MAX_NPY_HEADER}")
    return nbytes


def _read_member(path: str, archive: zipfile.ZipFile, name: str, entry: tuple, nbytes: int) -> np.ndarray:
    dtype, shape, member, digest = entry
    with archive.open(member) as stream:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            header = np.lib.format.read_array_header_2_0(stream)
        else:
            raise CheckpointError(f"checkpoint {path!r}: array {name!r} has an unsupported .npy version {version}")
        got_shape, fortran, got_dtype = header
        if got_dtype != dtype or tuple(got_shape) != shape or fortran:
            raise CheckpointError(f"checkpoint {path!r}: array {name!r} is {got_dtype} {tuple(got_shape)}"
                                  f"{' (Fortran order)' if fortran else ''}, the manifest says {dtype} {shape}")
        if stream.tell() + nbytes != archive.getinfo(member).file_size:
            raise CheckpointError(f"checkpoint {path!r}: member {member!r} of array {name!r} has trailing or "
                                  f"missing bytes")
        array = np.empty(shape, dtype)
        view = memoryview(array.reshape(-1).view(np.uint8)) if nbytes else memoryview(b"")
        done = 0
        while done < nbytes:  # chunked, so the array is the only full-size copy in memory
            chunk = stream.read(min(_READ_CHUNK, nbytes - done))
            if not chunk:
                raise CheckpointError(f"checkpoint {path!r}: array {name!r} is truncated")
            view[done:done + len(chunk)] = chunk
            done += len(chunk)
    if _sha256(array) != digest:
        raise CheckpointError(f"checkpoint {path!r}: array {name!r} fails its checksum (corrupted)")
    return array


# ---- the Trainer's metadata ------------------------------------------------------------
def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_training_metadata(path, metadata: Mapping) -> dict:
    """The Trainer's checkpoint metadata, every field type- and range-checked; raises CheckpointError.

    Fields: ``steps_done`` and ``skipped_steps`` (integers >= 0), ``lr`` (a finite number >= 0),
    ``seed`` (an integer), ``optimizer`` ({"kind": str, "hparams": {...}}), ``data`` (a loader
    position dict or null) and ``schedulers`` (a list of dicts; absent in version-1 files: none).
    """
    where = f"checkpoint {os.fspath(path)!r}: metadata"

    def fail(key: str, expected: str, value):
        raise CheckpointError(f"{where} {key!r} must be {expected}, got {value!r:.200}")

    for key in ("steps_done", "lr", "seed", "optimizer", "skipped_steps"):
        if key not in metadata:
            raise CheckpointError(f"{where} has no {key!r} (keys: {sorted(metadata)})")
    out = dict(metadata)
    for key in ("steps_done", "skipped_steps"):
        if not _is_int(metadata[key]) or metadata[key] < 0:
            fail(key, "an integer >= 0", metadata[key])
    lr = metadata["lr"]
    if isinstance(lr, bool) or not isinstance(lr, numbers.Real) or not math.isfinite(lr) or lr < 0:
        fail("lr", "a finite number >= 0", lr)
    out["lr"] = float(lr)
    if not _is_int(metadata["seed"]):
        fail("seed", "an integer", metadata["seed"])
    optimizer = metadata["optimizer"]
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("kind"), str) \
            or not isinstance(optimizer.get("hparams"), dict):
        fail("optimizer", "an object with 'kind' (a string) and 'hparams' (an object)", optimizer)
    if metadata.get("data") is not None and not isinstance(metadata["data"], dict):
        fail("data", "an object (a data loader position) or null", metadata["data"])
    out["data"] = metadata.get("data")
    schedulers = metadata.get("schedulers", [])
    if not isinstance(schedulers, list) or not all(isinstance(s, dict) for s in schedulers):
        fail("schedulers", "a list of objects (scheduler states)", schedulers)
    out["schedulers"] = schedulers
    return out


def plain_hparams(hparams: Mapping) -> dict:
    """Optimizer hyperparameters as saved: tuples as lists (JSON), the lr left out (it is state)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in hparams.items() if k != "lr"}


def check_optimizer(path, saved: Mapping, kind: str, hparams: Mapping) -> None:
    """Refuse a checkpoint saved with another optimizer kind or other hyperparameters (betas, momentum, ...)."""
    if saved["kind"] != kind:
        raise CheckpointError(f"checkpoint {os.fspath(path)!r} was saved with optimizer {saved['kind']!r}, this "
                              f"trainer uses {kind!r}")
    current = plain_hparams(hparams)
    missing = object()
    for key in sorted(set(current) | set(saved["hparams"])):
        then, now = saved["hparams"].get(key, missing), current.get(key, missing)
        if then != now:
            raise CheckpointError(
                f"checkpoint {os.fspath(path)!r}: optimizer hyperparameter {key!r} was "
                f"{'absent' if then is missing else repr(then)} when saved, this {kind} optimizer has "
                f"{'none' if now is missing else repr(now)}; build the optimizer with the saved value to resume")
