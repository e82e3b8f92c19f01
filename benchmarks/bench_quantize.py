"""Benchmark: int8 quantization of the digits samples (MLP, CNN, LSTM) in ONNX Runtime on CPU.

    python benchmarks/bench_quantize.py [--runs 200] [--batch 64] [--out /tmp/bench_quantize]

Per model: float32 (trained with Adam, as the sample), dynamic int8 and static int8 (``gc.quantize``,
ONNX Runtime's quantizer; static calibrated on 512 training rows), and QAT int8 (``prepare_qat`` on the
trained float model, fine-tuned a few epochs at a tenth of the learning rate, exported as QDQ); and
PyTorch's ``quantize_dynamic`` (Linear and LSTM, qint8) on the MLP and the LSTM, loading graphc's
trained weights. Columns: held-out accuracy, file size (and its ratio to float32), median latency of
one batch (and its ratio to float32). ONNX Runtime and PyTorch run one after the other in this process.
Targets (issue 10): accuracy within 1 point of float32, files <= 0.3x, CNN static latency <= 0.8x.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

import graphc as gc
import graphc.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "samples"))
from cnn_digits import DigitsCNN  # noqa: E402
from lstm_digits import RowLSTM  # noqa: E402
from mlp_digits import MLP  # noqa: E402

MODELS = {  # name: (module class, input shape after the batch dim, epochs, lr, batch size)
    "mlp": (MLP, (64,), 30, 1e-3, 64),
    "cnn": (DigitsCNN, (1, 8, 8), 20, 3e-3, 32),
    "lstm": (RowLSTM, (8, 8), 30, 1e-2, 32),
}


def digits(name: str):
    X, y = gc.data.load_digits(flatten=name == "mlp")
    if name == "lstm":
        X = np.ascontiguousarray(X[:, 0])
    return gc.data.train_test_split(X, y, test_fraction=0.2, seed=0)


def train(model, x, labels, data, epochs: int, lr: float, batch: int) -> None:
    X_train, _, y_train, _ = data
    model.train()
    trainer = gc.Trainer(F.cross_entropy(model(x), labels), gc.optim.Adam(model.parameters(), lr=lr),
                         inputs=[x, labels], seed=0)
    for epoch in range(epochs):
        for xb, yb in gc.data.DataLoader(X_train, y_train, batch_size=batch, shuffle=True, seed=epoch):
            trainer.step({"x": xb, "y": yb})


def export(model, x, path: str) -> None:
    model.eval()
    gc.compile([x], {"logits": model(x)}).save(path)


def ort_measure(path: str, X_test, y_test, batch: int, runs: int) -> dict:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    accuracy = float((session.run(None, {name: X_test})[0].argmax(1) == y_test).mean())
    xb = X_test[:batch]
    for _ in range(20):
        session.run(None, {name: xb})
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, {name: xb})
        times.append(time.perf_counter() - start)
    return {"accuracy": accuracy, "bytes": os.path.getsize(path), "ms": statistics.median(times) * 1e3}


def torch_dynamic(name: str, model, X_test, y_test, batch: int, runs: int) -> dict | None:
    """PyTorch's quantize_dynamic on the same trained weights (graphc's state_dict loads as is)."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    if name == "mlp":
        net = torch.nn.Sequential()
        net.fc1, net.fc2, net.fc3 = torch.nn.Linear(64, 128), torch.nn.Linear(128, 64), torch.nn.Linear(64, 10)
        forward = lambda m, x: m.fc3(torch.relu(m.fc2(torch.relu(m.fc1(x)))))  # noqa: E731
    else:
        net = torch.nn.Module()
        net.lstm = torch.nn.LSTM(8, 64, num_layers=2, batch_first=True)
        net.fc = torch.nn.Linear(64, 10)
        forward = lambda m, x: m.fc(m.lstm(x)[0][:, -1, :])  # noqa: E731
    net.load_state_dict({k: torch.from_numpy(v) for k, v in model.state_dict().items()})
    quantized = torch.ao.quantization.quantize_dynamic(net, {torch.nn.Linear, torch.nn.LSTM}, dtype=torch.qint8)
    buffer = io.BytesIO()
    torch.save(quantized.state_dict(), buffer)
    with torch.no_grad():
        accuracy = float((forward(quantized, torch.from_numpy(X_test)).argmax(1).numpy() == y_test).mean())
        xb = torch.from_numpy(X_test[:batch])
        for _ in range(20):
            forward(quantized, xb)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            forward(quantized, xb)
            times.append(time.perf_counter() - start)
    return {"accuracy": accuracy, "bytes": buffer.getbuffer().nbytes, "ms": statistics.median(times) * 1e3}


def bench(name: str, out: str, batch: int, runs: int) -> dict:
    cls, shape, epochs, lr, train_batch = MODELS[name]
    data = digits(name)
    X_train, X_test, _, y_test = data
    gc.manual_seed(0)
    x, labels = gc.input("x", ("batch", *shape)), gc.input("y", ("batch",), "int64")
    model = cls()
    train(model, x, labels, data, epochs, lr, train_batch)
    fp32 = os.path.join(out, f"{name}.onnx")
    export(model, x, fp32)
    paths = {"fp32": fp32, "dynamic int8": os.path.join(out, f"{name}.dyn.onnx"),
             "static int8": os.path.join(out, f"{name}.static.onnx"), "QAT int8": os.path.join(out, f"{name}.qat.onnx")}
    gc.quantize(fp32, paths["dynamic int8"], mode="dynamic")
    calibration = [{"x": X_train[i:i + 64]} for i in range(0, 512, 64)]
    gc.quantize(fp32, paths["static int8"], calibration=calibration)
    torch_result = torch_dynamic(name, model, X_test, y_test, batch, runs) if name in ("mlp", "lstm") else None
    gc.quantization.prepare_qat(model)  # fine-tune the trained float model with fake quantization
    train(model, x, labels, data, max(3, epochs // 4), lr / 10, train_batch)
    export(model, x, paths["QAT int8"])
    results = {kind: ort_measure(path, X_test, y_test, batch, runs) for kind, path in paths.items()}
    if torch_result is not None:
        results["PyTorch dynamic int8"] = torch_result
    return results


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "bench_quantize"))
    parser.add_argument("--models", default="mlp,cnn,lstm")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    print(f"| model | variant | accuracy | file bytes | size vs fp32 | latency (batch {args.batch}) | vs fp32 |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models.split(","):
        results = bench(name, args.out, args.batch, args.runs)
        base = results["fp32"]
        for kind, r in results.items():
            print(f"| {name} | {kind} | {r['accuracy']:.4f} | {r['bytes']:,} | {r['bytes'] / base['bytes']:.2f}x | "
                  f"{r['ms']:.3f} ms | {r['ms'] / base['ms']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
