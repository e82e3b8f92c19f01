"""Benchmark: graphc's eval exports (after the export pipeline) against PyTorch's ONNX export.

    python benchmarks/bench_export.py [--runs 200] [--rounds 3] [--models mlp,lenet,cnn,lstm]

For the four benchmark models (MLP 784-128-64-10, LeNet, padded CNN with BN, 2x128 LSTM
classifier; batch 64, the same weights on both sides) it prints:
- node counts: graphc's ``Program.save`` file vs ``torch.onnx.export(dynamo=False)``;
- latency with ONNX Runtime's graph optimisations off (``ORT_DISABLE_ALL``) on both files: what a
  runtime without its own optimiser would see;
- ``Program.run`` per call on the MLP vs a plain ``InferenceSession.run`` on PyTorch's export
  (default ORT options on both): graphc's own per-call overhead.
Each engine runs in a process of its own (idle ORT/PyTorch worker threads of one engine would slow
the other), the processes taking turns over ``--rounds``; medians, and the ratio of medians per round.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
BATCH = 64


def graphc_and_torch(key: str):
    """(graphc module, torch module, input shape) with the same weights, both in eval mode."""
    import torch

    import graphc as gc
    from graphc import nn

    sys.path.insert(0, HERE)
    if key == "mlp":
        torch.manual_seed(0)
        tmodel = torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 64),
                                     torch.nn.ReLU(), torch.nn.Linear(64, 10))
        model, shape = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 64), nn.ReLU(),
                                     nn.Linear(64, 10)), (BATCH, 784)
    elif key in ("lenet", "cnn"):
        from bench_cnn import LeNet, PaddedCNN, torch_models
        torch.manual_seed(0)
        tmodel = torch_models()[key]()
        model, shape = (LeNet() if key == "lenet" else PaddedCNN()), (BATCH, 3, 32, 32)
    else:
        from bench_lstm import FEATURES, STEPS, Classifier, _torch_classifier
        torch.manual_seed(0)
        tmodel, model, shape = _torch_classifier(), Classifier(), (BATCH, STEPS, FEATURES)
    model.load_state_dict({k: v.detach().numpy() for k, v in tmodel.state_dict().items()
                           if k in dict(model.state_dict())})
    tmodel.eval()
    model.eval()
    gc.manual_seed(0)
    return model, tmodel, shape


def prepare(key: str, workdir: str) -> dict:
    import onnx
    import torch

    import graphc as gc

    model, tmodel, shape = graphc_and_torch(key)
    x = gc.input("x", shape=("batch", *shape[1:]))
    paths = {e: os.path.join(workdir, f"{key}.{e}.onnx") for e in ("graphc", "torch")}
    program = gc.compile([x], {"logits": model(x)})
    program.save(paths["graphc"])
    torch.onnx.export(tmodel, (torch.zeros(shape),), paths["torch"], dynamo=False, input_names=["x"],
                      output_names=["logits"], dynamic_axes={"x": {0: "batch"}})
    xb = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    np.save(os.path.join(workdir, f"{key}.x.npy"), xb)
    return {"nodes": {e: len(onnx.load(p).graph.node) for e, p in paths.items()},
            "passes": [str(r) for r in program.export_report if r.modified]}


# ---- workers: one engine per process ---------------------------------------------------
def worker(kind: str, path: str, x_path: str, runs: int, disable_all: bool) -> float:
    import onnxruntime as ort

    xb = np.load(x_path)
    if kind == "program":
        import graphc as gc
        model, _, shape = graphc_and_torch("mlp")
        x = gc.input("x", shape=("batch", *shape[1:]))
        program = gc.compile([x], {"logits": model(x)})
        call = lambda: program.run({"x": xb})  # noqa: E731
    else:
        options = ort.SessionOptions()
        if disable_all:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        call = lambda: session.run(None, {"x": xb})  # noqa: E731
    for _ in range(max(20, runs // 10)):
        call()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def spawn(kind, path, x_path, runs, disable_all) -> float:
    out = subprocess.run([sys.executable, __file__, "--worker", kind, path, x_path, str(runs),
                          "1" if disable_all else "0"], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def taking_turns(engines: dict, rounds: int, runs: int) -> tuple[dict, list]:
    """engines: name -> (kind, path, x_path, disable_all). Median ms per engine over rounds, ratios per round."""
    per_round = []
    for _ in range(rounds):
        per_round.append({name: spawn(kind, path, x, runs, off) for name, (kind, path, x, off) in engines.items()})
    return {name: statistics.median(r[name] for r in per_round) for name in engines}, per_round


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200, help="timed calls per process")
    parser.add_argument("--rounds", type=int, default=3, help="processes per engine, taking turns")
    parser.add_argument("--models", default="mlp,lenet,cnn,lstm")
    args = parser.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="graphc-bench-export-") as workdir:
        for key in args.models.split(","):
            info = prepare(key, workdir)
            x = os.path.join(workdir, f"{key}.x.npy")
            engines = {e: ("ort", os.path.join(workdir, f"{key}.{e}.onnx"), x, True) for e in ("graphc", "torch")}
            medians, rounds = taking_turns(engines, args.rounds, args.runs)
            ratios = [r["graphc"] / r["torch"] for r in rounds]
            results[key] = {**info, "ms_disable_all": medians, "ratio_per_round": ratios}
            print(f"{key}: nodes graphc {info['nodes']['graphc']} vs torch {info['nodes']['torch']}; "
                  f"ORT_DISABLE_ALL graphc {medians['graphc']:.3f} ms vs torch {medians['torch']:.3f} ms "
                  f"(ratio per round {', '.join(f'{r:.2f}' for r in ratios)})", flush=True)
            for line in info["passes"]:
                print(f"    {line}")
        if "mlp" in args.models.split(","):
            x = os.path.join(workdir, "mlp.x.npy")
            engines = {"program": ("program", "-", x, False),
                       "ort_torch": ("ort", os.path.join(workdir, "mlp.torch.onnx"), x, False)}
            medians, rounds = taking_turns(engines, args.rounds, args.runs * 5)
            ratios = [r["program"] / r["ort_torch"] for r in rounds]
            results["mlp_program_run"] = {"ms": medians, "ratio_per_round": ratios}
            print(f"mlp Program.run {medians['program'] * 1e3:.0f} us vs ORT on torch export "
                  f"{medians['ort_torch'] * 1e3:.0f} us (ratio per round {', '.join(f'{r:.2f}' for r in ratios)})")
    return results


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        kind, path, x_path, runs, off = sys.argv[2:7]
        print(worker(kind, path, x_path, int(runs), off == "1"))
    else:
        print(json.dumps(main(), indent=1))
