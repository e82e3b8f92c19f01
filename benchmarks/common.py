"""Helpers the benchmark scripts share: engines in processes of their own taking turns, the measured GEMM rate."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np


def interleaved_ms(steps: dict, batches, warmup: int = 20, block: int = 10) -> tuple[dict, list]:
    """Median ms per step of each runner, the runners taking turns every ``block`` batches.

    Taking turns exposes both to the same machine load (other processes share
    these 2 cores), so their ratio is meaningful even when absolute times drift.
    Blocks rather than single steps: a runner's worker threads keep spinning a
    little after it returns, which would slow the other's next step. Also
    returns, per round, each runner's block median (for per-round ratios).
    """
    for xb, yb in batches[:warmup]:
        for step in steps.values():
            step(xb, yb)
    times = {name: [] for name in steps}
    rounds = []
    for first in range(0, len(batches), block):
        medians = {}
        for name, step in steps.items():
            block_times = []
            for xb, yb in batches[first:first + block]:
                start = time.perf_counter()
                step(xb, yb)
                block_times.append(time.perf_counter() - start)
            times[name] += block_times
            medians[name] = statistics.median(block_times)
        rounds.append(medians)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}, rounds


def gemm_gflops(n: int = 1024, repeats: int = 20) -> float:
    """float32 GEMM rate of this machine (numpy's BLAS, all cores): the floor's denominator."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    a @ a
    start = time.perf_counter()
    for _ in range(repeats):
        a @ a
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


# ---- one process per engine ---------------------------------------------------------------------
# Each measurement runs in a fresh process of its own (``python SCRIPT --worker SPEC``), the engines
# taking turns over several rounds: in one process the idle worker threads of one engine keep spinning
# and slow the other (PyTorch's MLP step: 10.9 ms taking turns in one process, 2.0 ms in its own).

RESULT_TAG = "BENCH_RESULT "


def worker_spec(argv) -> dict | None:
    """The JSON spec after ``--worker`` in ``argv``, or None when this process is the driver."""
    if len(argv) >= 2 and argv[0] == "--worker":
        return json.loads(argv[1])
    return None


def report(result: dict) -> None:
    """A worker's last word: one tagged JSON line on stdout for the driver."""
    print(RESULT_TAG + json.dumps(result), flush=True)


def run_worker(script: str, spec: dict, timeout: float = 900) -> dict:
    """Run ``script --worker spec`` in a new Python process and return the result it reported."""
    done = subprocess.run([sys.executable, script, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          timeout=timeout, cwd=os.path.dirname(os.path.abspath(script)))
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_TAG):
            return json.loads(line[len(RESULT_TAG):])
    raise RuntimeError(f"benchmark worker {spec} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def take_turns(script: str, specs: dict, rounds: int) -> dict:
    """Each spec run once per round, each in its own process, the order reversed every other round.

    Returns name -> list of the results of each round.
    """
    results = {name: [] for name in specs}
    for r in range(rounds):
        order = list(specs) if r % 2 == 0 else list(reversed(list(specs)))
        for name in order:
            results[name].append(run_worker(script, specs[name]))
    return results


def time_ms(fn, calls: int, warmup: int = 10) -> list[float]:
    """Milliseconds of each of ``calls`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def cpu_ms_per_call(fn, calls: int) -> float:
    """CPU time (all threads of this process) per call: steadier than wall time on a loaded machine,
    but it also counts worker threads spinning while they wait."""
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) * 1e3 / calls


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MB.

    Linux's ``VmHWM`` (the high-water mark of this process image, reset by ``exec``), not ``ru_maxrss``:
    a worker forked from a driver that has grown (bench_all.py's driver imports torch) starts with the
    driver's pages resident, and ``ru_maxrss`` keeps that maximum across ``exec`` (the LSTM worker
    reported 310 MB that way, 222 MB on its own). ``ru_maxrss`` where /proc is not there.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def report_inference(infer: dict, results: dict, batch: int, runs: int) -> None:
    """Print the inference rounds of ``graphc_ort``, ``torch_ort`` and ``eager`` and add their figures to
    ``results`` (medians, the median per-round ratio graphc / torch->ORT, and the per-round ratios)."""
    ratios = round_ratios(infer, "graphc_ort", "torch_ort")
    results["inference_ms"] = {e: float(np.median([r["median_ms"] for r in infer[e]])) for e in infer}
    results["inference_ratio"] = float(np.median(ratios))
    results.setdefault("rounds", {})["inference_ratio"] = ratios
    print(f"inference, eval mode, batch {batch}, per round the median of {runs} calls (ms):")
    for name, label in (("graphc_ort", "graphc export on ORT"), ("torch_ort", "torch export on ORT"),
                        ("eager", "torch eager")):
        print(f"  {label:22s} {spread(r['median_ms'] for r in infer[name])}")
    print(f"  ratio graphc / torch->ORT: {spread(ratios)}")


def compare_settings(script: str, models: list[str], settings: list[str], steps: int, rounds: int,
                     threads: int | None, width: int = 24) -> None:
    """The step-variant probes' driver: each setting of each model in its own process, taking turns
    (``script --worker {"model", "setting", "steps", "threads"}`` reports ``median_ms`` and ``cpu_ms``);
    prints per setting the median step ms, its ratio to ``settings[0]`` in the same round, and the same
    for the CPU ms per step."""
    for model in models:
        specs = {s: {"model": model, "setting": s, "steps": steps, "threads": threads} for s in settings}
        runs = take_turns(script, specs, rounds)
        print(f"{model} (threads {threads or 'default'}), {rounds} rounds [min-max]: median step ms, "
              f"ratio to {settings[0]} in the same round; CPU ms per step, ratio")
        for s in settings:
            print(f"  {s:{width}s} {spread(r['median_ms'] for r in runs[s]):>22s}  "
                  f"{spread(round_ratios(runs, s, settings[0])):>18s}  {spread(r['cpu_ms'] for r in runs[s]):>22s}  "
                  f"{spread(round_ratios(runs, s, settings[0], 'cpu_ms')):>18s}")


def settings_main(script: str, doc: str, models: str, settings: str, rounds: int, steps: int, width: int = 24,
                  argv=None) -> None:
    """The step-variant probes' command line (``--models``, ``--rounds``, ``--steps``, ``--settings``,
    ``--threads``, the defaults given here), then ``compare_settings``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=models)
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--settings", default=settings)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    compare_settings(script, args.models.split(","), args.settings.split(","), args.steps, args.rounds,
                     args.threads, width=width)


def spread(values) -> str:
    """``median [min-max]`` of per-round figures."""
    values = list(values)
    return f"{statistics.median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"


def round_ratios(results: dict, numerator: str, denominator: str, key: str = "median_ms") -> list[float]:
    """Per-round ratio of two engines' figures (the rounds ran back to back, under the same load)."""
    return [a[key] / b[key] for a, b in zip(results[numerator], results[denominator])]
