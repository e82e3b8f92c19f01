"""Benchmark: data-parallel training, samples/s, graphc over MPI against PyTorch DDP (gloo).

    python benchmarks/bench_ddp.py [--steps 300] [--rounds 2] [--global-batch 64]

The model is the digits CNN of samples/cnn_digits.py (conv-BN-relu-pool twice, dropout, linear; 8x8 inputs),
Adam, a global batch of 64. Four configurations, each engine in processes of its own, taking turns over
``--rounds`` rounds (machine load drifts; compare within a round):

- graphc, 1 process x 2 ONNX Runtime threads (plain Trainer, batch 64);
- graphc, 2 processes x 1 thread (``mpirun -n 2``, ``Trainer(distributed=True)``, batch 32 per rank);
- PyTorch, 1 process x 2 threads (batch 64);
- PyTorch DDP, 2 processes x 1 thread, gloo backend, batch 32 per rank (``broadcast_buffers=False``: per-rank
  BatchNorm statistics, as graphc).

Reported: samples/s (global batch x steps / seconds, timed on rank 0 after a warm-up), the scaling efficiency
(2 processes against 1 process on the same 2 cores), and the bytes reduced per step. PyTorch is the anchor
only; the script needs it installed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WARMUP = 20


def _batches(per_rank: int, rank: int, world: int, steps: int):
    sys.path.insert(0, ROOT)
    from runtime.dataloader import DataLoader
    from runtime.datasets import load_digits

    X, y = load_digits(flatten=False)
    loader = DataLoader(X, y, batch_size=per_rank, shuffle=True, seed=0, drop_last=True, shard=(rank, world))
    out = []
    while len(out) < steps + WARMUP:
        out.extend(loader)
    return out[:steps + WARMUP]


def graphc_worker(per_rank: int, steps: int, threads: int) -> dict:
    sys.path.insert(0, ROOT)
    sys.path.insert(0, os.path.join(ROOT, "samples"))
    import graphc as gc
    import graphc.nn.functional as F
    from cnn_digits import DigitsCNN

    gc.distributed.init()
    rank, world = gc.distributed.rank(), gc.distributed.world_size()
    gc.manual_seed(0)
    x = gc.input("x", shape=("batch", 1, 8, 8))
    y = gc.input("y", shape=("batch",), dtype="int64")
    model = DigitsCNN()
    trainer = gc.Trainer(F.cross_entropy(model(x), y), gc.optim.Adam(model.parameters(), lr=1e-3), inputs=[x, y],
                         threads=threads, distributed=world > 1)
    batches = _batches(per_rank, rank, world, steps)
    for batch in batches[:WARMUP]:
        trainer.step(batch)
    gc.distributed.barrier()
    start = time.perf_counter()
    for batch in batches[WARMUP:]:
        trainer.step(batch)
    gc.distributed.barrier()
    seconds = time.perf_counter() - start
    reduced = 0
    if world > 1:
        reduced = trainer.session.grad_session.get_outputs()[0].shape[0] * 4  # float32 reduce.buffer
    return {"rank": rank, "samples_per_s": per_rank * world * steps / seconds, "bytes_reduced": reduced}


def torch_worker(per_rank: int, steps: int, threads: int, rank: int, world: int, port: int) -> dict:
    import torch
    import torch.nn as tnn

    torch.set_num_threads(threads)
    if world > 1:
        import torch.distributed as dist
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = tnn.Sequential(
        tnn.Conv2d(1, 16, 3, padding=1, bias=False), tnn.BatchNorm2d(16), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Conv2d(16, 32, 3, padding=1, bias=False), tnn.BatchNorm2d(32), tnn.ReLU(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Dropout(0.25), tnn.Linear(32 * 2 * 2, 10))
    reduced = sum(p.numel() * 4 for p in model.parameters())
    if world > 1:
        model = tnn.parallel.DistributedDataParallel(model, broadcast_buffers=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = [(torch.from_numpy(xb), torch.from_numpy(yb)) for xb, yb in _batches(per_rank, rank, world, steps)]

    def step(xb, yb):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        optimizer.step()

    for xb, yb in batches[:WARMUP]:
        step(xb, yb)
    if world > 1:
        dist.barrier()
    start = time.perf_counter()
    for xb, yb in batches[WARMUP:]:
        step(xb, yb)
    if world > 1:
        dist.barrier()
    seconds = time.perf_counter() - start
    if world > 1:
        dist.destroy_process_group()
    return {"rank": rank, "samples_per_s": per_rank * world * steps / seconds,
            "bytes_reduced": reduced if world > 1 else 0}


def _env() -> dict:
    return dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _result(output: str) -> dict:
    lines = [json.loads(s[len("RESULT "):]) for s in output.splitlines() if s.startswith("RESULT ")]
    return next(r for r in lines if r["rank"] == 0)


def _run(config: str, args) -> dict:
    me = [sys.executable, os.path.abspath(__file__), "--steps", str(args.steps)]
    batch = args.global_batch
    if config == "graphc 1x2":
        command = me + ["--worker", "graphc", "--per-rank", str(batch), "--threads", "2"]
    elif config == "graphc 2x1":
        mpirun = os.path.join(os.path.dirname(sys.executable), "mpirun")
        command = [mpirun, "--oversubscribe", "-n", "2"] + me + ["--worker", "graphc", "--per-rank",
                                                                  str(batch // 2), "--threads", "1"]
    elif config == "torch 1x2":
        command = me + ["--worker", "torch", "--per-rank", str(batch), "--threads", "2"]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        procs = [subprocess.Popen(me + ["--worker", "torch", "--per-rank", str(batch // 2), "--threads", "1",
                                        "--rank", str(r), "--world", "2", "--port", str(port)],
                                  env=_env(), stdout=subprocess.PIPE, text=True) for r in range(2)]
        outputs = [p.communicate(timeout=600)[0] for p in procs]
        return _result("".join(outputs))
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"{config} failed:\n{done.stderr[-3000:]}")
    return _result(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--worker", choices=["graphc", "torch"])
    parser.add_argument("--per-rank", type=int)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--world", type=int, default=1)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if args.worker == "graphc":
        print("RESULT " + json.dumps(graphc_worker(args.per_rank, args.steps, args.threads)), flush=True)
        return
    if args.worker == "torch":
        result = torch_worker(args.per_rank, args.steps, args.threads, args.rank, args.world, args.port)
        print("RESULT " + json.dumps(result), flush=True)
        return
    configs = ["graphc 1x2", "graphc 2x1", "torch 1x2", "torch DDP 2x1"]
    rates = {c: [] for c in configs}
    reduced = {}
    for round_index in range(args.rounds):
        for config in configs:
            result = _run(config, args)
            rates[config].append(result["samples_per_s"])
            reduced[config] = result["bytes_reduced"]
            print(f"round {round_index + 1}: {config:14s} {result['samples_per_s']:8.0f} samples/s", flush=True)
    print(f"\ndigits CNN, Adam, global batch {args.global_batch}, {args.steps} timed steps, median of "
          f"{args.rounds} rounds")
    print("| configuration | samples/s | 2-process efficiency | bytes reduced per step |\n|---|---|---|---|")
    for config in configs:
        rate = float(np.median(rates[config]))
        base = float(np.median(rates[config.split()[0] + " 1x2"]))
        eff = f"{rate / base:.2f}" if "2x1" in config else ""
        print(f"| {config} | {rate:.0f} | {eff} | {reduced[config] or ''} |")


if __name__ == "__main__":
    main()
