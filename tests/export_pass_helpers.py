"""Shared by the ``test_pass_export_*`` files: build a graph with graphc, run a pass, compare in ORT."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort

import graphc as gc

RTOL = 1e-5


def unoptimized(inputs, outputs) -> ir.Model:
    """The ``onnx_ir`` model graphc builds for ``outputs``, before the export pipeline."""
    return ir.serde.deserialize_model(gc.compile(inputs, outputs, optimize=False).model)


def run(model: ir.Model | onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def op_types(model: ir.Model) -> list[str]:
    return [node.op_type for node in model.graph]


def apply_and_compare(export_pass, model: ir.Model, feeds: dict, atol: float = 1e-6):
    """Run ``export_pass`` in place; assert a valid model with the same outputs (rtol 1e-5). Returns the result."""
    before = run(model, feeds)
    result = export_pass(model)
    proto = ir.serde.serialize_model(model)
    onnx.checker.check_model(proto, full_check=True)
    after = run(proto, feeds)
    assert len(after) == len(before)
    for old, new in zip(before, after):
        assert old.shape == new.shape and old.dtype == new.dtype
        np.testing.assert_allclose(new, old, rtol=RTOL, atol=atol)
    return result


def randn(*shape, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
