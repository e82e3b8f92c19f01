"""An LSTM classifier reading each 8x8 digit row by row (8 steps of 8 features), exported to ONNX.

    python samples/lstm_digits.py --out out
    graphc run out/lstm_digits.onnx --input x=out/x_test_lstm.npy --output-dir out/pred

The tutorials' LSTM-over-image-rows classifier on the bundled UCI digits: a
2-layer batch_first LSTM, the last time step's output through a Linear layer,
cross-entropy and Adam, early stopping on the held-out loss. The sequence is
unrolled (static length 8), so the training step is plain ONNX ops.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import graphc as gc
import graphc.nn.functional as F
from graphc import nn


class RowLSTM(nn.Module):
    def __init__(self, rows_features: int = 8, hidden: int = 64, n_classes: int = 10):
        super().__init__()
        self.lstm = nn.LSTM(rows_features, hidden, num_layers=2, batch_first=True)
        self.fc = nn.Linear(hidden, n_classes)

    def forward(self, x):
        out, _ = self.lstm(x)           # (batch, 8, hidden)
        return self.fc(out[:, -1, :])   # the last row's summary


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out", help="folder for the exported files (default: out)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    gc.manual_seed(args.seed)

    X, y = gc.data.load_digits(flatten=False)
    X = np.ascontiguousarray(X[:, 0])  # (N, 8 rows, 8 features)
    X_train, X_test, y_train, y_test = gc.data.train_test_split(X, y, test_fraction=0.2, seed=args.seed)
    loader = gc.data.DataLoader(X_train, y_train, batch_size=args.batch_size, shuffle=True, seed=args.seed)

    x = gc.input("x", shape=("batch", 8, 8))
    labels = gc.input("y", shape=("batch",), dtype="int64")
    model = RowLSTM()
    logits = model(x)
    loss = F.cross_entropy(logits, labels)
    trainer = gc.Trainer(loss, gc.optim.Adam(model.parameters(), lr=args.lr), inputs=[x, labels],
                         provider=args.provider, seed=args.seed)
    evaluate = gc.compile([x, labels], {"logits": logits, "loss": loss}, provider=args.provider)

    def held_out() -> dict:  # the compiled program follows the trained weights by itself
        out = evaluate.run({"x": X_test, "y": y_test})
        return {"val_loss": float(out["loss"]), "val_acc": float((out["logits"].argmax(1) == y_test).mean())}

    start = time.perf_counter()
    history = trainer.fit(loader, epochs=args.epochs, validate=held_out, monitor="val_loss", patience=8,
                          progress=not args.no_progress)
    seconds = time.perf_counter() - start

    model.eval()  # eval mode: the exported model uses ONNX's own LSTM op (faster inference)
    program = gc.compile([x], {"logits": model(x)}, provider=args.provider)
    model_path = os.path.join(args.out, "lstm_digits.onnx")
    program.save(model_path)
    np.save(os.path.join(args.out, "x_test_lstm.npy"), X_test)
    accuracy = float((program.run({"x": X_test})["logits"].argmax(1) == y_test).mean())
    print(f"trained {len(history)} epochs ({trainer.steps_done} steps) in {seconds:.2f} s; "
          f"held-out accuracy {accuracy:.4f} on {len(y_test)} digits")
    print(f"wrote {model_path}; try:\n  graphc run {model_path} --input x={args.out}/x_test_lstm.npy "
          f"--output-dir {args.out}/pred")
    return {"accuracy": accuracy, "seconds": seconds, "epochs": len(history)}


if __name__ == "__main__":
    main()
