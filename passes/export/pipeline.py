"""The export pipeline: the passes of ``passes/export`` in order, with what each one changed."""

from __future__ import annotations

import dataclasses

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import (
    LiftConstantsToInitializersPass,
    RemoveUnusedNodesPass,
    RemoveUnusedOpsetsPass,
)

from passes.export.fold_constants import FoldConstantsPass
from passes.export.fuse_batchnorm import FuseBatchNormPass
from passes.export.fuse_gelu import FuseGeluPass
from passes.export.fuse_layer_norm import FuseLayerNormPass
from passes.export.matmul_add_to_gemm import MatMulAddToGemmPass
from passes.export.remove_noops import RemoveNoOpsPass


@dataclasses.dataclass
class PassReport:
    name: str
    nodes_before: int
    nodes_after: int
    modified: bool

    def __str__(self) -> str:
        return f"{self.name}: {self.nodes_before} -> {self.nodes_after} nodes"


def export_passes() -> list[tuple[str, ir.passes.PassBase]]:
    """The pipeline, in order. Folding first (fusions need constant weights), clean-up last."""
    return [
        ("remove-dead-nodes", RemoveUnusedNodesPass()),
        ("fold-constants", FoldConstantsPass()),
        ("remove-no-ops", RemoveNoOpsPass()),
        ("fuse-batchnorm", FuseBatchNormPass()),
        ("matmul-add-to-gemm", MatMulAddToGemmPass()),
        ("fuse-layer-norm", FuseLayerNormPass()),
        ("fuse-gelu", FuseGeluPass()),
        # Constant nodes become initializers: the same values, fewer nodes to read or to schedule
        ("lift-constants", LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)),
        ("remove-unused-opsets", RemoveUnusedOpsetsPass()),
    ]


def optimize(model: ir.Model) -> list[PassReport]:
    """Run the export pipeline on ``model`` in place; one report per pass.

    Invariant of the whole pipeline (each pass keeps it): the same graph inputs and outputs (names,
    dtypes, shapes), the same outputs for every valid feed up to float rounding.
    """
    reports = []
    for name, export_pass in export_passes():
        before = _count_nodes(model.graph)
        modified = export_pass(model).modified
        reports.append(PassReport(name, before, _count_nodes(model.graph), modified))
    return reports


def optimize_proto(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[PassReport]]:
    """``optimize`` on a ``ModelProto`` (any ONNX model, e.g. a PyTorch export); the input is not changed."""
    ir_model = ir.serde.deserialize_model(model)
    reports = optimize(ir_model)
    return ir.serde.serialize_model(ir_model), reports


def _count_nodes(graph: ir.Graph) -> int:
    return sum(1 for _ in graph.all_nodes())
