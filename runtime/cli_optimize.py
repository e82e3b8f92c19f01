"""`graphc optimize MODEL.onnx --out OUT.onnx`: the export pipeline on any ONNX model.

Runs ``passes.export.pipeline`` (constant folding, BatchNorm folding, MatMul+Add -> Gemm, LayerNorm
and GELU fusion, no-op and dead-node removal) and prints, per pass that changed something,
``name: nodes before -> nodes after``. The result is checked (``onnx.checker``, full check) and
written atomically. Models with external tensor data are refused (exit 2): the pipeline needs the
weights in memory and writes one self-contained file.
"""

from __future__ import annotations

import json

import onnx

from runtime.atomic import atomic_write, check_output_file
from runtime.model_loading import has_external_data, load_model


def cmd_optimize(args) -> str:
    """Bad usage or a bad --out -> UsageError (exit 2); a pipeline or checker failure -> RunFailure (exit 1)."""
    from runtime.cli import RunFailure, UsageError

    out = check_output_file(args.out, UsageError, "--out", "model.opt.onnx")
    model = load_model(args.model)
    if has_external_data(model):
        raise UsageError(f"{args.model}: models with external tensor data are not supported by optimize; "
                         f"expected a self-contained .onnx file")
    # The CLI is the one composition point allowed to reach into passes/ (runtime never imports passes
    # otherwise): a lazy import, so `graphc run` and `graphc info` do not load the rewriter.
    from passes.export.pipeline import optimize_proto

    try:
        optimized, reports = optimize_proto(model)
        onnx.checker.check_model(optimized, full_check=True)
    except Exception as exc:  # the rewriter's and checker's errors share no base class
        raise RunFailure(f"optimize failed on {args.model}: {type(exc).__name__}: {exc}") from None
    data = optimized.SerializeToString()
    try:
        atomic_write(out, lambda handle: handle.write(data))
    except OSError as exc:
        raise RunFailure(f"cannot write {out}: {exc}") from None
    changed = [r for r in reports if r.modified]
    before, after = _count(model), _count(optimized)
    if getattr(args, "json", False):
        return json.dumps({"out": str(out), "nodes_before": before, "nodes_after": after,
                           "passes": [{"name": r.name, "nodes_before": r.nodes_before,
                                       "nodes_after": r.nodes_after} for r in changed]}, indent=2)
    lines = [str(r) for r in changed] or ["no pass changed the model"]
    return "\n".join(lines + [f"wrote {out}: {before} -> {after} nodes"])


def _count(model: onnx.ModelProto) -> int:
    """Nodes, subgraphs included (as the pipeline counts them)."""
    total, graphs = 0, [model.graph]
    while graphs:
        graph = graphs.pop()
        total += len(graph.node)
        for node in graph.node:
            for attribute in node.attribute:
                graphs.extend([attribute.g] if attribute.HasField("g") else [])
                graphs.extend(attribute.graphs)
    return total
