"""MatMulAddToGemmPass: 2-D MatMul + Add becomes Gemm (either Add order); other ranks stay."""

from __future__ import annotations

import graphc as gc
from graphc import nn
from passes.export.matmul_add_to_gemm import MatMulAddToGemmPass

from export_pass_helpers import apply_and_compare, op_types, randn, unoptimized


def weights():
    return nn.Parameter(randn(8, 4, seed=1)), nn.Parameter(randn(4, seed=2))


def test_matmul_plus_bias_becomes_gemm():
    x = gc.input("x", shape=("batch", 8))
    w, b = weights()
    model = unoptimized([x], {"y": x @ w + b})
    assert op_types(model) == ["MatMul", "Add"]
    assert apply_and_compare(MatMulAddToGemmPass(), model, {"x": randn(3, 8)}).modified
    assert op_types(model) == ["Gemm"]


def test_bias_first_also_fuses():
    x = gc.input("x", shape=("batch", 8))
    w, b = weights()
    model = unoptimized([x], {"y": b + x @ w})
    assert apply_and_compare(MatMulAddToGemmPass(), model, {"x": randn(3, 8)}).modified
    assert op_types(model) == ["Gemm"]


def test_rank_3_matmul_stays():
    x = gc.input("x", shape=("batch", 5, 8))
    w, b = weights()
    model = unoptimized([x], {"y": x @ w + b})
    assert not apply_and_compare(MatMulAddToGemmPass(), model, {"x": randn(2, 5, 8)}).modified
    assert op_types(model) == ["MatMul", "Add"]


def test_rank_3_addend_stays():
    x = gc.input("x", shape=(3, 8))
    z = gc.input("z", shape=(2, 3, 4))
    w, _ = weights()
    model = unoptimized([x, z], {"y": x @ w + z})
    assert not apply_and_compare(MatMulAddToGemmPass(), model, {"x": randn(3, 8), "z": randn(2, 3, 4)}).modified
