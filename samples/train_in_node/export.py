"""Export a digits MLP's training step and batches for ``train.js`` (training in Node.js, no Python there).

    python samples/train_in_node/export.py --out samples/train_in_node/out
    cd samples/train_in_node && npm install --ignore-scripts && node train.js out

Writes ``step.onnx`` and ``step.state.onnx`` (``Trainer.save``), and the batches as raw little-endian
``<input>.bin`` files with ``batches.json`` saying each input's dtype, per-batch shape and the number of
batches. The model has dropout: the step derives each step's masks from its ``seed`` and ``step``.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

import graphc as gc
import graphc.nn.functional as F
from graphc import nn


def build_trainer(seed: int = 0, lr: float = 1e-2) -> gc.Trainer:
    """A 64-64-10 MLP with dropout on the 8x8 digits, Adam, cross-entropy."""
    gc.manual_seed(seed)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 10))
    x = gc.input("x", shape=("batch", 64))
    y = gc.input("y", shape=("batch",), dtype="int64")
    return gc.Trainer(F.cross_entropy(model(x), y), gc.optim.Adam(model.parameters(), lr=lr), inputs=[x, y],
                      seed=seed)


def digit_batches(steps: int, batch_size: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    X, Y = gc.data.load_digits()
    order = np.random.default_rng(seed).permutation(len(X))
    picks = [order[(i * batch_size + np.arange(batch_size)) % len(X)] for i in range(steps)]
    return [{"x": X[p], "y": Y[p]} for p in picks]


def write_batches(folder, batches: list[dict[str, np.ndarray]]) -> None:
    """``<input>.bin`` (all batches back to back, little-endian) and ``batches.json``."""
    inputs = {}
    for name in batches[0]:
        arrays = [np.ascontiguousarray(b[name], dtype=b[name].dtype.newbyteorder("<")) for b in batches]
        with open(os.path.join(folder, f"{name}.bin"), "wb") as handle:
            for array in arrays:
                handle.write(array.tobytes())
        inputs[name] = {"dtype": str(arrays[0].dtype.name), "shape": list(arrays[0].shape), "file": f"{name}.bin"}
    with open(os.path.join(folder, "batches.json"), "w") as handle:
        json.dump({"count": len(batches), "inputs": inputs}, handle, indent=1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    build_trainer().save(os.path.join(args.out, "step.onnx"))
    write_batches(args.out, digit_batches(args.steps, args.batch_size))


if __name__ == "__main__":
    main()
