"""A small CNN (conv-BN-relu-pool twice, dropout, linear) on the bundled UCI 8x8 digits, exported to ONNX.

    python samples/cnn_digits.py --out out
    graphc run out/cnn_digits.onnx --input x=out/x_test_cnn.npy --output-dir out/pred

The digits are read as images, (N, 1, 8, 8). Adam and cross-entropy, a progress
bar per epoch, held-out loss and accuracy after each epoch from the eval graph
(BatchNorm with its running statistics, no dropout), early stopping on the
held-out loss; then writes ``cnn_digits.onnx`` (inference) and test inputs for
the ``graphc`` runner.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import graphc as gc
import graphc.nn.functional as F
from graphc import nn


class DigitsCNN(nn.Module):
    def __init__(self, n_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)  # bias before BatchNorm is redundant
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.pool = nn.MaxPool2d(2)
        self.dropout = nn.Dropout(0.25)
        self.fc = nn.Linear(32 * 2 * 2, n_classes)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))   # 16 x 4 x 4
        x = self.pool(F.relu(self.bn2(self.conv2(x))))   # 32 x 2 x 2
        return self.fc(self.dropout(x.flatten(1)))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out", help="folder for the exported files (default: out)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    gc.manual_seed(args.seed)

    X, y = gc.data.load_digits(flatten=False)
    X_train, X_test, y_train, y_test = gc.data.train_test_split(X, y, test_fraction=0.2, seed=args.seed)
    loader = gc.data.DataLoader(X_train, y_train, batch_size=args.batch_size, shuffle=True, seed=args.seed)

    x = gc.input("x", shape=("batch", 1, 8, 8))
    labels = gc.input("y", shape=("batch",), dtype="int64")
    model = DigitsCNN()
    model.train()
    loss = F.cross_entropy(model(x), labels)
    trainer = gc.Trainer(loss, gc.optim.Adam(model.parameters(), lr=args.lr), inputs=[x, labels],
                         provider=args.provider, seed=args.seed)

    # The eval graph: built once, after model.eval(); compiling it reads the current trained values.
    model.eval()
    eval_logits = model(x)
    eval_loss = F.cross_entropy(eval_logits, labels)

    def held_out() -> dict:
        out = gc.compile([x, labels], {"logits": eval_logits, "loss": eval_loss},
                         provider=args.provider).run({"x": X_test, "y": y_test})
        return {"val_loss": float(out["loss"]), "val_acc": float((out["logits"].argmax(1) == y_test).mean())}

    start = time.perf_counter()
    history = trainer.fit(loader, epochs=args.epochs, validate=held_out, monitor="val_loss", patience=5,
                          progress=not args.no_progress)
    seconds = time.perf_counter() - start

    program = gc.compile([x], {"logits": eval_logits}, provider=args.provider)
    model_path = os.path.join(args.out, "cnn_digits.onnx")
    program.save(model_path)
    np.save(os.path.join(args.out, "x_test_cnn.npy"), X_test)
    np.save(os.path.join(args.out, "y_test.npy"), y_test)
    accuracy = float((program.run({"x": X_test})["logits"].argmax(1) == y_test).mean())
    print(f"trained {len(history)} epochs ({trainer.steps_done} steps) in {seconds:.2f} s; "
          f"held-out accuracy {accuracy:.4f} on {len(y_test)} digits")
    print(f"wrote {model_path}; try:\n  graphc run {model_path} --input x={args.out}/x_test_cnn.npy "
          f"--output-dir {args.out}/pred")
    return {"accuracy": accuracy, "seconds": seconds, "epochs": len(history)}


if __name__ == "__main__":
    main()
