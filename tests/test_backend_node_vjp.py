"""Peer suite: ONNX's backend node tests against graphc's VJP rules (float64 finite differences).

Every node test whose ops all have a rule is cast to float64; ``AutodiffPass`` differentiates
``sum_k sum(out_k * w_k)`` (``w_k`` random cotangents) w.r.t. each differentiable input, and the result
must match central finite differences of the forward on ONNX Runtime (or onnx's reference evaluator
where ONNX Runtime lacks a double kernel). The harness is ``tools/gradient_coverage.py``, which also
writes ``docs/gradient-coverage.md``.

Cases that cannot be checked are skipped with the harness's reason (integer-only, non-differentiable
outputs, random masks, kinks and ties in the test data, a forward ONNX Runtime and the reference both
reject). A rule that raises ``NotImplementedError`` for a case is a known gap (xfail, with the rule's
message); wrong gradients known at the time of writing are listed in ``KNOWN_WRONG`` (xfail, not strict:
other engineers are fixing those rules).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.gradient_coverage import check, node_cases, skip_reason  # noqa: E402

KNOWN_WRONG = {
    # Not a rule bug: ONNX Runtime has no double Resize, so the finite differences run on onnx's reference
    # evaluator, whose align_corners maps by the fractional in * scale (4 * 0.6 = 2.4; onnx/onnx#2462); ONNX
    # Runtime and torch map by floor(in * scale) = 2, and the rule is ONNX Runtime's gradient (checked against
    # torch on ONNX Runtime in test_layers_more.py, bilinear_align_corners_down_scale_node_case).
    "test_resize_downsample_scales_linear_align_corners": "onnx's reference Resize (align_corners, fractional "
                                                           "in * scale) differs from ONNX Runtime's forward",
}

_CASES = node_cases()
_CHECKED = [c for c in _CASES if skip_reason(c.name, c.model) is None]


@pytest.mark.parametrize("case", _CHECKED, ids=[c.name for c in _CHECKED])
def test_node_case_gradient_matches_finite_differences(case):
    if case.name in KNOWN_WRONG:
        pytest.xfail(KNOWN_WRONG[case.name])
    outcome = check(case)
    if outcome.status == "skipped":
        pytest.skip(outcome.reason)
    if outcome.status == "failed" and outcome.reason.startswith("NotImplementedError"):
        pytest.xfail(f"known gradient gap: {outcome.reason}")
    assert outcome.status == "passed", f"{case.name} ({', '.join(outcome.ops)}): {outcome.reason}"


def test_the_peer_suite_checks_the_new_rules():
    """Guards against a harness that silently checks nothing: these ops must each pass some node test."""
    passed_ops = set()
    wanted = {"Gelu", "LayerNormalization", "GroupNormalization", "InstanceNormalization", "GlobalAveragePool",
              "GlobalMaxPool", "Pad", "Gather", "GatherElements", "GatherND", "ScatterND", "Tile", "Einsum",
              "Softplus", "LeakyRelu", "Elu", "HardSigmoid", "HardSwish", "Sin", "Cos", "ReduceL2",
              "ReduceLogSumExp", "TopK", "SoftmaxCrossEntropyLoss"}  # Trilu's node tests are int64 only
    for case in _CHECKED:
        ops = {n.op_type for n in case.model.graph.node}
        if len(ops) == 1 and ops <= wanted and not ops <= passed_ops and check(case).status == "passed":
            passed_ops |= ops
    assert passed_ops == wanted, f"no passing node test for {sorted(wanted - passed_ops)}"
