"""Linear regression, the first PyTorch tutorial: recover w = 2 and b = 1 from noisy y = 2x + 1.

    python samples/linear_regression.py
"""

from __future__ import annotations

import numpy as np

import graphc as gc
import graphc.nn.functional as F
from graphc import nn


def main(steps: int = 500, seed: int = 0) -> tuple[float, float]:
    gc.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x_data = rng.uniform(-1, 1, size=(256, 1)).astype(np.float32)
    y_data = (2 * x_data + 1 + 0.05 * rng.standard_normal((256, 1))).astype(np.float32)

    x = gc.input("x", shape=("batch", 1))
    y = gc.input("y", shape=("batch", 1))
    model = nn.Linear(1, 1)
    loss = F.mse_loss(model(x), y)
    trainer = gc.Trainer(loss, gc.optim.SGD(model.parameters(), lr=0.1), inputs=[x, y], seed=seed)

    for step in range(steps):
        value = trainer.step({"x": x_data, "y": y_data})
        if step % 100 == 0:
            print(f"step {step:4d}  loss {value:.5f}")
    w, b = float(model.weight.data[0, 0]), float(model.bias.data[0])
    print(f"learned w = {w:.3f} (true 2), b = {b:.3f} (true 1)")
    return w, b


if __name__ == "__main__":
    main()
