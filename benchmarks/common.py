"""Helpers the benchmark scripts share: runners taking turns, the measured GEMM rate."""

from __future__ import annotations

import statistics
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
