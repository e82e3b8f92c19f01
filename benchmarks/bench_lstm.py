"""Benchmark: the tutorial LSTM classifier training step, graphc vs PyTorch eager.

    python benchmarks/bench_lstm.py [--steps 300] [--seq static|symbolic] [--threads N] [--infer-runs 100]

A 2-layer LSTM (hidden 128, batch_first) reads 28 rows of 28 features (an
MNIST image row by row); its last time step feeds a Linear(128, 10);
cross-entropy; Adam(lr=1e-3); batch 64. Prints the median step time of each
(same process, same batch stream, taking turns every 10 steps) and their ratio. ``--seq symbolic`` builds
the graphc model with a symbolic sequence length (the Scan lowering) instead
of the unrolled one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import graphc as gc
import graphc.nn.functional as F
from graphc import nn

from common import interleaved_ms

BATCH, STEPS, FEATURES, HIDDEN, LAYERS, CLASSES = 64, 28, 28, 128, 2, 10


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(FEATURES, HIDDEN, num_layers=LAYERS, batch_first=True)
        self.fc = nn.Linear(HIDDEN, CLASSES)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.fc(out[:, -1, :])


def build_graphc(seq: str, threads: int | None):
    gc.manual_seed(0)
    model = Classifier()
    x = gc.input("x", shape=("batch", STEPS if seq == "static" else "seq", FEATURES))
    y = gc.input("y", shape=("batch",), dtype="int64")
    loss = F.cross_entropy(model(x), y)
    start = time.perf_counter()
    trainer = gc.Trainer(loss, gc.optim.Adam(model.parameters(), lr=1e-3), inputs=[x, y], threads=threads)
    build_s = time.perf_counter() - start
    nodes = len(trainer.step_model.graph.node)
    return (lambda xb, yb: trainer.step({"x": xb, "y": yb})), build_s, nodes


def build_torch():
    import torch

    torch.manual_seed(0)
    model = _torch_classifier()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(xb, yb):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(xb)), torch.from_numpy(yb))
        loss.backward()
        opt.step()
        return loss.item()
    return step


def inference_ms(runs: int) -> dict:
    """Eval-mode inference: graphc's export on ORT, ORT on PyTorch's own export, PyTorch eager (same weights)."""
    import tempfile

    import onnxruntime as ort
    import torch

    torch.manual_seed(0)
    tmodel = _torch_classifier()
    tmodel.eval()
    model = Classifier()
    model.load_state_dict(tmodel.state_dict())
    model.eval()  # eval mode emits ONNX's own LSTM op
    x = gc.input("x", shape=("batch", STEPS, FEATURES))
    program = gc.compile([x], {"logits": model(x)})
    xb = np.random.default_rng(1).standard_normal((BATCH, STEPS, FEATURES)).astype(np.float32)
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/lstm.onnx"
        torch.onnx.export(tmodel, (torch.from_numpy(xb),), path, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}}, dynamo=False)
        torch_ort = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    runners = {
        "graphc export on ORT": lambda: program.session.run(None, {"x": xb}),
        "torch export on ORT": lambda: torch_ort.run(None, {"x": xb}),
        "torch eager": lambda: tmodel(torch.from_numpy(xb)),
    }
    expected = tmodel(torch.from_numpy(xb)).detach().numpy()
    assert np.allclose(program.run({"x": xb})["logits"], expected, atol=1e-4)
    results = {}
    with torch.no_grad():
        for name, run in runners.items():
            for _ in range(5):
                run()
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                run()
                times.append(time.perf_counter() - start)
            results[name] = statistics.median(times) * 1e3
    return results


def _torch_classifier():
    import torch

    class TorchClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = torch.nn.LSTM(FEATURES, HIDDEN, num_layers=LAYERS, batch_first=True)
            self.fc = torch.nn.Linear(HIDDEN, CLASSES)

        def forward(self, x):
            out, _ = self.lstm(x)
            return self.fc(out[:, -1, :])

    return TorchClassifier()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seq", choices=["static", "symbolic"], default="static")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    parser.add_argument("--infer-runs", type=int, default=100, help="inference calls timed per runner (0: skip)")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((BATCH, STEPS, FEATURES)).astype(np.float32),
                rng.integers(0, CLASSES, BATCH).astype(np.int64)) for _ in range(args.steps)]
    step, build_s, nodes = build_graphc(args.seq, args.threads)
    steps = {"graphc": step}
    try:
        steps["torch"] = build_torch()
    except ImportError:
        pass
    medians, rounds = interleaved_ms(steps, batches)
    results = {"graphc_ms": medians["graphc"], "build_s": build_s, "nodes": nodes}
    if "torch" in medians:
        results["torch_ms"] = medians["torch"]
        results["ratio"] = results["graphc_ms"] / results["torch_ms"]
        results["round_ratio"] = statistics.median(r["graphc"] / r["torch"] for r in rounds)
    print(f"LSTM {LAYERS}x{HIDDEN} over {STEPS}x{FEATURES}, batch {BATCH}, Adam, {args.seq} length, "
          f"median of {args.steps} steps")
    print(f"  graphc (ONNX Runtime CPU): {results['graphc_ms']:.2f} ms/step  "
          f"(step graph: {nodes} nodes, built in {build_s:.1f} s)")
    if "torch_ms" in results:
        print(f"  PyTorch eager:             {results['torch_ms']:.2f} ms/step")
        print(f"  ratio graphc / PyTorch:    {results['ratio']:.2f}  "
              f"(median of per-round ratios: {results['round_ratio']:.2f})")
    if args.infer_runs and "torch" in steps:
        results["inference_ms"] = inference_ms(args.infer_runs)
        print(f"inference, eval mode, batch {BATCH}, median of {args.infer_runs} calls:")
        for name, ms in results["inference_ms"].items():
            print(f"  {name:22s} {ms:7.2f} ms")
    return results


if __name__ == "__main__":
    main()
