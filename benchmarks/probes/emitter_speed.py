"""Probe: the cost of emitting one node through ``passes.emitter.Emitter`` (graph build of long unrolled steps).

    python benchmarks/probes/emitter_speed.py [--nodes 80000]

Emits Gemm (an int attribute), Split (two int attributes, four outputs), an int64 constant and Mul, a
quarter of ``--nodes`` each, and prints microseconds per node (one process, wall time).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import onnx_ir as ir  # noqa: E402

from passes.emitter import Emitter  # noqa: E402


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=80000)
    args = parser.parse_args(argv)
    e, x = Emitter(), ir.Value(name="x")
    start = time.perf_counter()
    for _ in range(args.nodes // 4):
        e.op("Gemm", [x, x], {"transB": 1})
        e.op("Split", [x], {"axis": 1, "num_outputs": 4}, num_outputs=4)
        e.ints([1, 2])
        e.op("Mul", [x, x])
    per_node = (time.perf_counter() - start) * 1e6 / (args.nodes // 4 * 4)
    print(f"{per_node:.1f} us per node ({args.nodes // 4 * 4} nodes)")
    return per_node


if __name__ == "__main__":
    main()
