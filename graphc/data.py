"""``gc.data``: data loading (implemented in ``runtime``; re-exported for the front end's users)."""

from runtime.dataloader import DataLoader
from runtime.datasets import (
    DatasetError,
    load_cifar10,
    load_digits,
    load_mnist,
    read_cifar10_batch,
    read_idx,
    train_test_split,
)

__all__ = ["DataLoader", "DatasetError", "load_digits", "load_mnist", "load_cifar10", "read_idx",
           "read_cifar10_batch", "train_test_split"]
