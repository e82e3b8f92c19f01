"""``gc.load_onnx``: an existing ``.onnx`` model as an ``nn.Module`` whose weights train like native ones.

The file is read through the runtime's checked loader (external data contained
in the model's folder, read through the checked descriptor), normalised by
``passes.normalize`` (graphc's opset, constants as initializers, inferred
shapes), and kept as a template. Calling the module on graphc tensors
re-infers shapes from the caller's inputs (so a symbolic batch dim replaces a
dim the file fixed) and inlines a fresh copy of the graph: its float
initializers are the module's Parameters (the same objects on every call), so
``gc.grad``, ``gc.Trainer``, optimizers, checkpoints and ``gc.compile`` see an
ordinary graphc graph.

Semantics are ONNX inference semantics, whatever ``train()``/``eval()`` say:
``BatchNormalization`` uses its stored statistics, ``Dropout`` is the identity.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from onnx_ir.passes.common import InlinePass

from graphc import tensor as _tensor
from graphc.errors import shape_error
from graphc.nn.module import Module
from graphc.nn.parameter import Parameter
from graphc.tensor import Tensor, emit
from graphc.user_messages import call_site
from passes.names import LIFTED_KEY, OP_KEY, SOURCE_KEY
from passes.normalize import normalize
from passes.normalize.differentiable import CheckDifferentiablePass
from passes.normalize.shapes import InferShapesPass
from runtime.atomic import atomic_write
from runtime.model_loading import (
    ModelLoadError,
    has_external_data,
    iter_tensors,
    load_model,
    read_external_data,
    validate_model,
)

_FLOAT_KINDS = {ir.DataType.FLOAT, ir.DataType.DOUBLE, ir.DataType.FLOAT16, ir.DataType.BFLOAT16}
# Inputs that hold statistics rather than weights: imported as buffers (no gradient), as PyTorch's.
_STATISTICS_INPUTS = {"BatchNormalization": (3, 4)}


def load_onnx(source, name: str | None = None) -> "ImportedModule":
    """Load an ONNX model (a path or an ``onnx.ModelProto``) as an :class:`ImportedModule`.

    >>> import graphc as gc, onnx
    >>> from onnx import helper, TensorProto, numpy_helper
    >>> import numpy as np
    >>> w = numpy_helper.from_array(np.eye(2, dtype=np.float32), "fc.weight")
    >>> g = helper.make_graph([helper.make_node("MatMul", ["x", "fc.weight"], ["y"])], "g",
    ...     [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
    ...     [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [w])
    >>> model = gc.load_onnx(helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)]))
    >>> [n for n, _ in model.named_parameters()], model(gc.input("x", ("batch", 2))).shape
    (['fc.weight'], ('batch', 2))
    """
    proto, label = _read(source)
    return ImportedModule(proto, name or label)


def _read(source) -> tuple[onnx.ModelProto, str]:
    if isinstance(source, onnx.ModelProto):
        label = f"model {source.graph.name!r}" if source.graph.name else "model"
        if has_external_data(source):
            raise ModelLoadError(f"{label}: has external tensor data; pass the model's file path instead, so the "
                                 f"data is read from the model's own folder through the checked loader")
        validate_model(source, label)
        proto = onnx.ModelProto()
        proto.CopyFrom(source)
        return proto, label
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"load_onnx: expected a path or an onnx.ModelProto, got {type(source).__name__}")
    path = Path(source)
    proto = load_model(path)  # parsed, validated, external references vetted (runtime.model_loading)
    files = read_external_data(proto, path.parent, str(path))
    for tensor in iter_tensors(proto):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {entry.key: entry.value for entry in tensor.external_data}
            data = files[info["location"]]
            offset = int(info.get("offset", 0))
            end = offset + int(info["length"]) if "length" in info else len(data)
            tensor.raw_data = data[offset:end]
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]
    return proto, str(path)


class ImportedModule(Module):
    """An ONNX model as a Module: float initializers are Parameters named as in the file.

    Call it positionally (the graph's input order) or with input names as keywords; it returns one
    Tensor for a one-output model, a tuple in output order otherwise. ``export(path)`` writes the original
    file's graph with the current weights.
    """

    def __init__(self, proto: onnx.ModelProto, name: str = "model"):
        super().__init__()
        object.__setattr__(self, "_label", name)
        object.__setattr__(self, "_original", proto)
        model = ir.serde.deserialize_model(proto)
        foreign = [n for n in model.graph.all_nodes() if n.domain not in ("", "ai.onnx") and
                   n.domain not in {f.domain for f in model.functions.values()}]
        if foreign:
            node = foreign[0]
            raise ModelLoadError(f"{name}: node {node.name!r} (op {node.domain}::{node.op_type}) is outside the "
                                 f"ai.onnx domain; load_onnx imports standard ONNX operators only")
        if model.functions:
            InlinePass()(model)  # model-local functions (some exporters emit them) become plain nodes
        file_initializers = set(model.graph.initializers)
        model = normalize(model)
        statistics = {node.inputs[i].name for node in model.graph for op, idx in _STATISTICS_INPUTS.items()
                      if node.op_type == op for i in idx if i < len(node.inputs) and node.inputs[i] is not None}
        for init_name, value in model.graph.initializers.items():
            if init_name not in file_initializers or value.meta.get(LIFTED_KEY) or value.dtype not in _FLOAT_KINDS:
                continue
            param = Parameter(value.const_value.numpy(), requires_grad=init_name not in statistics)
            param.value.name = init_name
            (self._buffers if init_name in statistics else self._parameters)[init_name] = param
        initializer_names = set(model.graph.initializers)
        inputs = [v for v in model.graph.inputs if v.name not in initializer_names]
        object.__setattr__(self, "_inputs", [(v.name, _dims(v.shape), v.dtype) for v in inputs])
        object.__setattr__(self, "_output_names", [v.name for v in model.graph.outputs])
        template = ir.serde.serialize_model(model)
        del template.graph.value_info[:]
        object.__setattr__(self, "_template", template)
        object.__setattr__(self, "_inferred", {})  # input signature -> inferred ir model, serialized

    # ---- facts about the file -------------------------------------------
    @property
    def input_names(self) -> list[str]:
        return [name for name, _, _ in self._inputs]

    @property
    def output_names(self) -> list[str]:
        return list(self._output_names)

    def input_shapes(self) -> "OrderedDict[str, tuple]":
        """The file's shape of each graph input (ints, dim names, or None)."""
        return OrderedDict((name, shape) for name, shape, _ in self._inputs)

    def check_differentiable(self) -> None:
        """Raise one error listing every node on a path from a trainable parameter that has no VJP rule."""
        trained = [name for name, p in self.named_parameters() if p.requires_grad]
        model = ir.serde.deserialize_model(self._template)
        InferShapesPass()(model)  # the template keeps no value_info; the check follows float dtypes
        CheckDifferentiablePass(trained)(model)

    # ---- calling: inline the graph ----------------------------------------
    def forward(self, *args, **kwargs):
        feeds = self._bind(args, kwargs)
        model = ir.serde.deserialize_model(self._inferred_for(feeds))
        graph = model.graph
        operation, source = call_site()
        mapped: dict[ir.Value, ir.Value] = {}
        for value in [v for v in graph.inputs if v.name in feeds]:
            mapped[value] = feeds[value.name].value
        own = {**dict(self._parameters), **dict(self._buffers)}
        for init_name, value in graph.initializers.items():
            mapped[value] = own[init_name].value if init_name in own else _constant(value)
        for old, new in mapped.items():
            ir.convenience.replace_all_uses_with(old, new)
        nodes = list(graph)
        outputs = [mapped.get(v, v) for v in graph.outputs]
        graph.outputs.clear()
        graph.remove(nodes, safe=False)
        scope = "/".join(_tensor._scope_stack)
        for node in nodes:
            node.name = f"{scope}/{node.name}" if scope else node.name
            if operation:
                node.metadata_props[OP_KEY] = operation
            node.metadata_props[SOURCE_KEY] = source
            for value in node.outputs:
                value.name = None  # several calls inline several copies; the exporter names values
        results = tuple(Tensor(v) for v in outputs)
        return results[0] if len(results) == 1 else results

    def _bind(self, args, kwargs) -> dict[str, Tensor]:
        names = self.input_names
        if len(args) > len(names):
            raise TypeError(f"{self._label}: takes {len(names)} input(s) {names}, got {len(args)} positional")
        feeds = dict(zip(names, args))
        for key, value in kwargs.items():
            if key not in names:
                raise TypeError(f"{self._label}: no input named {key!r}; inputs are {names}")
            if key in feeds:
                raise TypeError(f"{self._label}: input {key!r} given twice (positionally and by name)")
            feeds[key] = value
        missing = [n for n in names if n not in feeds]
        if missing:
            raise TypeError(f"{self._label}: missing input(s) {missing}; inputs are {names}")
        for name, shape, dtype in self._inputs:
            tensor = feeds[name]
            if not isinstance(tensor, Tensor):
                raise TypeError(f"{self._label}: input {name!r} must be a graphc Tensor (gc.input(...) or an op's "
                                f"output), got {type(tensor).__name__}")
            if tensor.value.dtype != dtype:
                raise shape_error(self._label, f"input {name!r} expects dtype {dtype.numpy()}, got {tensor.dtype}")
            if shape is not None and (tensor.shape is None or len(tensor.shape) != len(shape)):
                raise shape_error(self._label, f"input {name!r} expects rank {len(shape)} {shape}, "
                                               f"got shape {tensor.shape}")
        return feeds

    def _inferred_for(self, feeds: dict[str, Tensor]) -> onnx.ModelProto:
        signature = tuple((n, tuple(None if d is None else str(d) if isinstance(d, str) else d
                                    for d in feeds[n].shape)) for n in self.input_names)
        if signature not in self._inferred:
            proto = onnx.ModelProto()
            proto.CopyFrom(self._template)
            for graph_input in proto.graph.input:
                if graph_input.name in feeds:
                    _set_shape(graph_input, dict(signature)[graph_input.name])
            for graph_output in proto.graph.output:  # the file's output dims follow its own input dims
                graph_output.type.tensor_type.ClearField("shape")
            model = ir.serde.deserialize_model(proto)
            try:
                InferShapesPass()(model)
            except ValueError as exc:
                shapes = {n: s for n, s in signature}
                raise shape_error(self._label, f"cannot infer the graph's shapes for inputs {shapes}: {exc}") from None
            self._inferred[signature] = ir.serde.serialize_model(model)
        return self._inferred[signature]

    # ---- export: the file's structure, the current weights ------------------
    def export(self, path=None) -> onnx.ModelProto:
        """The original model with every Parameter's and buffer's current value; written to ``path`` if given."""
        proto = onnx.ModelProto()
        proto.CopyFrom(self._original)
        current = {name: p.data for name, p in [*self.named_parameters(), *self.named_buffers()]}
        for tensor in proto.graph.initializer:
            if tensor.name in current:
                tensor.CopyFrom(onnx.numpy_helper.from_array(np.asarray(current[tensor.name]), tensor.name))
        if path is not None:
            atomic_write(path, lambda handle: handle.write(proto.SerializeToString()))
        return proto

    def extra_repr(self) -> str:
        return (f"{self._label!r}, inputs={self.input_names}, outputs={self.output_names}, "
                f"parameters={len(self._parameters)}")


def _dims(shape: ir.Shape | None):
    if shape is None:
        return None
    return tuple(d if isinstance(d, int) else d.value for d in shape)


def _set_shape(info: onnx.ValueInfoProto, dims) -> None:
    shape = info.type.tensor_type.shape
    shape.Clear()
    for d in dims:
        entry = shape.dim.add()
        if isinstance(d, int):
            entry.dim_value = d
        elif d is not None:
            entry.dim_param = d


def _constant(value: ir.Value) -> ir.Value:
    """A non-trained initializer (shape, axes, a folded scalar) as a graphc Constant with its const_value."""
    array = value.const_value.numpy()
    out = emit("Constant", [], {"value": ir.Tensor(array)}, shape=array.shape, dtype=array.dtype)
    out.value.const_value = ir.Tensor(array)
    return out.value
