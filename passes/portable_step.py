"""``PortableStepPass``: make a training step that any ONNX Runtime binding can drive, and its state model.

A training step built by ``passes.training_step`` takes its state (parameters,
optimizer slots, ``step``, ``lr``) as graph inputs, and, when it draws random
numbers (dropout), an ``rng_key`` input that the Python Trainer computes on the
host for every step. A loop in another binding (onnxruntime-node, C#, Java)
should feed nothing but the batch and the state it got back from the previous
step, so the key must be computed inside the graph.

Rewrites:
- the ``rng_key`` input (when present) is removed; a new int64 scalar input
  ``seed`` is added and ``rng_key`` becomes
  ``((seed & 0xFFFFFFFF) << 32) | (step & 0xFFFFFFFF)`` as int64 (two's
  complement): the function ``graphc.random.key_for_step`` computes on the host,
  for the ``step`` input (steps done so far), with ai.onnx integer ops only;
- the model's ``graphc.state_inputs`` metadata lists every state input (the
  carried ones of ``graphc.state_pairs``, then ``lr`` and ``seed``): what a
  loop gets from the state model and feeds with each batch.

Invariant: every other input, output and node is untouched; no graph input
has an initializer (an initializer-backed input is refused, since
onnxruntime-node ignores feeds for such inputs); the graph stays
topologically sorted (the new nodes come first).

``state_model(values)`` builds the companion model: no inputs, one output per
state input (named as that input), each an ``Identity`` of an initializer.
"""

from __future__ import annotations

import json

import numpy as np
import onnx_ir as ir

from passes import IR_VERSION, OPSET
from passes.names import LR, RNG_KEY, SEED, STATE_INPUTS_KEY, STATE_PAIRS_KEY, STEP

_LOW32 = 0xFFFFFFFF


def seed_value(seed: int) -> np.ndarray:
    """The ``seed`` state value for a Trainer seed: any Python int, kept modulo 2**64 as int64.

    Only its low 32 bits reach the key, exactly as in ``key_for_step``.
    """
    wrapped = int(seed) % (1 << 64)
    return np.asarray(wrapped - (1 << 64) if wrapped >= 1 << 63 else wrapped, dtype=np.int64)


class PortableStepPass(ir.passes.InPlacePass):
    """Derive ``rng_key`` from new input ``seed`` and input ``step``; list the state inputs in metadata."""

    def __init__(self, key_name: str = RNG_KEY, step_name: str = STEP, lr_name: str = LR):
        super().__init__()
        self.key_name, self.step_name, self.lr_name = key_name, step_name, lr_name

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        backed = [v.name for v in graph.inputs if v.name in graph.initializers]
        if backed:
            raise ValueError(f"portable training step: inputs {backed} have initializers; a portable step "
                             f"takes its state as plain inputs (onnxruntime-node ignores feeds for "
                             f"initializer-backed inputs)")
        inputs = {v.name: v for v in graph.inputs}
        if SEED in inputs:
            raise ValueError(f"portable training step: the model already has an input named {SEED!r}; "
                             f"expected it only after this pass")
        pairs = json.loads(model.metadata_props.get(STATE_PAIRS_KEY, "[]"))
        state = [name for name, _ in pairs]
        state += [n for n in (self.lr_name,) if n in inputs and n not in state]
        key = inputs.get(self.key_name)
        if key is not None:
            step = inputs.get(self.step_name)
            if step is None or step.dtype != ir.DataType.INT64:
                raise ValueError(f"portable training step: {self.key_name!r} must be derived from an int64 "
                                 f"scalar input {self.step_name!r}, which the model does not have")
            seed = ir.Value(name=SEED, shape=ir.Shape([]), type=ir.TensorType(ir.DataType.INT64))
            nodes, derived = _derive_key(seed, step)
            if len(graph):
                graph.insert_before(graph[0], nodes)
            else:
                graph.extend(nodes)
            key.replace_all_uses_with(derived)
            graph.inputs.remove(key)
            graph.inputs.append(seed)
            state.append(SEED)
        model.metadata_props[STATE_INPUTS_KEY] = json.dumps(state)
        return ir.passes.PassResult(model, modified=True)


def _derive_key(seed: ir.Value, step: ir.Value) -> tuple[list[ir.Node], ir.Value]:
    """Nodes computing ``key_for_step(seed, step)``; BitShift needs unsigned ints, hence the uint64 detour."""
    nodes: list[ir.Node] = []

    def op(op_type, inputs, attrs=None, dtype=ir.DataType.UINT64):
        node = ir.Node("", op_type, inputs, ir.convenience.convert_attributes(attrs or {}),
                       name=f"portable_key/{op_type}_{len(nodes)}")
        # Named here: a name the graph would assign (val_N) knows nothing of the subgraphs' names (an If
        # branch of the step may hold a val_N too, and ONNX wants every name once in the whole model).
        node.outputs[0].name = node.name
        node.outputs[0].type, node.outputs[0].shape = ir.TensorType(dtype), ir.Shape([])
        nodes.append(node)
        return node.outputs[0]

    def const(value):
        return op("Constant", [], {"value": ir.Tensor(np.asarray(value, dtype=np.uint64))})

    low32 = const(_LOW32)
    high = op("BitwiseAnd", [op("Cast", [seed], {"to": ir.DataType.UINT64}), low32])
    high = op("BitShift", [high, const(32)], {"direction": "LEFT"})
    low = op("BitwiseAnd", [op("Cast", [step], {"to": ir.DataType.UINT64}), low32])
    key = op("Cast", [op("BitwiseOr", [high, low])], {"to": ir.DataType.INT64}, dtype=ir.DataType.INT64)
    key.name = "portable_key/rng_key"
    return nodes, key


def state_model(values: dict[str, np.ndarray], doc_string: str = "") -> ir.Model:
    """A model with no inputs whose outputs are ``values``, each named as its key, in the given order.

    Initializers get internal names (``graphc.state_value.<i>``) and reach the outputs through
    ``Identity``: a graph output that is itself an initializer is not accepted everywhere.
    """
    nodes, outputs, initializers = [], [], []
    for index, (name, array) in enumerate(values.items()):
        array = np.asarray(array)
        tensor = ir.Tensor(array, name=f"graphc.state_value.{index}")
        source = ir.Value(name=tensor.name, shape=ir.Shape(array.shape),
                          type=ir.TensorType(ir.DataType.from_numpy(array.dtype)), const_value=tensor)
        initializers.append(source)
        node = ir.Node("", "Identity", [source], name=f"state/{index}")
        node.outputs[0].name = name
        node.outputs[0].type, node.outputs[0].shape = source.type, source.shape
        nodes.append(node)
        outputs.append(node.outputs[0])
    graph = ir.Graph([], outputs, nodes=nodes, initializers=initializers, opset_imports={"": OPSET},
                     name="graphc_training_state")
    return ir.Model(graph, ir_version=IR_VERSION, producer_name="graphc", doc_string=doc_string)
