"""Benchmark: the tutorial MLP (784-128-64-10, batch 64) training step, graphc vs PyTorch eager.

    python benchmarks/bench_mlp.py [--rounds 3] [--steps 500] [--optimizer adam|sgd] [--infer-runs 300]

Each engine runs in a process of its own, the engines taking turns over ``--rounds`` rounds
(``common.take_turns``); per round a worker reports the median of ``--steps`` steps (after 50
untimed). Prints the median over rounds [min-max] of each, the median of the per-round ratios,
and the floor: the step's FLOPs over the GEMM rate measured here. Inference (``--infer-runs``, 0 skips it):
graphc's export and PyTorch's own export (``torch.onnx.export(..., dynamo=False)``) on plain
``onnxruntime.InferenceSession``s, and PyTorch eager under ``torch.inference_mode()``, each in its own process.
PyTorch is only the reference peer (the script needs it installed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np

import graphc as gc
import graphc.nn.functional as F
from graphc import nn

from common import (
    gemm_gflops, peak_rss_mb, report, report_inference, round_ratios, spread, take_turns, time_ms, worker_spec,
)

SIZES = (784, 128, 64, 10)
BATCH = 64


def graphc_model():
    layers = []
    for i in range(len(SIZES) - 1):
        layers.append(nn.Linear(SIZES[i], SIZES[i + 1]))
        if i < len(SIZES) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def torch_model():
    import torch
    layers = []
    for i in range(len(SIZES) - 1):
        layers.append(torch.nn.Linear(SIZES[i], SIZES[i + 1]))
        if i < len(SIZES) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def build_graphc(optimizer: str):
    gc.manual_seed(0)
    x = gc.input("x", shape=("batch", SIZES[0]))
    y = gc.input("y", shape=("batch",), dtype="int64")
    model = graphc_model()
    loss = F.cross_entropy(model(x), y)
    opt = gc.optim.Adam(model.parameters(), lr=1e-3) if optimizer == "adam" else \
        gc.optim.SGD(model.parameters(), lr=1e-2)
    trainer = gc.Trainer(loss, opt, inputs=[x, y])
    return lambda xb, yb: trainer.step({"x": xb, "y": yb})


def build_torch(optimizer: str):
    import torch
    torch.manual_seed(0)
    model = torch_model()
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


def infer_worker(engine: str, runs: int) -> dict:
    """Eval-mode inference of one engine: graphc's export on ORT, ORT on PyTorch's own export, or PyTorch eager."""
    import onnxruntime as ort

    xb = np.random.default_rng(1).standard_normal((BATCH, SIZES[0])).astype(np.float32)
    with tempfile.TemporaryDirectory() as workdir:
        path = os.path.join(workdir, "mlp.onnx")
        if engine == "graphc_ort":
            gc.manual_seed(0)
            x = gc.input("x", shape=("batch", SIZES[0]))
            gc.compile([x], {"logits": graphc_model().eval()(x)}).save(path)
        else:
            import torch
            torch.manual_seed(0)
            tmodel = torch_model().eval()
            if engine == "eager":
                txb = torch.from_numpy(xb)

                def eager():
                    with torch.inference_mode():
                        return tmodel(txb)
                return {"median_ms": float(np.median(time_ms(eager, runs, warmup=20)))}
            with torch.no_grad():
                torch.onnx.export(tmodel, (torch.from_numpy(xb),), path, input_names=["x"], output_names=["logits"],
                                  dynamic_axes={"x": {0: "batch"}}, opset_version=17, dynamo=False)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return {"median_ms": float(np.median(time_ms(lambda: session.run(None, {"x": xb}), runs, warmup=20)))}


def worker(spec: dict) -> None:
    if spec.get("task") == "infer":
        report(infer_worker(spec["engine"], spec["runs"]))
        return
    rng = np.random.default_rng(0)
    pool = [(rng.standard_normal((BATCH, SIZES[0])).astype(np.float32), rng.integers(0, 10, BATCH))
            for _ in range(100)]
    step = build_graphc(spec["optimizer"]) if spec["engine"] == "graphc" else build_torch(spec["optimizer"])
    count = [0]

    def one():
        xb, yb = pool[count[0] % len(pool)]
        count[0] += 1
        step(xb, yb)
    times = time_ms(one, spec["steps"], warmup=50)
    report({"median_ms": float(np.median(times)), "peak_rss_mb": peak_rss_mb()})


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    parser.add_argument("--infer-runs", type=int, default=300, help="inference calls timed per turn (0: skip)")
    args = parser.parse_args(argv)
    runs = take_turns(__file__, {e: {"engine": e, "optimizer": args.optimizer, "steps": args.steps}
                                 for e in ("graphc", "torch")}, args.rounds)
    rate = gemm_gflops()
    results = {"graphc_ms": float(np.median([r["median_ms"] for r in runs["graphc"]])),
               "torch_ms": float(np.median([r["median_ms"] for r in runs["torch"]])),
               "ratio": float(np.median(round_ratios(runs, "graphc", "torch"))),
               "floor_ms": step_flops() / (rate * 1e9) * 1e3,
               "rounds": {"graphc_ms": [r["median_ms"] for r in runs["graphc"]],
                          "torch_ms": [r["median_ms"] for r in runs["torch"]],
                          "ratio": round_ratios(runs, "graphc", "torch")}}
    print(f"MLP 784-128-64-10, batch {BATCH}, {args.optimizer}; {args.rounds} rounds, each engine in a process of "
          f"its own; per round the median of {args.steps} steps; median over rounds [min-max]")
    print(f"  graphc (ONNX Runtime CPU): {spread(r['median_ms'] for r in runs['graphc'])} ms/step")
    print(f"  PyTorch eager:             {spread(r['median_ms'] for r in runs['torch'])} ms/step")
    print(f"  ratio graphc / PyTorch:    {spread(round_ratios(runs, 'graphc', 'torch'))}")
    print(f"  floor ({step_flops() / 1e6:.1f} MFLOP at {rate:.0f} GFLOP/s): {results['floor_ms']:.3f} ms/step")
    print(f"  peak RSS (MB): graphc {spread(r['peak_rss_mb'] for r in runs['graphc'])}, "
          f"PyTorch {spread(r['peak_rss_mb'] for r in runs['torch'])}")
    if args.infer_runs:
        infer = take_turns(__file__, {e: {"task": "infer", "engine": e, "runs": args.infer_runs}
                                      for e in ("graphc_ort", "torch_ort", "eager")}, args.rounds)
        report_inference(infer, results, BATCH, args.infer_runs)
    return results


if __name__ == "__main__":
    spec = worker_spec(sys.argv[1:])
    worker(spec) if spec is not None else main()
