"""The CNN digits sample (samples/cnn_digits.py), data-parallel over MPI processes.

    mpirun -n 2 python samples/ddp_digits.py --out out      # as root: add --allow-run-as-root
    python samples/ddp_digits.py --out out                  # the same script as a world of 1

Every rank builds the same model (rank 0's parameters are broadcast at build), reads its own shard of
each epoch's shuffled training set (``shard=(rank, world)``), and averages gradients with the others
every step (one Allreduce), so the global batch is ``--batch-size`` x the number of ranks. Rank 0 shows
the progress bar, evaluates for early stopping (every rank follows its decision) and writes the files.
BatchNorm's running statistics are per rank (no SyncBatchNorm); the exported model carries rank 0's.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import graphc as gc
import graphc.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from cnn_digits import DigitsCNN  # noqa: E402  (the same model as the single-process sample)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="out", help="folder for the exported files (default: out)")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32, help="per rank (default: 32)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    gc.distributed.init()
    rank, world = gc.distributed.rank(), gc.distributed.world_size()
    if rank == 0:
        os.makedirs(args.out, exist_ok=True)
    gc.manual_seed(args.seed)

    X, y = gc.data.load_digits(flatten=False)
    X_train, X_test, y_train, y_test = gc.data.train_test_split(X, y, test_fraction=0.2, seed=args.seed)
    loader = gc.data.DataLoader(X_train, y_train, batch_size=args.batch_size, shuffle=True, seed=args.seed,
                                shard=(rank, world))

    x = gc.input("x", shape=("batch", 1, 8, 8))
    labels = gc.input("y", shape=("batch",), dtype="int64")
    model = DigitsCNN()
    model.train()
    loss = F.cross_entropy(model(x), labels)
    trainer = gc.Trainer(loss, gc.optim.Adam(model.parameters(), lr=args.lr), inputs=[x, labels],
                         seed=args.seed, distributed=True)

    model.eval()
    eval_logits = model(x)
    eval_loss = F.cross_entropy(eval_logits, labels)

    def held_out() -> dict:  # every rank computes it; early stopping follows rank 0's value
        out = gc.compile([x, labels], {"logits": eval_logits, "loss": eval_loss}).run({"x": X_test, "y": y_test})
        return {"val_loss": float(out["loss"]), "val_acc": float((out["logits"].argmax(1) == y_test).mean())}

    start = time.perf_counter()
    history = trainer.fit(loader, epochs=args.epochs, validate=held_out, monitor="val_loss", patience=5,
                          progress=not args.no_progress)
    seconds = time.perf_counter() - start
    trainer.save_checkpoint(os.path.join(args.out, "ddp_digits.ckpt"), loader=loader)  # rank 0 writes

    program = gc.compile([x], {"logits": eval_logits})
    accuracy = float((program.run({"x": X_test})["logits"].argmax(1) == y_test).mean())
    model_path = os.path.join(args.out, "ddp_digits.onnx")
    if rank == 0:  # Program.save is not rank-aware: the sample guards it
        program.save(model_path)
        np.save(os.path.join(args.out, "x_test_cnn.npy"), X_test)
        print(f"{world} rank(s) x batch {args.batch_size}: trained {len(history)} epochs "
              f"({trainer.steps_done} steps) in {seconds:.2f} s; held-out accuracy {accuracy:.4f} on "
              f"{len(y_test)} digits; wrote {model_path}")
    gc.distributed.barrier()  # nobody leaves before rank 0 has written
    return {"accuracy": accuracy, "seconds": seconds, "epochs": len(history), "rank": rank}


if __name__ == "__main__":
    main()
