"""Benchmark: the tutorial MLP (784-128-64-10, batch 64) training step, graphc vs PyTorch eager.

    python benchmarks/bench_mlp.py [--steps 2000] [--optimizer adam|sgd] [--interleave]

Prints the median step time of each (same process, same batches; one after the
other, or taking turns with --interleave), their ratio, and the floor: the step's FLOPs over the GEMM rate measured here.
PyTorch is only the reference peer (skipped if not installed).
"""

from __future__ import annotations

import argparse
import statistics
import numpy as np

import graphc as gc
import graphc.nn.functional as F
from graphc import nn

from common import gemm_gflops, interleaved_ms

SIZES = (784, 128, 64, 10)
BATCH = 64


def build_graphc(optimizer: str):
    gc.manual_seed(0)
    x = gc.input("x", shape=("batch", SIZES[0]))
    y = gc.input("y", shape=("batch",), dtype="int64")
    layers = []
    for i in range(len(SIZES) - 1):
        layers.append(nn.Linear(SIZES[i], SIZES[i + 1]))
        if i < len(SIZES) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers)
    loss = F.cross_entropy(model(x), y)
    opt = gc.optim.Adam(model.parameters(), lr=1e-3) if optimizer == "adam" else \
        gc.optim.SGD(model.parameters(), lr=1e-2)
    trainer = gc.Trainer(loss, opt, inputs=[x, y])
    return lambda xb, yb: trainer.step({"x": xb, "y": yb})


def build_torch(optimizer: str):
    import torch
    torch.manual_seed(0)
    layers = []
    for i in range(len(SIZES) - 1):
        layers.append(torch.nn.Linear(SIZES[i], SIZES[i + 1]))
        if i < len(SIZES) - 2:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3) if optimizer == "adam" else \
        torch.optim.SGD(model.parameters(), lr=1e-2)

    def step(xb, yb):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(xb)), torch.from_numpy(yb))
        loss.backward()
        opt.step()
        return loss.item()
    return step


def step_flops() -> float:
    """Forward (2*B*in*out per layer) + weight gradients (same) + input gradients (all but the first layer)."""
    per_layer = [2 * BATCH * SIZES[i] * SIZES[i + 1] for i in range(len(SIZES) - 1)]
    return 2 * sum(per_layer) + sum(per_layer[1:])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    parser.add_argument("--interleave", action="store_true", help="take turns every 50 steps")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    pool = [(rng.standard_normal((BATCH, SIZES[0])).astype(np.float32), rng.integers(0, 10, BATCH))
            for _ in range(100)]
    batches = [pool[i % len(pool)] for i in range(args.steps)]  # 100 distinct batches, reused
    steps = {"graphc": build_graphc(args.optimizer)}
    try:
        steps["torch"] = build_torch(args.optimizer)
    except ImportError:
        pass
    # Sequential by default: each framework's steps back to back, as a user runs them. Taking turns
    # (--interleave) exposes both to the same load, but each one's idle worker threads (ONNX Runtime's
    # and PyTorch's spin-waiting pools) then slow the other's sub-millisecond steps.
    block = 50 if args.interleave else len(batches)
    medians, rounds = interleaved_ms(steps, batches, warmup=50, block=block)
    results = {"graphc_ms": medians["graphc"]}
    if "torch" in medians:
        results["torch_ms"] = medians["torch"]
        results["ratio"] = statistics.median(r["graphc"] / r["torch"] for r in rounds)
    rate = gemm_gflops()
    results["floor_ms"] = step_flops() / (rate * 1e9) * 1e3
    print(f"MLP 784-128-64-10, batch {BATCH}, {args.optimizer}, median of {args.steps} steps")
    print(f"  graphc (ONNX Runtime CPU): {results['graphc_ms']:.3f} ms/step")
    if "torch_ms" in results:
        print(f"  PyTorch eager:             {results['torch_ms']:.3f} ms/step")
        how = "taking turns every 50 steps" if args.interleave else "one after the other"
        print(f"  ratio graphc / PyTorch:    {results['ratio']:.2f}  ({how})")
    print(f"  floor ({step_flops() / 1e6:.1f} MFLOP at {rate:.0f} GFLOP/s): {results['floor_ms']:.3f} ms/step")
    return results


if __name__ == "__main__":
    main()
