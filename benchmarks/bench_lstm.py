"""Benchmark: the tutorial LSTM classifier: training step, build time and inference, graphc vs PyTorch eager.

    python benchmarks/bench_lstm.py [--rounds 3] [--steps 100] [--seq static|symbolic] [--threads N]
                                    [--infer-runs 100] [--length 28] [--build-only]

A 2-layer LSTM (hidden 128, batch_first) reads 28 rows of 28 features (an
MNIST image row by row); its last time step feeds a Linear(128, 10);
cross-entropy; Adam(lr=1e-3); batch 64. Each engine runs in a process of its
own, the engines taking turns over ``--rounds`` rounds (``common.take_turns``);
per round a worker reports the median of ``--steps`` steps; the table shows the
median over rounds [min-max] and the median of the per-round ratios. The graphc
worker also reports the Trainer's build time (graph + session) and node count.
``--seq symbolic`` builds the graphc model with a symbolic sequence length (the
Scan lowering) instead of the unrolled one. Inference: graphc's eval export, ONNX
Runtime on PyTorch's own export, PyTorch eager, each in its own process too.
``--length N`` unrolls N time steps instead of 28 (every measurement). ``--build-only`` times only
graphc's Trainer build, ``--rounds`` times, each in a fresh process: the graph (``gc.Trainer(...)``) and
the first step (which creates the ONNX Runtime session), wall and process CPU time (issue 11's
build-time target: <= 5 s for 300 steps).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time

import numpy as np

import graphc as gc
import graphc.nn.functional as F
from graphc import nn

from common import peak_rss_mb, report, report_inference, round_ratios, spread, take_turns, time_ms, worker_spec

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
    start, cpu = time.perf_counter(), time.process_time()
    trainer = gc.Trainer(loss, gc.optim.Adam(model.parameters(), lr=1e-3), inputs=[x, y], threads=threads)
    graph_s, graph_cpu = time.perf_counter() - start, time.process_time() - cpu
    # The ONNX Runtime session is created at the first step (its batch dims pinned): build = graph + first step.
    trainer.step({"x": np.zeros((BATCH, STEPS, FEATURES), np.float32), "y": np.zeros((BATCH,), np.int64)})
    build_s = time.perf_counter() - start
    nodes = len(trainer.step_model.graph.node)
    timing = {"graph_s": graph_s, "graph_cpu_s": graph_cpu, "first_step_s": build_s - graph_s,
              "build_cpu_s": time.process_time() - cpu}
    return (lambda xb, yb: trainer.step({"x": xb, "y": yb})), build_s, nodes, timing


def build_worker(threads: int | None) -> dict:
    """Only the Trainer build (graph + first step): issue 11's build-time figure.

    The first step is split into session creation (time inside ``create_session``) and the rest (the
    first run: ONNX Runtime plans its memory pattern there, ~3x a later step).
    """
    import runtime.training_session as training_session

    create, spent = training_session.create_session, []

    def timed(*args, **kwargs):
        start = time.perf_counter()
        try:
            return create(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)
    training_session.create_session = timed
    _, build_s, nodes, timing = build_graphc("static", threads)
    return {"build_s": build_s, "nodes": nodes, "session_s": sum(spent), **timing}


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


def inference_worker(engine: str, runs: int) -> dict:
    """Eval-mode inference of one engine: graphc's export on ORT, ORT on PyTorch's own export, or PyTorch eager."""
    import onnxruntime as ort

    xb = np.random.default_rng(1).standard_normal((BATCH, STEPS, FEATURES)).astype(np.float32)
    if engine == "graphc_ort":
        gc.manual_seed(0)
        model = Classifier().eval()  # eval mode emits ONNX's own LSTM op
        x = gc.input("x", shape=("batch", STEPS, FEATURES))
        with tempfile.TemporaryDirectory() as folder:
            gc.compile([x], {"logits": model(x)}).save(f"{folder}/lstm.onnx")
            session = ort.InferenceSession(f"{folder}/lstm.onnx", providers=["CPUExecutionProvider"])
        run = lambda: session.run(None, {"x": xb})  # noqa: E731
    else:
        import torch
        torch.manual_seed(0)
        tmodel = _torch_classifier().eval()
        if engine == "eager":
            def run():
                with torch.inference_mode():
                    return tmodel(torch.from_numpy(xb))
        else:
            with tempfile.TemporaryDirectory() as folder, torch.no_grad():
                torch.onnx.export(tmodel, (torch.from_numpy(xb),), f"{folder}/lstm.onnx", input_names=["x"],
                                  output_names=["logits"], dynamic_axes={"x": {0: "batch"}}, dynamo=False)
                session = ort.InferenceSession(f"{folder}/lstm.onnx", providers=["CPUExecutionProvider"])
            run = lambda: session.run(None, {"x": xb})  # noqa: E731
    return {"median_ms": float(np.median(time_ms(run, runs, warmup=5)))}


def train_worker(engine: str, seq: str, threads: int | None, steps: int) -> dict:
    rng = np.random.default_rng(0)
    data = [(rng.standard_normal((BATCH, STEPS, FEATURES)).astype(np.float32),
             rng.integers(0, CLASSES, BATCH).astype(np.int64)) for _ in range(10)]
    extra = {}
    if engine == "graphc":
        step, build_s, nodes, _ = build_graphc(seq, threads)
        extra = {"build_s": build_s, "nodes": nodes}
    else:
        step = build_torch()
    count = [0]

    def one():
        xb, yb = data[count[0] % len(data)]
        count[0] += 1
        step(xb, yb)
    times = time_ms(one, steps)
    return {"median_ms": float(np.median(times)), "peak_rss_mb": peak_rss_mb(), **extra}


def worker(spec: dict) -> None:
    global STEPS
    STEPS = spec.get("length", STEPS)
    if spec["task"] == "build":
        report(build_worker(spec["threads"]))
    elif spec["task"] == "train":
        report(train_worker(spec["engine"], spec["seq"], spec["threads"], spec["steps"]))
    else:
        report(inference_worker(spec["engine"], spec["runs"]))


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
    global STEPS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seq", choices=["static", "symbolic"], default="static")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads")
    parser.add_argument("--infer-runs", type=int, default=100, help="inference calls timed per turn (0: skip)")
    parser.add_argument("--length", type=int, default=STEPS, help="time steps per sequence (unrolled length)")
    parser.add_argument("--build-only", action="store_true", help="time only graphc's Trainer build, per round")
    args = parser.parse_args(argv)
    STEPS = args.length
    if args.build_only:
        return build_main(args)
    train = take_turns(__file__, {e: {"task": "train", "engine": e, "seq": args.seq, "threads": args.threads,
                                      "steps": args.steps, "length": STEPS} for e in ("graphc", "torch")},
                       args.rounds)
    ratios = round_ratios(train, "graphc", "torch")
    results = {"graphc_ms": float(np.median([r["median_ms"] for r in train["graphc"]])),
               "torch_ms": float(np.median([r["median_ms"] for r in train["torch"]])),
               "ratio": float(np.median(ratios)),
               "build_s": float(np.median([r["build_s"] for r in train["graphc"]])),
               "nodes": train["graphc"][0]["nodes"],
               "rounds": {"graphc_ms": [r["median_ms"] for r in train["graphc"]],
                          "torch_ms": [r["median_ms"] for r in train["torch"]], "ratio": ratios}}
    print(f"LSTM {LAYERS}x{HIDDEN} over {STEPS}x{FEATURES}, batch {BATCH}, Adam, {args.seq} length; {args.rounds} "
          f"rounds, each engine in a process of its own; per round the median of {args.steps} steps; "
          f"median over rounds [min-max]")
    print(f"  graphc (ONNX Runtime CPU): {spread(r['median_ms'] for r in train['graphc'])} ms/step  "
          f"(step graph: {results['nodes']} nodes; Trainer built in {spread(r['build_s'] for r in train['graphc'])} s)")
    print(f"  PyTorch eager:             {spread(r['median_ms'] for r in train['torch'])} ms/step")
    print(f"  ratio graphc / PyTorch:    {spread(ratios)}")
    print(f"  peak RSS (MB): graphc {spread(r['peak_rss_mb'] for r in train['graphc'])}, "
          f"PyTorch {spread(r['peak_rss_mb'] for r in train['torch'])}")
    if args.infer_runs:
        infer = take_turns(__file__, {e: {"task": "infer", "engine": e, "runs": args.infer_runs, "length": STEPS}
                                      for e in ("graphc_ort", "torch_ort", "eager")}, args.rounds)
        report_inference(infer, results, BATCH, args.infer_runs)
    return results


def build_main(args) -> dict:
    """``--build-only``: the Trainer build of the unrolled classifier, each round in a fresh process."""
    runs = take_turns(__file__, {"build": {"task": "build", "threads": args.threads, "length": STEPS}},
                      args.rounds)["build"]
    print(f"Trainer build, LSTM {LAYERS}x{HIDDEN} unrolled over {STEPS} steps, symbolic batch ({runs[0]['nodes']} "
          f"step nodes); {args.rounds} rounds, each in a fresh process; median [min-max], seconds")
    print(f"  graph (gc.Trainer):                 {spread(r['graph_s'] for r in runs)}  "
          f"(CPU {spread(r['graph_cpu_s'] for r in runs)})")
    print(f"  first step:                         {spread(r['first_step_s'] for r in runs)}  "
          f"(of which session creation {spread(r['session_s'] for r in runs)})")
    print(f"  graph + session creation:           {spread(r['graph_s'] + r['session_s'] for r in runs)}")
    print(f"  build = graph + first step:         {spread(r['build_s'] for r in runs)}  "
          f"(CPU {spread(r['build_cpu_s'] for r in runs)})")
    return {"build_s": float(np.median([r["build_s"] for r in runs])), "nodes": runs[0]["nodes"]}


if __name__ == "__main__":
    spec = worker_spec(sys.argv[1:])
    worker(spec) if spec is not None else main()
