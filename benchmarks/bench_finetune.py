"""Benchmark: fine-tuning an imported CNN export vs the same CNN built natively in graphc vs PyTorch.

    python benchmarks/bench_finetune.py [--steps 30] [--rounds 3] [--batch 64]

The CNN (3x32x32 -> conv 3->16 3x3 pad 1, relu, maxpool 2, conv 16->32 3x3 pad 1, relu, maxpool 2,
linear 2048->10, cross-entropy, SGD lr 0.01 momentum 0.9) is written once in PyTorch and once in graphc
with the same weights. Engines: ``imported`` (PyTorch's TorchScript export, opset 20, through
``gc.load_onnx``), ``native`` (graphc modules) and ``torch`` (eager). Each engine runs in a process of its
own (idle worker threads of one engine slow another), the processes taking turns over ``--rounds``;
the median ms per step is printed with the ratios imported/native (expected ~1.0) and imported/torch.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _torch_cnn():
    import torch
    from torch import nn
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(2048, 10))


def _batches(batch: int):
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, batch))
            for _ in range(4)]


def _graphc_step(engine: str, batch: int):
    sys.path.insert(0, str(ROOT))
    import graphc as gc
    import graphc.nn.functional as F
    from graphc import nn
    reference = _torch_cnn()
    state = {k: v.numpy() for k, v in reference.state_dict().items()}
    x = gc.input("x", ("batch", 3, 32, 32))
    y = gc.input("y", ("batch",), dtype="int64")
    if engine == "imported":
        import torch
        buffer = io.BytesIO()
        torch.onnx.export(reference.eval(), (torch.zeros(batch, 3, 32, 32),), buffer, input_names=["x"],
                          output_names=["logits"], opset_version=20, dynamo=False, do_constant_folding=False)
        model = gc.load_onnx(__import__("onnx").load_from_string(buffer.getvalue()))
    else:
        model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(2048, 10))
        model.load_state_dict(state)
    loss = F.cross_entropy(model(x), y)
    trainer = gc.Trainer(loss, gc.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), inputs=[x, y])
    return lambda xb, yb: trainer.step({"x": xb, "y": yb})


def _torch_step(batch: int):
    import torch
    model = _torch_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(xb, yb):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(xb)), torch.from_numpy(yb))
        loss.backward()
        optimizer.step()
        return loss.item()
    return step


def worker(engine: str, steps: int, batch: int) -> None:
    """Runs in its own process: one line of JSON per timed block, on request from stdin."""
    step = _torch_step(batch) if engine == "torch" else _graphc_step(engine, batch)
    data = _batches(batch)
    for i in range(5):
        step(*data[i % len(data)])
    print("ready", flush=True)
    for _ in sys.stdin:
        times = []
        for i in range(steps):
            start = time.perf_counter()
            step(*data[i % len(data)])
            times.append((time.perf_counter() - start) * 1e3)
        print(json.dumps(times), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--worker")
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.steps, args.batch)
        return
    engines = ["imported", "native", "torch"]
    procs = {e: subprocess.Popen([sys.executable, __file__, "--worker", e, "--steps", str(args.steps),
                                  "--batch", str(args.batch)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 text=True) for e in engines}
    for proc in procs.values():
        while proc.stdout.readline().strip() != "ready":
            pass
    samples = {e: [] for e in engines}
    for _ in range(args.rounds):
        for engine, proc in procs.items():  # one engine runs at a time
            proc.stdin.write("go\n")
            proc.stdin.flush()
            samples[engine] += json.loads(proc.stdout.readline())
    for proc in procs.values():
        proc.stdin.close()
        proc.wait()
    medians = {e: statistics.median(v) for e, v in samples.items()}
    for engine, ms in medians.items():
        print(f"{engine:9s} {ms:8.2f} ms/step (median of {len(samples[engine])})")
    print(f"imported/native {medians['imported'] / medians['native']:.2f}   "
          f"imported/torch {medians['imported'] / medians['torch']:.2f}")


if __name__ == "__main__":
    main()
