"""``FoldConstantsPass``: evaluate nodes whose inputs are all constants that are not weights.

Why: exporters compute static operands at run time (the dynamo exporter
builds ``ReduceMean``'s axes with ``Reshape(Constant, Constant)``), and rules
need them as ``const_value``. Weights (float initializers from the file) are
never folded: they are the parameters being trained.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx.reference import ReferenceEvaluator

from passes.autodiff.registry import is_float
from passes.normalize.constants import LIFTED_KEY

MAX_FOLDED_ELEMENTS = 1 << 16  # keep folded results small: they are operands (shapes, axes), not tensors
_NEVER_FOLDED = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial",
                           "Bernoulli", "Dropout"})


def is_static(value: ir.Value | None, graph: ir.Graph) -> bool:
    """A constant operand: an initializer that is not a weight (non-float, or lifted from a Constant node)."""
    if value is None:
        return True
    if value.const_value is None or value.name not in graph.initializers:
        return False
    return not is_float(value) or bool(value.meta.get(LIFTED_KEY))


class FoldConstantsPass(ir.passes.InPlacePass):
    """Rewrites: a main-graph node (no subgraph, not random) whose inputs are all static (see
    :func:`is_static`) and whose outputs have at most ``MAX_FOLDED_ELEMENTS`` elements is replaced by
    initializers holding its outputs (marked ``meta[LIFTED_KEY]``), repeatedly, in graph order.

    Invariant: the outputs are unchanged; weights are never folded; graph outputs are never removed.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        opset = model.opset_imports.get("", 21)
        folded = []
        for node in list(graph):
            if (node.domain not in ("", "ai.onnx") or node.op_type in _NEVER_FOLDED
                    or any(isinstance(a.value, ir.Graph) or a.type == ir.AttributeType.GRAPHS
                           for a in node.attributes.values())
                    or any(o in graph.outputs for o in node.outputs)
                    or not all(is_static(v, graph) for v in node.inputs)):
                continue
            results = _evaluate(node, opset)
            if results is None:
                continue
            for index, (value, array) in enumerate(zip(node.outputs, results)):
                const = ir.Value(name=value.name or f"{node.name}_folded_{index}", const_value=ir.Tensor(array),
                                 type=ir.TensorType(ir.DataType.from_numpy(array.dtype)), shape=ir.Shape(array.shape))
                const.meta[LIFTED_KEY] = True
                ir.convenience.replace_all_uses_with(value, const)
                value.name = None  # the name moves to the initializer
                graph.register_initializer(const)
            folded.append(node)
        if folded:
            graph.remove(folded, safe=True)
        return ir.passes.PassResult(model, modified=bool(folded))


def _evaluate(node: ir.Node, opset: int) -> list[np.ndarray] | None:
    names = [f"in{i}" if v is not None else "" for i, v in enumerate(node.inputs)]
    outputs = [f"out{i}" for i in range(len(node.outputs))]
    attributes = [ir.serde.serialize_attribute(a) for a in node.attributes.values()]
    proto = onnx.helper.make_node(node.op_type, names, outputs)
    proto.attribute.extend(attributes)
    graph = onnx.helper.make_graph([proto], "fold", [], [onnx.helper.make_empty_tensor_value_info(o) for o in outputs])
    feeds = {n: v.const_value.numpy() for n, v in zip(names, node.inputs) if v is not None}
    try:
        evaluator = ReferenceEvaluator(onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)]))
        results = evaluator.run(None, feeds)
    except Exception:  # noqa: BLE001 (an op the reference cannot run stays a node: folding is an optimisation)
        return None
    results = [np.asarray(r) for r in results]
    if any(r.size > MAX_FOLDED_ELEMENTS or r.dtype == object for r in results):
        return None
    return results
