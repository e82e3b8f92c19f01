"""Off the CPU, an ``If`` marked ``THEN_ALWAYS_RIGHT_KEY`` runs its then-branch unconditionally.

ONNX Runtime reads an ``If``'s condition in host memory: on CUDA each such node costs a device-to-host copy
and a stream synchronisation per run. graphc's MaxPool mask gradient (``passes/autodiff/rules/pool.py``)
uses an ``If`` only as a shortcut: its then-branch (the first-maximum mask) is right whatever the
condition, its else-branch is a cheaper equal result when no pooling window ties. So for a device session
the marked nodes are replaced by their then-branch's nodes, in place: the branch reads enclosing values by
name, its own values are named apart from the whole model's (the rule names them so), and its output
takes the ``If``'s output name through an ``Identity``. The condition's nodes stay (a few reductions on
the device, never read on the host). Unmarked ``If`` nodes are untouched.
"""

from __future__ import annotations

import onnx

from passes.names import THEN_ALWAYS_RIGHT_KEY


def _marked(node: onnx.NodeProto) -> bool:
    return node.op_type == "If" and any(p.key == THEN_ALWAYS_RIGHT_KEY and p.value == "1" for p in node.metadata_props)


def then_branches_inlined(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` (unchanged, when it has no marked ``If``) or a copy with each marked top-level ``If`` inlined."""
    if not any(_marked(node) for node in model.graph.node):
        return model
    inlined = onnx.ModelProto()
    inlined.CopyFrom(model)
    nodes = []
    for node in inlined.graph.node:
        if not _marked(node):
            nodes.append(node)
            continue
        branch = next(a.g for a in node.attribute if a.name == "then_branch")
        nodes.extend(branch.node)
        nodes.append(onnx.helper.make_node("Identity", [branch.output[0].name], [node.output[0]],
                                           name=f"{node.name}/then_inlined"))
    del inlined.graph.node[:]
    inlined.graph.node.extend(nodes)
    return inlined
