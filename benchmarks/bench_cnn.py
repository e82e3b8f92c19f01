"""Benchmark: the tutorial CNNs, batch 64, Adam: training step, peak memory and inference, graphc vs PyTorch.

    python benchmarks/bench_cnn.py [--rounds 3] [--steps 60] [--infer-runs 100] [--models lenet,cnn]

Models (3x32x32 inputs): the CIFAR-10 tutorial LeNet, and the padded CNN
(conv 3->32 3x3 pad 1, BN, relu, maxpool 2, conv 32->64 3x3 pad 1, BN, relu,
maxpool 2, dropout 0.5, linear 4096->10; convs without bias, as before BN).

Every figure comes from a process of its own (``common.take_turns``): the
engines take turns, round after round, so both see the same machine load and
neither sees the other's idle threads. Per round a worker reports the median
of its timed calls; the table shows the median over rounds and [min-max].

- Training: graphc's Trainer (one ONNX Runtime call per step) against PyTorch
  eager (zero_grad, forward, backward, Adam step); the ratio is the median of
  the per-round ratios. The floor is the step's convolution and matrix FLOPs
  (forward, weight and input gradients) over the GEMM rate measured here.
- Peak RSS: ``ru_maxrss`` of the training worker after its fixed number of
  steps (warm-up included), each engine in its own process.
- Inference (eval mode): graphc's export and PyTorch's own export
  (``torch.onnx.export(..., dynamo=False)``) on plain ``onnxruntime.InferenceSession``s,
  and PyTorch eager under ``torch.inference_mode()``.
PyTorch is only the reference peer (the script needs it installed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

import numpy as np
import onnxruntime as ort

import graphc as gc
import graphc.nn.functional as F
from graphc import nn

from common import gemm_gflops, peak_rss_mb, report, round_ratios, spread, take_turns, time_ms, worker_spec

BATCH = 64


# ---- graphc models ---------------------------------------------------------------
class LeNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.pool, self.conv2 = nn.Conv2d(3, 6, 5), nn.MaxPool2d(2, 2), nn.Conv2d(6, 16, 5)
        self.fc1, self.fc2, self.fc3 = nn.Linear(400, 120), nn.Linear(120, 84), nn.Linear(84, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x))).flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class PaddedCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32)
        self.conv2, self.bn2 = nn.Conv2d(32, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64)
        self.pool, self.dropout, self.fc = nn.MaxPool2d(2), nn.Dropout(0.5), nn.Linear(64 * 8 * 8, 10)

    def forward(self, x):
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        return self.fc(self.dropout(x.flatten(1)))


# ---- the same models in PyTorch ---------------------------------------------------------
def torch_models():
    import torch
    TNN = torch.nn

    class TorchLeNet(TNN.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.pool, self.conv2 = TNN.Conv2d(3, 6, 5), TNN.MaxPool2d(2, 2), TNN.Conv2d(6, 16, 5)
            self.fc1, self.fc2, self.fc3 = TNN.Linear(400, 120), TNN.Linear(120, 84), TNN.Linear(84, 10)

        def forward(self, x):
            x = self.pool(torch.relu(self.conv1(x)))
            x = torch.flatten(self.pool(torch.relu(self.conv2(x))), 1)
            return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    class TorchPaddedCNN(TNN.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = TNN.Conv2d(3, 32, 3, padding=1, bias=False), TNN.BatchNorm2d(32)
            self.conv2, self.bn2 = TNN.Conv2d(32, 64, 3, padding=1, bias=False), TNN.BatchNorm2d(64)
            self.pool, self.dropout, self.fc = TNN.MaxPool2d(2), TNN.Dropout(0.5), TNN.Linear(64 * 8 * 8, 10)

        def forward(self, x):
            x = self.pool(torch.relu(self.bn1(self.conv1(x))))
            x = self.pool(torch.relu(self.bn2(self.conv2(x))))
            return self.fc(self.dropout(torch.flatten(x, 1)))

    return {"lenet": TorchLeNet, "cnn": TorchPaddedCNN}


MODELS = {"lenet": ("LeNet 3x32x32", LeNet), "cnn": ("CNN 32-64 ch, pad 1, BN, 3x32x32", PaddedCNN)}


# (layer kind, in channels, out channels, kernel, output positions per sample) of each model
LAYERS = {"lenet": [("conv", 3, 6, 5, 28 * 28), ("conv", 6, 16, 5, 10 * 10), ("fc", 400, 120, 1, 1),
                    ("fc", 120, 84, 1, 1), ("fc", 84, 10, 1, 1)],
          "cnn": [("conv", 3, 32, 3, 32 * 32), ("conv", 32, 64, 3, 16 * 16), ("fc", 4096, 10, 1, 1)]}


def step_flops(key: str) -> float:
    """Forward + weight gradient of every layer, + input gradient of all but the first."""
    products = [2 * BATCH * cin * cout * k * k * positions for _, cin, cout, k, positions in LAYERS[key]]
    return 2 * sum(products) + sum(products[1:])


def batches(count: int = 10):
    rng = np.random.default_rng(0)
    return [(rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, BATCH))
            for _ in range(count)]


def train_worker(engine: str, key: str, steps: int) -> dict:
    data = batches()
    if engine == "graphc":
        gc.manual_seed(0)
        model = MODELS[key][1]()
        x = gc.input("x", shape=("batch", 3, 32, 32))
        y = gc.input("y", shape=("batch",), dtype="int64")
        trainer = gc.Trainer(F.cross_entropy(model(x), y), gc.optim.Adam(model.parameters(), lr=1e-3),
                             inputs=[x, y], seed=0)

        def step(i=[0]):
            xb, yb = data[i[0] % len(data)]
            i[0] += 1
            trainer.step({"x": xb, "y": yb})
    else:
        import torch
        torch.manual_seed(0)
        tmodel = torch_models()[key]()
        topt = torch.optim.Adam(tmodel.parameters(), lr=1e-3)
        tdata = [(torch.from_numpy(xb), torch.from_numpy(yb)) for xb, yb in data]

        def step(i=[0]):
            xb, yb = tdata[i[0] % len(tdata)]
            i[0] += 1
            topt.zero_grad()
            loss = torch.nn.functional.cross_entropy(tmodel(xb), yb)
            loss.backward()
            topt.step()
            return loss.item()
    times = time_ms(step, steps)
    return {"median_ms": float(np.median(times)), "peak_rss_mb": peak_rss_mb()}


def infer_worker(engine: str, key: str, runs: int) -> dict:
    xb = batches(1)[0][0]
    with tempfile.TemporaryDirectory() as workdir:
        path = os.path.join(workdir, "model.onnx")
        if engine == "graphc_ort":
            gc.manual_seed(0)
            model = MODELS[key][1]().eval()
            x = gc.input("x", shape=("batch", 3, 32, 32))
            gc.compile([x], {"logits": model(x)}).save(path)
        else:
            import torch
            torch.manual_seed(0)
            tmodel = torch_models()[key]().eval()
            if engine == "eager":
                txb = torch.from_numpy(xb)

                def eager():
                    with torch.inference_mode():
                        return tmodel(txb)
                return {"median_ms": float(np.median(time_ms(eager, runs)))}
            with torch.no_grad():
                torch.onnx.export(tmodel, (torch.from_numpy(xb),), path, input_names=["x"], output_names=["logits"],
                                  dynamic_axes={"x": {0: "batch"}}, opset_version=17, dynamo=False)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return {"median_ms": float(np.median(time_ms(lambda: session.run(None, {"x": xb}), runs)))}


def worker(spec: dict) -> None:
    if spec["task"] == "train":
        report(train_worker(spec["engine"], spec["model"], spec["steps"]))
    else:
        report(infer_worker(spec["engine"], spec["model"], spec["runs"]))


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="turns each engine takes (one process per turn)")
    parser.add_argument("--steps", type=int, default=60, help="training steps timed per turn")
    parser.add_argument("--infer-runs", type=int, default=100, help="inference calls timed per turn")
    parser.add_argument("--models", default="lenet,cnn")
    parser.add_argument("--no-inference", action="store_true")
    args = parser.parse_args(argv)
    rate = gemm_gflops()
    rows = []
    for key in args.models.split(","):
        train = take_turns(__file__, {engine: {"task": "train", "engine": engine, "model": key, "steps": args.steps}
                                      for engine in ("graphc", "torch")}, args.rounds)
        row = {"title": MODELS[key][0], "train": train, "ratio": round_ratios(train, "graphc", "torch"),
               "floor_ms": step_flops(key) / (rate * 1e9) * 1e3}
        if not args.no_inference:
            infer = take_turns(__file__, {engine: {"task": "infer", "engine": engine, "model": key,
                                                   "runs": args.infer_runs}
                                          for engine in ("graphc_ort", "torch_ort", "eager")}, args.rounds)
            row.update(infer=infer, infer_ratio=round_ratios(infer, "graphc_ort", "torch_ort"))
        rows.append(row)
    import torch
    print(f"batch {BATCH}, Adam lr 1e-3; {args.rounds} rounds, each engine in a process of its own per round; "
          f"per round the median of {args.steps} steps / {args.infer_runs} inference calls; figures: median over "
          f"rounds [min-max]; torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
          f"{ort.__version__}, GEMM rate {rate:.0f} GFLOP/s")
    print("training step (ms)")
    print(f"  {'model':34s} {'graphc':>20s} {'PyTorch eager':>20s} {'ratio':>18s} {'floor':>6s}")
    for r in rows:
        print(f"  {r['title']:34s} {spread(t['median_ms'] for t in r['train']['graphc']):>20s} "
              f"{spread(t['median_ms'] for t in r['train']['torch']):>20s} {spread(r['ratio']):>18s} "
              f"{r['floor_ms']:6.2f}")
    print(f"peak RSS of a training run ({args.steps + 10} steps, MB)")
    for r in rows:
        print(f"  {r['title']:34s} graphc {spread(t['peak_rss_mb'] for t in r['train']['graphc'])}  "
              f"PyTorch {spread(t['peak_rss_mb'] for t in r['train']['torch'])}")
    if not args.no_inference:
        print("inference, eval mode (ms)")
        print(f"  {'model':34s} {'graphc ORT':>20s} {'torch->ORT':>20s} {'eager':>20s} {'graphc/t->ORT':>18s}")
        for r in rows:
            i = r["infer"]
            print(f"  {r['title']:34s} {spread(t['median_ms'] for t in i['graphc_ort']):>20s} "
                  f"{spread(t['median_ms'] for t in i['torch_ort']):>20s} {spread(t['median_ms'] for t in i['eager']):>20s} "
                  f"{spread(r['infer_ratio']):>18s}")
    return rows


if __name__ == "__main__":
    spec = worker_spec(sys.argv[1:])
    worker(spec) if spec is not None else main()
