"""The front end's random source for parameter initialisation (``gc.manual_seed``)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from passes.names import RNG_KEY, RNG_STREAM_KEY

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


# ---- in-graph random numbers (dropout masks) ------------------------------
# A counter-based generator: every element's number is splitmix64(counter), the
# counter mixing the element index, the dropout call's stream id and the
# ``rng_key`` graph input. Masks are thus a pure function of (key, stream,
# index): fresh each step (the Trainer feeds key = f(seed, step)), identical
# for the forward and backward pass of a step, and exactly reproducible after
# a checkpoint restores the step. Only ai.onnx integer ops are used.

_SPLITMIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
_rng_key_tensor = None
_stream_counter = 0


def rng_key():
    """The implicit int64 scalar graph input that seeds every in-graph random draw."""
    global _rng_key_tensor
    if _rng_key_tensor is None:
        from graphc.tensor import input as graph_input
        _rng_key_tensor = graph_input(RNG_KEY, shape=(), dtype="int64")
    return _rng_key_tensor


def key_for_step(seed: int, step: int) -> np.ndarray:
    """The ``rng_key`` fed at training step ``step`` (0-based) of a Trainer seeded with ``seed``."""
    key = ((int(seed) & 0xFFFFFFFF) << 32) | (int(step) & 0xFFFFFFFF)  # any int seed; 64 bits, two's complement
    return np.asarray(key - (1 << 64) if key >= 1 << 63 else key, dtype=np.int64)


def uniform_like(x):
    """U[0, 1) float32 numbers shaped like ``x``, drawn in the graph from ``rng_key`` (see above)."""
    global _stream_counter
    from graphc.tensor import constant, emit

    _stream_counter += 1
    def c(value):
        return constant(np.asarray(value, dtype=np.uint64))

    def op(op_type, inputs, attrs=None, dtype=np.uint64, shape=x.shape):
        return emit(op_type, inputs, attrs, shape=shape, dtype=dtype)

    shape = emit("Shape", [x], shape=(x.ndim,), dtype=np.int64)
    count = emit("ReduceProd", [shape], {"keepdims": 0}, shape=(), dtype=np.int64)
    index = emit("Range", [constant(np.asarray(0, np.int64)), count, constant(np.asarray(1, np.int64))],
                 shape=(None,), dtype=np.int64)
    index = op("Cast", [emit("Reshape", [index, shape], shape=x.shape, dtype=np.int64)], {"to": ir.DataType.UINT64})
    key = op("Cast", [rng_key()], {"to": ir.DataType.UINT64}, shape=())
    stream = c((_stream_counter * _SPLITMIX[0]) % 2 ** 64)  # renumbered per graph by NumberRandomStreamsPass
    stream.value.producer().metadata_props[RNG_STREAM_KEY] = "1"
    z = op("Add", [op("Mul", [index, c(_SPLITMIX[0])]), op("Add", [op("Mul", [key, c(_SPLITMIX[1])], shape=()), stream],
                                                                 shape=())])
    for shift, mult in ((30, _SPLITMIX[1]), (27, _SPLITMIX[2])):
        z = op("Mul", [op("BitwiseXor", [z, op("BitShift", [z, c(shift)], {"direction": "RIGHT"})]), c(mult)])
    z = op("BitwiseXor", [z, op("BitShift", [z, c(31)], {"direction": "RIGHT"})])
    top24 = op("BitShift", [z, c(40)], {"direction": "RIGHT"})
    return emit("Mul", [op("Cast", [top24], {"to": ir.DataType.FLOAT}, dtype=np.float32), constant(np.float32(2.0 ** -24))],
                shape=x.shape, dtype=np.float32)


def draw_key() -> np.ndarray:
    """A fresh ``rng_key`` from ``gc.manual_seed``'s stream, for programs run with dropout active."""
    return np.asarray(_generator.integers(-(2 ** 63), 2 ** 63 - 1, dtype=np.int64), dtype=np.int64)
