"""The tutorial MLP, trained on the bundled UCI 8x8 digits, exported to ONNX and run by the CLI.

    python samples/mlp_digits.py --out out
    graphc run out/mlp_digits.onnx --input x=out/x_test.npy --output-dir out/pred

Trains 64-128-64-10 with Adam and cross-entropy (a progress bar per epoch,
held-out accuracy after each), stops early when the held-out loss stops
improving, then writes ``mlp_digits.onnx`` (inference), ``train_step.onnx``
(the training step itself) and test inputs for the ``graphc`` runner.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import graphc as gc
import graphc.nn.functional as F
from graphc import nn


class MLP(nn.Module):
    def __init__(self, n_in: int = 64, n_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(n_in, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, n_classes)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out", help="folder for the exported files (default: out)")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    gc.manual_seed(args.seed)

    X, y = gc.data.load_digits()
    X_train, X_test, y_train, y_test = gc.data.train_test_split(X, y, test_fraction=0.2, seed=args.seed)
    loader = gc.data.DataLoader(X_train, y_train, batch_size=args.batch_size, shuffle=True, seed=args.seed)

    x = gc.input("x", shape=("batch", 64))
    labels = gc.input("y", shape=("batch",), dtype="int64")
    model = MLP()
    logits = model(x)
    loss = F.cross_entropy(logits, labels)
    trainer = gc.Trainer(loss, gc.optim.Adam(model.parameters(), lr=args.lr), inputs=[x, labels],
                         provider=args.provider, seed=args.seed)

    evaluate = gc.compile([x, labels], {"logits": logits, "loss": loss})  # follows the trained weights

    def held_out() -> dict:
        out = evaluate.run({"x": X_test, "y": y_test})
        return {"val_loss": float(out["loss"]), "val_acc": float((out["logits"].argmax(1) == y_test).mean())}

    start = time.perf_counter()
    history = trainer.fit(loader, epochs=args.epochs, validate=held_out, monitor="val_loss", patience=5,
                          progress=not args.no_progress)
    seconds = time.perf_counter() - start

    program = gc.compile([x], {"logits": logits}, provider=args.provider)
    model_path = os.path.join(args.out, "mlp_digits.onnx")
    program.save(model_path)
    trainer.save(os.path.join(args.out, "train_step.onnx"))
    np.save(os.path.join(args.out, "x_test.npy"), X_test)
    np.save(os.path.join(args.out, "y_test.npy"), y_test)
    accuracy = float((program.run({"x": X_test})["logits"].argmax(1) == y_test).mean())
    print(f"trained {len(history)} epochs ({trainer.steps_done} steps) in {seconds:.2f} s; "
          f"held-out accuracy {accuracy:.4f} on {len(y_test)} digits")
    print(f"wrote {model_path}; try:\n  graphc run {model_path} --input x={args.out}/x_test.npy "
          f"--output-dir {args.out}/pred")
    return {"accuracy": accuracy, "seconds": seconds, "epochs": len(history)}


if __name__ == "__main__":
    main()
