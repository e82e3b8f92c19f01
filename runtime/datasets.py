"""Small real datasets and readers for the common on-disk formats.

Why this module exists: samples and tests need real data that works offline,
and users training MNIST or CIFAR-10 should not need torchvision or
scikit-learn just to read a few binary files. Everything here is plain numpy;
nothing is ever unpickled.

- ``load_digits``: the UCI 8x8 handwritten digits, shipped in
  ``runtime/data/digits.npz`` (attribution in ``runtime/data/DIGITS_LICENSE.txt``).
- ``read_idx`` / ``load_mnist``: the IDX format used by MNIST and Fashion-MNIST.
- ``read_cifar10_batch`` / ``load_cifar10``: the CIFAR-10 "binary version".
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

__all__ = [
    "DatasetError",
    "load_digits",
    "train_test_split",
    "read_idx",
    "load_mnist",
    "read_cifar10_batch",
    "load_cifar10",
]

_DIGITS_PATH = Path(__file__).resolve().parent / "data" / "digits.npz"

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/ (mirror of yann.lecun.com/exdb/mnist/)"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


class DatasetError(ValueError):
    """A dataset file is missing or malformed. The message names the file,
    what was expected and what was found."""


# --------------------------------------------------------------------------
# UCI digits (shipped)


def load_digits(flatten: bool = True, normalize: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Return the 1797 UCI 8x8 digits as ``(X float32, y int64)``.

    ``flatten=True`` gives X of shape (N, 64) for MLPs; otherwise (N, 1, 8, 8)
    (NCHW, what ONNX Conv expects). ``normalize=True`` scales the raw pixel
    counts 0..16 to 0..1.
    """
    if not _DIGITS_PATH.is_file():
        raise DatasetError(f"{_DIGITS_PATH}: the bundled digits file is missing (broken install?)")
    with np.load(_DIGITS_PATH, allow_pickle=False) as f:
        images, labels = f["images"], f["labels"]
    X = images.astype(np.float32)
    if normalize:
        X /= 16.0
    X = X.reshape(len(X), 64) if flatten else X.reshape(len(X), 1, 8, 8)
    return np.ascontiguousarray(X), labels.astype(np.int64)


def train_test_split(X, y, test_fraction: float = 0.2, seed: int = 0):
    """Shuffle deterministically (given ``seed``) and split.

    Returns ``(X_train, X_test, y_train, y_test)``, the same order as
    scikit-learn, so code moves between the two unchanged. The test part has
    ``round(N * test_fraction)`` samples, at least one and leaving at least one
    for training.
    """
    X, y = np.asarray(X), np.asarray(y)
    if len(X) != len(y):
        raise ValueError(f"train_test_split: X has {len(X)} samples but y has {len(y)}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"train_test_split: test_fraction must be in (0, 1), got {test_fraction}")
    n = len(X)
    if n < 2:
        raise ValueError(f"train_test_split: need at least 2 samples, got {n}")
    n_test = min(max(int(round(n * test_fraction)), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    test, train = perm[:n_test], perm[n_test:]
    return X[train], X[test], y[train], y[test]


# --------------------------------------------------------------------------
# IDX (MNIST)

# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path) -> bytes:
    """Read a file, gunzipping it if it starts with the gzip magic. Detecting
    by content rather than by name means a renamed file still reads."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DatasetError(f"{path}: file not found") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as e:
            raise DatasetError(f"{path}: looks gzip-compressed but cannot be decompressed ({e})") from None
    return data


def read_idx(path) -> np.ndarray:
    """Read an IDX file (plain or .gz) into a native-endian numpy array.

    Header: two zero bytes, a type code, the number of dimensions, then one
    big-endian uint32 per dimension; the data follows, big-endian, and must
    fill the file exactly (a short or long file is an error, not a silent
    reshape).
    """
    data = _read_bytes(path)
    if len(data) < 4:
        raise DatasetError(f"{path}: expected a 4-byte IDX magic number, found a {len(data)}-byte file")
    if data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise DatasetError(
            f"{path}: not an IDX file: expected magic 00 00 <type in {known}> <ndim>, "
            f"found {data[:4].hex(' ')}"
        )
    dtype, ndim = _IDX_DTYPES[data[2]], data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: expected a {header}-byte header for {ndim} dimensions, found {len(data)} bytes")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        raise DatasetError(
            f"{path}: expected {expected} bytes for {dtype.name} data of shape {dims}, "
            f"found {len(data)} ({'truncated' if len(data) < expected else 'trailing data'})"
        )
    arr = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return arr.astype(dtype.newbyteorder("="))  # native byte order, writable copy


_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _check_split(split: str, allowed) -> None:
    if split not in allowed:
        raise ValueError(f"split must be one of {sorted(allowed)}, got {split!r}")


def _find(directory: Path, name: str) -> Path | None:
    """The file as distributed: plain, gzipped, or with the '.idx' dot some
    mirrors use (train-images.idx3-ubyte)."""
    dotted = name.replace("-idx", ".idx")
    for candidate in (name, name + ".gz", dotted, dotted + ".gz"):
        if (directory / candidate).is_file():
            return directory / candidate
    return None


def load_mnist(directory, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load MNIST (or anything in the same IDX layout, e.g. Fashion-MNIST).

    Returns ``X`` float32 (N, 1, H, W) scaled to 0..1 and ``y`` int64 (N,).
    """
    _check_split(split, _MNIST_FILES)
    directory = Path(directory)
    paths = []
    for name in _MNIST_FILES[split]:
        p = _find(directory, name)
        if p is None:
            raise DatasetError(
                f"{directory / name}: MNIST file not found (also looked for {name}.gz). "
                f"Download the four files from {MNIST_URL} into {directory}."
            )
        paths.append(p)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DatasetError(f"{paths[0]}: expected uint8 images of shape (N, H, W), found {images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DatasetError(f"{paths[1]}: expected {len(images)} labels (one per image), found shape {labels.shape}")
    X = images.astype(np.float32)[:, None] / np.float32(255.0)
    return np.ascontiguousarray(X), labels.astype(np.int64)


# --------------------------------------------------------------------------
# CIFAR-10 (binary version)

_CIFAR_RECORD = 1 + 3 * 32 * 32  # one label byte, then R, G, B planes of 32x32
_CIFAR_FILES = {
    "train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)),
    "test": ("test_batch.bin",),
}


def read_cifar10_batch(path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 binary batch: records of 1 label byte + 3072 pixel
    bytes (channel-major, so the reshape to (3, 32, 32) is direct).

    Returns ``X`` float32 (N, 3, 32, 32) scaled to 0..1 and ``y`` int64 (N,).
    """
    data = _read_bytes(path)
    if len(data) == 0 or len(data) % _CIFAR_RECORD:
        raise DatasetError(
            f"{path}: expected a non-empty multiple of {_CIFAR_RECORD} bytes "
            f"(1 label + 3072 pixels per record), found {len(data)} bytes"
        )
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    y = records[:, 0].astype(np.int64)
    if y.max() > 9:
        raise DatasetError(f"{path}: expected labels 0..9, found {int(y.max())} (not a CIFAR-10 batch?)")
    X = records[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / np.float32(255.0)
    return X, y


def load_cifar10(directory, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load CIFAR-10 from the extracted binary archive: ``directory`` may be the
    ``cifar-10-batches-bin`` folder itself or the folder that contains it."""
    _check_split(split, _CIFAR_FILES)
    directory = Path(directory)
    if not (directory / _CIFAR_FILES[split][0]).is_file() and (directory / "cifar-10-batches-bin").is_dir():
        directory = directory / "cifar-10-batches-bin"
    parts = []
    for name in _CIFAR_FILES[split]:
        path = directory / name
        if not path.is_file():
            raise DatasetError(
                f"{path}: CIFAR-10 file not found. Download {CIFAR10_URL} "
                f"and extract it (tar xzf) into {directory}."
            )
        parts.append(read_cifar10_batch(path))
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
