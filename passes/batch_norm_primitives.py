"""``BatchNormTrainingToPrimitivesPass``: training-mode ``BatchNormalization`` as primitive ops, for non-CPU providers.

graphc's builder emits one ``BatchNormalization(training_mode=1, momentum=0)`` per training-mode batch
norm, and on ONNX Runtime's CPU kernel reads the batch mean and biased variance back from its "running"
outputs (``graphc/nn/functional_spatial.py``; the gradient rule reads them too). ONNX Runtime's GPU
kernels do not hold to that: versions refuse ``training_mode`` at opset >= 14 at session creation, and
cuDNN's training call tracks the *unbiased* variance and takes ``momentum`` the other way round (an open
ONNX Runtime pull request, "Fix multiple CUDA BatchNorm bugs", lists both). Read back there, the
statistics would silently be wrong, and with them the gradient. So for any provider but the CPU the
Trainer runs this pass on the forward before autodiff, ``Trainer.training_model()`` (the portable step,
for any binding) on the differentiated step, and ``gc.compile`` for a provider other than the CPU: every
training-mode node becomes

    mean = ReduceMean(x, axes); c = x - mean; var = ReduceMean(c * c, axes)
    y = c * (scale * 1/sqrt(var + eps)) + b                      (per channel, broadcast)
    running_mean_out = input_mean * momentum + mean * (1 - momentum)   (ONNX's definition; the biased var)

which every provider computes alike. Before autodiff, the gradient goes through the primitives (rules
for each exist); after it, the backward keeps reading the node's outputs, now the primitives' values.
The CPU's sessions keep the single node: faster (docs/performance.md, "The padded CNN's BatchNorm").

Invariant: outputs keep their names, types and shapes; every other node is untouched; the graph stays
topologically sorted (the new nodes take the old node's place).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir


class BatchNormTrainingToPrimitivesPass(ir.passes.InPlacePass):
    """Each ``BatchNormalization`` with ``training_mode=1`` becomes ReduceMean/Sub/Mul/Sqrt ops."""

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        modified = False
        for node in list(ir.traversal.RecursiveGraphIterator(model.graph)):  # subgraphs' nodes too
            mode = node.attributes.get("training_mode")
            if node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx") \
                    or mode is None or mode.value != 1:
                continue
            x = node.inputs[0]
            if x.shape is None:  # the node would stay the CPU-only form: refuse rather than run it elsewhere
                raise ValueError(f"BatchNormalization {node.name!r} in training mode: its input's rank is unknown, "
                                 f"so it cannot be written as primitive ops (give the input a shape)")
            self._replace(node.graph, node, len(x.shape))
            modified = True
        return ir.passes.PassResult(model, modified)

    @staticmethod
    def _replace(graph: ir.Graph, bn: ir.Node, rank: int) -> None:
        x, scale, bias, input_mean, input_var = bn.inputs[:5]
        dtype = x.dtype.numpy()
        attrs = {name: attr.value for name, attr in bn.attributes.items()}
        eps, momentum = float(attrs.get("epsilon", 1e-5)), float(attrs.get("momentum", 0.9))
        nodes: list[ir.Node] = []

        def op(op_type, inputs, **attributes):
            node = ir.node(op_type, inputs, attributes=attributes, name=f"{bn.name or 'BatchNormalization'}/{op_type}_{len(nodes)}")
            nodes.append(node)
            return node.outputs[0]

        def const(value, dtype=dtype):
            tensor = ir.tensor(np.asarray(value, dtype=dtype))
            out = op("Constant", [], value=tensor)
            out.const_value = tensor  # read by the gradient rules (the reduction axes must be static)
            return out

        axes = const([0, *range(2, rank)], np.int64)
        per_channel = const([-1] + [1] * (rank - 2), np.int64)
        flat = const([-1], np.int64)
        mean = op("ReduceMean", [x, axes], keepdims=1)
        centered = op("Sub", [x, mean])
        var = op("ReduceMean", [op("Mul", [centered, centered]), axes], keepdims=1)
        inv_std = op("Reciprocal", [op("Sqrt", [op("Add", [var, const(eps)])])])
        k = op("Mul", [op("Reshape", [scale, per_channel]), inv_std])
        y = op("Add", [op("Mul", [centered, k]), op("Reshape", [bias, per_channel])])
        results = [y]
        for running, batch in ((input_mean, mean), (input_var, var)):
            batch = op("Reshape", [batch, flat])
            results.append(batch if momentum == 0.0 else
                           op("Add", [op("Mul", [running, const(momentum)]), op("Mul", [batch, const(1.0 - momentum)])]))
        graph.insert_before(bn, nodes)
        names = []
        for old, new in zip(bn.outputs, results):
            new.type = old.type
            new.shape = None if old.shape is None else ir.Shape(old.shape)
            names.append(old.name if old in graph.outputs else None)
            ir.convenience.replace_all_uses_with(old, new, replace_graph_outputs=True)
        graph.remove(bn, safe=True)
        for new, name in zip(results, names):
            if name is not None:  # a graph output keeps its name
                new.name = name
