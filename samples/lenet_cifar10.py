"""The PyTorch CIFAR-10 tutorial's LeNet, trained with graphc, exported to ONNX.

    python samples/lenet_cifar10.py --data DIR [--epochs 2] [--optimizer sgd|adam] [--out out]

DIR holds the CIFAR-10 *binary version* (data_batch_1.bin ... data_batch_5.bin,
test_batch.bin), or the folder that contains ``cifar-10-batches-bin``. Get it with

    curl -O https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz
    tar xzf cifar-10-binary.tar.gz -C DIR

(the "CIFAR-10 binary version" on https://www.cs.toronto.edu/~kriz/cifar.html).
As in the tutorial: inputs normalised to [-1, 1], batch 4, SGD lr 0.001 momentum
0.9, 2 epochs (about 54% test accuracy there); ``--optimizer adam`` uses Adam
lr 0.001. Writes ``lenet_cifar10.onnx`` and prints the test accuracy and time.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import graphc as gc
import graphc.nn.functional as F
from graphc import nn

CLASSES = ("plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.flatten(1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def load(directory: str):
    """Train and test splits normalised like the tutorial's ``Normalize((0.5,)*3, (0.5,)*3)``; None if absent."""
    try:
        X_train, y_train = gc.data.load_cifar10(directory, "train")
        X_test, y_test = gc.data.load_cifar10(directory, "test")
    except gc.data.DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return None
    return X_train * 2 - 1, y_train, X_test * 2 - 1, y_test


def accuracy(program: gc.Program, X: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> float:
    correct = 0
    for i in range(0, len(X), batch_size):
        correct += int((program.run({"x": X[i:i + batch_size]})["logits"].argmax(1) == y[i:i + batch_size]).sum())
    return correct / len(X)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="folder with the CIFAR-10 binary batches")
    parser.add_argument("--out", default="out", help="folder for the exported model (default: out)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--provider", default="cpu", choices=["cpu", "cuda", "auto"])
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)

    data = load(args.data) if args.data else None
    if data is None:
        folder = args.data or "data/cifar10"
        print("CIFAR-10 is not bundled. Download the binary version (cifar-10-binary.tar.gz, 162 MB) from\n"
              "  https://www.cs.toronto.edu/~kriz/cifar.html\n"
              "and extract it:\n"
              f"  curl -O https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz\n"
              f"  mkdir -p {folder} && tar xzf cifar-10-binary.tar.gz -C {folder}\n"
              f"then run again: python samples/lenet_cifar10.py --data {folder}", file=sys.stderr)
        return 2
    X_train, y_train, X_test, y_test = data
    os.makedirs(args.out, exist_ok=True)
    gc.manual_seed(args.seed)

    x = gc.input("x", shape=("batch", 3, 32, 32))
    labels = gc.input("y", shape=("batch",), dtype="int64")
    model = LeNet()
    logits = model(x)
    loss = F.cross_entropy(logits, labels)
    if args.optimizer == "sgd":
        optimizer = gc.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    else:
        optimizer = gc.optim.Adam(model.parameters(), lr=args.lr)
    trainer = gc.Trainer(loss, optimizer, inputs=[x, labels], provider=args.provider, seed=args.seed)
    loader = gc.data.DataLoader(X_train, y_train, batch_size=args.batch_size, shuffle=True, seed=args.seed)

    def held_out() -> dict:
        return {"test_acc": accuracy(gc.compile([x], {"logits": logits}, provider=args.provider), X_test, y_test)}

    start = time.perf_counter()
    history = trainer.fit(loader, epochs=args.epochs, validate=held_out, progress=not args.no_progress)
    seconds = time.perf_counter() - start

    program = gc.compile([x], {"logits": logits}, provider=args.provider)
    model_path = os.path.join(args.out, "lenet_cifar10.onnx")
    program.save(model_path)
    test_acc = history[-1]["test_acc"] if history else accuracy(program, X_test, y_test)
    print(f"trained {len(history)} epochs ({trainer.steps_done} steps of {args.batch_size}, {args.optimizer}) "
          f"in {seconds:.1f} s; test accuracy {test_acc:.4f} on {len(y_test)} images")
    print(f"wrote {model_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
