"""Benchmark: the four tutorial models in one run, printed as one table (issue 11's table).

    python benchmarks/bench_all.py [--rounds 3] [--quick]

Runs ``bench_mlp.py``, ``bench_cnn.py`` and ``bench_lstm.py`` one after the other (each engine of each
figure in a process of its own, the engines taking turns, as those scripts do; their own reports are
printed as they finish), then one summary: training step of graphc and PyTorch eager with the median
per-round ratio and its spread, and inference of graphc's export against ONNX Runtime on PyTorch's own
export. ``--quick`` takes fewer steps and calls per turn (a smoke run, noisier figures).
"""

from __future__ import annotations

import argparse
import statistics
import sys

import bench_cnn
import bench_lstm
import bench_mlp


def _median(values) -> float:
    return float(statistics.median(values))


def _spread(values) -> str:
    values = list(values)
    return f"{_median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer steps and calls per turn")
    args = parser.parse_args(argv)
    rounds = ["--rounds", str(args.rounds)]
    steps = {"mlp": 100 if args.quick else 300, "cnn": 10 if args.quick else 30, "lstm": 10 if args.quick else 30}
    runs = 20 if args.quick else 60

    print("== MLP ==", flush=True)
    mlp = bench_mlp.main(rounds + ["--steps", str(steps["mlp"]), "--infer-runs", str(runs * 5)])
    print("== CNNs ==", flush=True)
    cnns = bench_cnn.main(rounds + ["--steps", str(steps["cnn"]), "--infer-runs", str(runs)])
    print("== LSTM ==", flush=True)
    lstm = bench_lstm.main(rounds + ["--steps", str(steps["lstm"]), "--infer-runs", str(runs)])

    rows = [{"model": "MLP 784-128-64-10", "graphc": mlp["rounds"]["graphc_ms"], "torch": mlp["rounds"]["torch_ms"],
             "ratio": mlp["rounds"]["ratio"], "infer_ratio": mlp["rounds"]["inference_ratio"]}]
    for r in cnns:
        rows.append({"model": r["title"], "graphc": [t["median_ms"] for t in r["train"]["graphc"]],
                     "torch": [t["median_ms"] for t in r["train"]["torch"]], "ratio": r["ratio"],
                     "infer_ratio": r.get("infer_ratio", [float("nan")])})
    rows.append({"model": "LSTM 2x128, 28 steps", "graphc": lstm["rounds"]["graphc_ms"],
                 "torch": lstm["rounds"]["torch_ms"], "ratio": lstm["rounds"]["ratio"],
                 "infer_ratio": lstm["rounds"]["inference_ratio"]})
    print()
    print(f"summary ({args.rounds} rounds; ms per training step, batch 64, Adam; median [min-max] over rounds)")
    print(f"  {'model':36s} {'graphc step':>22s} {'PyTorch eager step':>22s} {'ratio':>18s} {'inference ratio':>18s}")
    for row in rows:
        print(f"  {row['model']:36s} {_spread(row['graphc']):>22s} {_spread(row['torch']):>22s} "
              f"{_spread(row['ratio']):>18s} {_spread(row['infer_ratio']):>18s}")
    print("  ratio: graphc / PyTorch eager, median of the per-round ratios; inference ratio: graphc's export /")
    print("  ONNX Runtime on PyTorch's own export, both on onnxruntime.InferenceSession.")
    print(f"  LSTM Trainer build (graph + first step, which creates the session): {lstm['build_s']:.2f} s")
    return rows


if __name__ == "__main__":
    sys.exit(main() and 0)
