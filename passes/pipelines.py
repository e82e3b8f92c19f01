"""The middle end's pipelines, in one place: which passes run, in which order, for each job.

- ``import_pipeline()``: an imported ``.onnx`` model -> graphc's opset, constants as initializers,
  folded constant subgraphs, inferred shapes, ``CastLike`` -> ``Cast`` (``passes/normalize``).
- ``gradient_pipeline(loss, wrt)``: recurrent lowering, ``AutodiffPass`` (``<w>.grad`` outputs), cleanup.
- ``training_step_pipeline(step_pass)``: recurrent lowering, MaxPool before ReLU, MaxPool on a
  one-channel view, ``TrainingStepPass`` (autodiff + optimizer update, ``passes/training_step.py``), cleanup; what ``gc.Trainer`` builds through ``build_training_step``.
- ``cleanup_pipeline()``: dead nodes, common subexpressions, gradient-sum fusion, topological order,
  unique names; the end of every training graph (also the data-parallel pair of ``split_step``).
- ``inference_pipeline()``: the export pipeline of ``passes/export`` (what ``gc.compile`` runs and saves).

A ``Pipeline`` is ``onnx_ir``'s ``Sequential`` that keeps one report per pass and lets a pass's own
error through: a user reads "no gradient rule for ONNX op 'Foo'", not a wrapped ``PassError``.
"""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import (
    CommonSubexpressionEliminationPass,
    NameFixPass,
    RemoveUnusedNodesPass,
)

from passes.autodiff.autodiff_pass import AutodiffPass
from passes.conv_from_patches import ConvFromPatchesPass
from passes.export.pipeline import PassReport, export_passes
from passes.fuse_gradient_sums import FuseGradientSumsPass
from passes.lower_differentiated_recurrent import LowerDifferentiatedRecurrentPass
from passes.normalize.cast_like import CastLikeToCastPass
from passes.normalize.constants import ConstantsToInitializersPass
from passes.normalize.fold_constants import FoldConstantsPass
from passes.normalize.opset import ConvertOpsetPass
from passes.normalize.shapes import InferShapesPass
from passes.pool_before_relu import PoolBeforeReluPass
from passes.pool_channel_view import PoolOnChannelViewPass
from passes.topological_order import TopologicalOrderPass
from passes.training_step import TrainingStepPass

NamedPass = tuple[str, ir.passes.PassBase]


class Pipeline(ir.passes.Sequential):
    """Named passes run in order; ``reports`` says what each changed (node counts, ``modified``)."""

    def __init__(self, *named: NamedPass):
        super().__init__(*(p for _, p in named))
        self.names = [name for name, _ in named]
        self.reports: list[PassReport] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        self.reports = []
        modified = False
        after = _count_nodes(model.graph)
        for name, step in zip(self.names, self.passes):
            before = after  # one count per pass, not two: a count walks the whole graph (~20k nodes at 300 steps)
            result = step(model)
            model, modified = result.model, modified or result.modified
            after = _count_nodes(model.graph)
            self.reports.append(PassReport(name, before, after, result.modified))
        return ir.passes.PassResult(model, modified)

    def __add__(self, other: Pipeline) -> Pipeline:
        return Pipeline(*zip(self.names, self.passes), *zip(other.names, other.passes))


def import_pipeline() -> Pipeline:
    """Normalisation of an imported model before graphc builds on it (``gc.load_onnx``)."""
    return Pipeline(("convert-opset", ConvertOpsetPass()),
                    ("constants-to-initializers", ConstantsToInitializersPass()),
                    ("fold-constants", FoldConstantsPass()),
                    ("infer-shapes", InferShapesPass()),
                    ("cast-like-to-cast", CastLikeToCastPass()))


def cleanup_pipeline() -> Pipeline:
    """After autodiff: the backward pass repeats forward work and leaves unread values behind."""
    return Pipeline(("remove-dead-nodes", RemoveUnusedNodesPass()),
                    ("cse", CommonSubexpressionEliminationPass()),
                    ("fuse-gradient-sums", FuseGradientSumsPass()),
                    ("topological-sort", TopologicalOrderPass()),  # sorts only a graph out of order
                    ("fix-names", NameFixPass()))


def gradient_pipeline(loss: str, wrt: list[str]) -> Pipeline:
    """``<w>.grad`` outputs for each ``w`` in ``wrt`` (inputs or initializers), cleaned up."""
    return Pipeline(("lower-recurrent", LowerDifferentiatedRecurrentPass(loss, wrt)),
                    ("autodiff", AutodiffPass(loss, wrt))) + cleanup_pipeline()


def training_step_pipeline(step_pass: TrainingStepPass) -> Pipeline:
    """The training step: ``step_pass`` (autodiff + optimizer update) between lowering and cleanup.

    The forward's ``MaxPool(Relu(x))`` are swapped to ``Relu(MaxPool(x))`` first (exact in value and
    gradient; a smaller ReLU and ReLU mask: ``passes/pool_before_relu.py``), and MaxPools run on a
    one-channel view, out of ONNX Runtime's NCHWc reorders (``passes/pool_channel_view.py``). After the
    step, a forward Conv whose weight gradient built batch-last patches is computed from them
    (``passes/conv_from_patches.py``; the cleanup's topological sort puts it back in order).
    """
    return Pipeline(("lower-recurrent", LowerDifferentiatedRecurrentPass(step_pass.loss, step_pass.trainable)),
                    ("pool-before-relu", PoolBeforeReluPass()),
                    ("pool-on-channel-view", PoolOnChannelViewPass()),
                    ("training-step", step_pass),
                    ("conv-from-patches", ConvFromPatchesPass())) + cleanup_pipeline()


def inference_pipeline() -> Pipeline:
    """The export pipeline (``passes/export/pipeline.py``): folding, fusions, clean-up."""
    return Pipeline(*export_passes())


_SUBGRAPH_OPS = frozenset({"If", "Loop", "Scan", "SequenceMap"})  # the ai.onnx ops with graph attributes


def _count_nodes(graph: ir.Graph) -> int:
    """The nodes of ``graph`` and of its subgraphs, as ``graph.all_nodes()`` yields them, in about 40% of
    its time (17 vs 39 ms at 22k nodes): only nodes that can hold a subgraph have their attributes read."""
    count = len(graph)
    for node in graph:
        if node.op_type not in _SUBGRAPH_OPS and node.domain in ("", "ai.onnx"):
            continue
        for attr in node.attributes.values():
            if isinstance(attr, ir.Attr) and attr.type == ir.AttributeType.GRAPH:
                count += _count_nodes(attr.value)
            elif isinstance(attr, ir.Attr) and attr.type == ir.AttributeType.GRAPHS:
                count += sum(_count_nodes(subgraph) for subgraph in attr.value)
    return count
