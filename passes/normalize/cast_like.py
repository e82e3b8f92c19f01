"""``CastLikeToCastPass``: ``CastLike(x, like)`` with a known ``like`` dtype becomes ``Cast(x, to=dtype)``.

Why: the dynamo exporter writes ``CastLike`` for every Python scalar it mixes
with a tensor; ``Cast`` has a gradient rule, and once the dtype is known the
two ops are the same.
"""

from __future__ import annotations

import onnx_ir as ir


class CastLikeToCastPass(ir.passes.InPlacePass):
    """Rewrites: each main-graph ``CastLike(x, like)`` whose ``like`` has a known dtype becomes
    ``Cast(x; to=like.dtype, saturate)``, same output value.

    Invariant: outputs unchanged; ``CastLike`` nodes whose target dtype is unknown are kept.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(model.graph):
            if node.op_type != "CastLike" or node.domain not in ("", "ai.onnx") or node.inputs[1] is None:
                continue
            dtype = node.inputs[1].dtype
            if dtype is None:
                continue
            attrs = {"to": dtype}
            if "saturate" in node.attributes:
                attrs["saturate"] = node.attributes["saturate"].value
            cast = ir.Node("", "Cast", [node.inputs[0]], ir.convenience.convert_attributes(attrs),
                           name=node.name, num_outputs=1)
            old = node.outputs[0]
            cast.outputs[0].type, cast.outputs[0].shape = old.type, old.shape
            model.graph.insert_before(node, cast)
            ir.convenience.replace_all_uses_with(old, cast.outputs[0], replace_graph_outputs=True)
            cast.outputs[0].name = old.name
            model.graph.remove(node, safe=True)
            modified = True
        return ir.passes.PassResult(model, modified=modified)
