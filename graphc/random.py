"""The front end's random source for parameter initialisation (``gc.manual_seed``)."""

from __future__ import annotations

import numpy as np

_generator = np.random.default_rng()


def manual_seed(seed: int) -> None:
    """Seed parameter initialisation, like ``torch.manual_seed`` (dropout masks are seeded by the Trainer)."""
    global _generator
    _generator = np.random.default_rng(seed)


def generator() -> np.random.Generator:
    return _generator


def uniform(bound: float, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """U(-bound, bound) of ``shape``: the distribution of PyTorch's default layer initialisers."""
    return _generator.uniform(-bound, bound, size=shape).astype(dtype)
