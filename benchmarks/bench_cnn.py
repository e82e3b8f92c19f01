"""Benchmark: the tutorial CNNs, batch 64, Adam: training step and inference, graphc vs PyTorch.

    python benchmarks/bench_cnn.py [--steps 100] [--infer-runs 200] [--models lenet,cnn]

Models (3x32x32 inputs): the CIFAR-10 tutorial LeNet, and the padded CNN
(conv 3->32 3x3 pad 1, BN, relu, maxpool 2, conv 32->64 3x3 pad 1, BN, relu,
maxpool 2, dropout 0.5, linear 4096->10; convs without bias, as before BN).

Training: median ms per step of graphc's Trainer (one ONNX Runtime call) and
of PyTorch eager (zero_grad, forward, backward, Adam step), same process, same
batches; the ratio graphc / PyTorch.

Inference (eval mode, batch 64): median ms of
- graphc's exported eval model on a plain ``onnxruntime.InferenceSession``,
- PyTorch's own ONNX export (``torch.onnx.export(..., dynamo=False)``: the
  dynamo exporter needs onnxscript, not installed here) on the same kind of session,
- PyTorch eager under ``torch.inference_mode()``.
PyTorch is only the reference peer (the script needs it installed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import onnxruntime as ort

import graphc as gc
import graphc.nn.functional as F
from graphc import nn

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


def interleaved_median_ms(runners: dict, args_list, warmup: int = 10) -> dict:
    """Median ms per call of each runner, called round-robin on the same arguments.

    Round-robin rather than one runner after the other: on a shared machine the
    load then falls on all runners alike, so their ratio holds up.
    """
    for args in args_list[:warmup]:
        for fn in runners.values():
            fn(*args)
    times = {name: [] for name in runners}
    for args in args_list:
        for name, fn in runners.items():
            start = time.perf_counter()
            fn(*args)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


def bench_model(key: str, steps: int, infer_runs: int, workdir: str) -> dict:
    import torch
    title, gc_cls = MODELS[key]
    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32), rng.integers(0, 10, BATCH))
               for _ in range(steps)]

    torch.manual_seed(0)
    tmodel = torch_models()[key]()
    gc.manual_seed(0)
    model = gc_cls()
    model.load_state_dict(tmodel.state_dict())

    # graphc training step
    x = gc.input("x", shape=("batch", 3, 32, 32))
    y = gc.input("y", shape=("batch",), dtype="int64")
    loss = F.cross_entropy(model(x), y)
    trainer = gc.Trainer(loss, gc.optim.Adam(model.parameters(), lr=1e-3), inputs=[x, y], seed=0)

    # PyTorch eager training step
    topt = torch.optim.Adam(tmodel.parameters(), lr=1e-3)

    def torch_step(xb, yb):
        topt.zero_grad()
        tloss = torch.nn.functional.cross_entropy(tmodel(torch.from_numpy(xb)), torch.from_numpy(yb))
        tloss.backward()
        topt.step()
        return tloss.item()
    train = interleaved_median_ms({"graphc": lambda xb, yb: trainer.step({"x": xb, "y": yb}),
                                   "torch": torch_step}, batches)

    # Inference: graphc's eval export and PyTorch's export, each on a plain InferenceSession.
    model.load_state_dict(tmodel.state_dict())  # the same weights and statistics on both sides
    model.eval()
    tmodel.eval()
    graphc_path = os.path.join(workdir, f"{key}_graphc.onnx")
    gc.compile([x], {"logits": model(x)}).save(graphc_path)
    torch_path = os.path.join(workdir, f"{key}_torch.onnx")
    with torch.no_grad():
        torch.onnx.export(tmodel, (torch.from_numpy(batches[0][0]),), torch_path, input_names=["x"],
                          output_names=["logits"], dynamic_axes={"x": {0: "batch"}}, opset_version=17, dynamo=False)
    inputs = [(xb,) for xb, _ in batches]
    inputs = (inputs * (infer_runs // len(inputs) + 1))[:infer_runs]
    sessions = {name: ort.InferenceSession(path, providers=["CPUExecutionProvider"])
                for name, path in (("graphc", graphc_path), ("torch", torch_path))}
    outs = {name: s.run(None, {"x": inputs[0][0]})[0] for name, s in sessions.items()}
    with torch.inference_mode():
        eager_out = tmodel(torch.from_numpy(inputs[0][0])).numpy()
    agree = max(float(np.abs(outs["graphc"] - eager_out).max()), float(np.abs(outs["torch"] - eager_out).max()))

    def eager(xb):
        with torch.inference_mode():
            return tmodel(torch.from_numpy(xb))
    runners = {name: (lambda xb, s=s: s.run(None, {"x": xb})) for name, s in sessions.items()}
    infer = interleaved_median_ms({**runners, "eager": eager}, inputs)
    return {"title": title, "graphc_train_ms": train["graphc"], "torch_train_ms": train["torch"],
            "train_ratio": train["graphc"] / train["torch"], "graphc_ort_ms": infer["graphc"],
            "torch_ort_ms": infer["torch"], "torch_eager_ms": infer["eager"], "max_abs_diff": agree}


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="training steps timed per framework")
    parser.add_argument("--infer-runs", type=int, default=200, help="inference calls timed per runner")
    parser.add_argument("--models", default="lenet,cnn")
    args = parser.parse_args(argv)
    import torch
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for key in args.models.split(","):
            results.append(bench_model(key, args.steps, args.infer_runs, workdir))

    print(f"batch {BATCH}, Adam lr 1e-3; medians of {args.steps} training steps / {args.infer_runs} inference "
          f"calls; torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__}")
    print("training step (ms)")
    print(f"  {'model':36s} {'graphc':>8s} {'PyTorch':>8s} {'ratio':>6s}")
    for r in results:
        print(f"  {r['title']:36s} {r['graphc_train_ms']:8.2f} {r['torch_train_ms']:8.2f} {r['train_ratio']:6.2f}")
    print("inference, eval mode (ms)")
    print(f"  {'model':36s} {'graphc ORT':>10s} {'torch->ORT':>10s} {'eager':>8s} {'graphc/t->ORT':>13s}")
    for r in results:
        print(f"  {r['title']:36s} {r['graphc_ort_ms']:10.2f} {r['torch_ort_ms']:10.2f} {r['torch_eager_ms']:8.2f} "
              f"{r['graphc_ort_ms'] / r['torch_ort_ms']:13.2f}")
    print("  (torch->ORT: torch.onnx.export(..., dynamo=False); max |logits - eager|, both exports, same weights: "
          + ", ".join(f"{r['max_abs_diff']:.1e}" for r in results) + ")")
    return results


if __name__ == "__main__":
    main()
