"""Tests for runtime.datasets: the shipped digits, the split, IDX and CIFAR-10 readers."""

import gzip
import struct

import numpy as np
import pytest

from runtime.datasets import (
    DatasetError,
    load_cifar10,
    load_digits,
    load_mnist,
    read_cifar10_batch,
    read_idx,
    train_test_split,
)

# ---------------------------------------------------------------- digits


def test_digits_flat_normalized():
    X, y = load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float32 and X.flags.c_contiguous
    assert y.shape == (1797,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    assert set(np.unique(y)) == set(range(10))
    # the well-known class counts of the UCI/scikit-learn digits
    assert np.bincount(y).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]


def test_digits_images_raw():
    X, y = load_digits(flatten=False, normalize=False)
    assert X.shape == (1797, 1, 8, 8) and X.dtype == np.float32
    assert X.max() == 16.0 and np.all(X == np.round(X))  # raw pixel counts 0..16
    Xn, yn = load_digits(flatten=True, normalize=True)
    np.testing.assert_allclose(Xn, X.reshape(1797, 64) / 16.0)
    np.testing.assert_array_equal(y, yn)


def test_digits_license_shipped():
    import runtime.datasets as ds

    text = (ds._DIGITS_PATH.parent / "DIGITS_LICENSE.txt").read_text()
    assert "CC BY 4.0" in text and "10.24432/C50P49" in text and "Alpaydin" in text


# ---------------------------------------------------------------- split


def test_split_deterministic_disjoint_complete():
    X = np.arange(100).reshape(100, 1).astype(np.float32)
    y = np.arange(100)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_fraction=0.2, seed=3)
    assert len(Xte) == 20 and len(Xtr) == 80
    np.testing.assert_array_equal(Xtr[:, 0], ytr)  # rows stay paired with labels
    np.testing.assert_array_equal(Xte[:, 0], yte)
    assert set(ytr).isdisjoint(yte) and set(ytr) | set(yte) == set(range(100))
    again = train_test_split(X, y, test_fraction=0.2, seed=3)
    np.testing.assert_array_equal(again[3], yte)
    other = train_test_split(X, y, test_fraction=0.2, seed=4)
    assert not np.array_equal(other[3], yte)
    assert not np.array_equal(np.sort(yte), yte)  # actually shuffled


def test_split_errors():
    with pytest.raises(ValueError, match="5 samples but y has 4"):
        train_test_split(np.zeros(5), np.zeros(4))
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(np.zeros(5), np.zeros(5), test_fraction=1.0)


# ---------------------------------------------------------------- IDX


def write_idx(path, arr, code, fmt_char):
    """Write an IDX file independently of the reader: struct for the header
    and, element by element, for the big-endian data."""
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    body = struct.pack(f">{arr.size}{fmt_char}", *arr.ravel().tolist())
    data = header + body
    if str(path).endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)


IDX_CASES = [
    (0x08, "B", np.uint8, [0, 1, 255]),
    (0x09, "b", np.int8, [-128, -1, 127]),
    (0x0B, "h", np.int16, [-32768, 258, 32767]),
    (0x0C, "i", np.int32, [-(2**31), 65536 + 3, 2**31 - 1]),
    (0x0D, "f", np.float32, [-1.5, 0.0, 3.25e10]),
    (0x0E, "d", np.float64, [-1e300, np.pi, 2.5]),
]


@pytest.mark.parametrize("code,fmt_char,dtype,values", IDX_CASES)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, code, fmt_char, dtype, values, suffix):
    rng = np.random.default_rng(code)
    arr = rng.choice(np.array(values, dtype=dtype), size=(3, 4, 5))
    path = tmp_path / f"x.idx{suffix}"
    write_idx(path, arr, code, fmt_char)
    out = read_idx(path)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    assert out.shape == (3, 4, 5)
    np.testing.assert_array_equal(out, arr)


def test_idx_one_dim(tmp_path):
    arr = np.arange(7, dtype=np.uint8)
    write_idx(tmp_path / "l", arr, 0x08, "B")
    np.testing.assert_array_equal(read_idx(tmp_path / "l"), arr)


def test_idx_truncated(tmp_path):
    arr = np.zeros((2, 3, 3), dtype=np.int16)
    path = tmp_path / "t"
    write_idx(path, arr, 0x0B, "h")
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DatasetError, match=r"t: expected 52 bytes .*found 51 \(truncated\)"):
        read_idx(path)


def test_idx_trailing_data(tmp_path):
    path = tmp_path / "t"
    write_idx(path, np.zeros(4, dtype=np.uint8), 0x08, "B")
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(DatasetError, match="trailing data"):
        read_idx(path)


def test_idx_bad_magic(tmp_path):
    path = tmp_path / "bad"
    path.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\0")
    with pytest.raises(DatasetError, match=r"bad: not an IDX file.*found 00 00 07 01"):
        read_idx(path)
    path.write_bytes(b"PK\x03\x04whatever")
    with pytest.raises(DatasetError, match="not an IDX file"):
        read_idx(path)
    path.write_bytes(b"\0\0")
    with pytest.raises(DatasetError, match="4-byte"):
        read_idx(path)


def test_idx_missing_header_dims(tmp_path):
    path = tmp_path / "h"
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">I", 5))
    with pytest.raises(DatasetError, match="16-byte header for 3 dimensions"):
        read_idx(path)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DatasetError, match="nope: file not found"):
        read_idx(tmp_path / "nope")


# ---------------------------------------------------------------- MNIST


def test_load_mnist(tmp_path):
    rng = np.random.default_rng(0)
    for split, prefix, n, gz in (("train", "train", 6, ".gz"), ("test", "t10k", 4, "")):
        imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{gz}", imgs, 0x08, "B")
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{gz}", labels, 0x08, "B")
        X, y = load_mnist(tmp_path, split)
        assert X.shape == (n, 1, 28, 28) and X.dtype == np.float32
        assert y.dtype == np.int64
        np.testing.assert_allclose(X[:, 0], imgs / 255.0, rtol=1e-6)
        np.testing.assert_array_equal(y, labels)
        assert X.min() >= 0.0 and X.max() <= 1.0


def test_load_mnist_missing(tmp_path):
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte.*not found.*Download"):
        load_mnist(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, "valid")


def test_load_mnist_label_count_mismatch(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((3, 28, 28), np.uint8), 0x08, "B")
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(2, np.uint8), 0x08, "B")
    with pytest.raises(DatasetError, match="expected 3 labels"):
        load_mnist(tmp_path, "test")


# ---------------------------------------------------------------- CIFAR-10


def write_cifar(path, images, labels):
    with open(path, "wb") as f:
        for img, lab in zip(images, labels):
            f.write(struct.pack("B", int(lab)) + img.astype(np.uint8).tobytes())


def test_cifar_batch_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    imgs = rng.integers(0, 256, size=(5, 3, 32, 32), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 7])
    write_cifar(tmp_path / "b.bin", imgs, labels)
    X, y = read_cifar10_batch(tmp_path / "b.bin")
    assert X.shape == (5, 3, 32, 32) and X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(y, labels)
    np.testing.assert_array_equal(np.rint(X * 255).astype(np.uint8), imgs)  # exact bytes back
    assert X[0, 0, 0, 0] == np.float32(imgs[0, 0, 0, 0]) / np.float32(255)


def test_cifar_bad_size(tmp_path):
    (tmp_path / "b.bin").write_bytes(b"\0" * 3074)
    with pytest.raises(DatasetError, match=r"b.bin: expected a non-empty multiple of 3073 bytes.*found 3074"):
        read_cifar10_batch(tmp_path / "b.bin")


def test_load_cifar10_splits(tmp_path):
    root = tmp_path / "cifar-10-batches-bin"
    root.mkdir()
    rng = np.random.default_rng(2)
    expected = []
    for i in range(1, 6):
        imgs = rng.integers(0, 256, size=(2, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=2)
        write_cifar(root / f"data_batch_{i}.bin", imgs, labels)
        expected.append(labels)
    write_cifar(root / "test_batch.bin", np.zeros((3, 3, 32, 32), np.uint8), [1, 2, 3])
    X, y = load_cifar10(tmp_path, "train")  # parent folder is accepted too
    assert X.shape == (10, 3, 32, 32)
    np.testing.assert_array_equal(y, np.concatenate(expected))
    Xt, yt = load_cifar10(root, "test")
    assert Xt.shape == (3, 3, 32, 32) and yt.tolist() == [1, 2, 3]


def test_load_cifar10_missing(tmp_path):
    with pytest.raises(DatasetError, match=r"data_batch_1.bin: CIFAR-10 file not found.*cifar-10-binary"):
        load_cifar10(tmp_path, "train")
