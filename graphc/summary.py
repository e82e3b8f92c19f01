"""``gc.summary(model, input_shape)``: a table of layers, output shapes and parameter counts (as torchinfo).

The model is called once on symbolic inputs with a forward hook on every submodule, so the shapes are
the builder's own (a symbolic batch shows as its name) and nothing runs. The graph built on the way is
not kept anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from graphc.nn.module import Module
from graphc.tensor import Tensor, input as _input


@dataclass(frozen=True)
class LayerRow:
    """One module call: dotted name ("" for the model), class name, nesting depth, output shapes, parameters."""

    name: str
    type: str
    depth: int
    output_shapes: tuple[tuple, ...]  # one shape per Tensor in the output, in order (nested tuples flattened)
    params: int | None  # parameters the module holds itself (for a container: its own only); None: repeated call
    trainable: int | None
    leaf: bool  # no submodules: its params are all of its parameters


@dataclass(frozen=True)
class ModelSummary:
    """What :func:`summary` returns; ``print()`` it (or let the REPL show it) for the table."""

    model_name: str
    rows: tuple[LayerRow, ...]
    total_params: int
    trainable_params: int

    @property
    def non_trainable_params(self) -> int:
        return self.total_params - self.trainable_params

    def __str__(self) -> str:
        header = ("Layer (type)", "Output Shape", "Param #")
        body = [(("  " * row.depth) + (f"{row.name.rsplit('.', 1)[-1]} ({row.type})" if row.name else row.type),
                 ", ".join(_fmt_shape(s) for s in row.output_shapes) or "--",
                 _fmt_params(row))
                for row in self.rows]
        widths = [max(len(line[i]) for line in [header, *body]) for i in range(3)]
        width = sum(widths) + 4

        def line(cells):
            return f"{cells[0]:<{widths[0]}}  {cells[1]:<{widths[1]}}  {cells[2]:>{widths[2]}}"
        rule, thin = "=" * width, "-" * width
        return "\n".join([rule, line(header), rule, *(line(b) for b in body), rule,
                          f"Total params: {self.total_params:,}",
                          f"Trainable params: {self.trainable_params:,}",
                          f"Non-trainable params: {self.non_trainable_params:,}", thin])

    __repr__ = __str__


def _fmt_shape(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _fmt_params(row: LayerRow) -> str:
    if row.params is None:
        return "(recursive)"
    return f"{row.params:,}" if row.params or row.leaf else "--"


def _tensors(output) -> list[Tensor]:
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in _tensors(item)]
    if isinstance(output, dict):
        return [t for item in output.values() for t in _tensors(item)]
    return []


def _is_shape(spec) -> bool:
    return isinstance(spec, (tuple, list)) and all(isinstance(d, (int, str)) and not isinstance(d, bool)
                                                   for d in spec)


def _inputs(spec, dtype) -> list[Tensor]:
    """A Tensor, a list of Tensors, one shape (``("batch", 784)``) or a list of shapes -> input Tensors."""
    if isinstance(spec, Tensor):
        return [spec]
    if _is_shape(spec):
        shapes = [tuple(spec)]
    elif isinstance(spec, (tuple, list)) and spec and all(isinstance(s, Tensor) for s in spec):
        return list(spec)
    elif isinstance(spec, (tuple, list)) and spec and all(_is_shape(s) for s in spec):
        shapes = [tuple(s) for s in spec]
    else:
        raise TypeError(f"summary: expected an input shape such as ('batch', 784), a list of shapes, a Tensor "
                        f"or a list of Tensors, got {spec!r}")
    dtypes = list(dtype) if isinstance(dtype, (tuple, list)) else [dtype] * len(shapes)
    if len(dtypes) != len(shapes):
        raise ValueError(f"summary: {len(shapes)} input shapes but {len(dtypes)} dtypes ({dtype!r})")
    names = ["input"] if len(shapes) == 1 else [f"input_{i}" for i in range(len(shapes))]
    return [_input(name, shape, dt) for name, shape, dt in zip(names, shapes, dtypes)]


def summary(model: Module, input_shape_or_inputs, dtype="float32") -> ModelSummary:
    """Layers in call order with their output shapes and parameter counts, and the model's totals.

    ``input_shape_or_inputs``: one shape including the batch dim (a string dim is symbolic), a list of
    shapes for a model with several inputs (``dtype`` may then be a list), or ready-made ``gc.input``
    Tensors. Totals count each parameter of ``model.parameters()`` once (shared ones too, called or
    not); trainable ones have ``requires_grad``. Buffers (BatchNorm's running statistics) are not
    parameters, as in PyTorch. A module called twice gets a second row marked ``(recursive)``.

    >>> import graphc as gc
    >>> from graphc import nn
    >>> s = gc.summary(nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10)), ("batch", 784))
    >>> [(row.name, row.output_shapes, row.params) for row in s.rows][1:]
    [('0', (('batch', 128),), 100480), ('1', (('batch', 128),), 0), ('2', (('batch', 10),), 1290)]
    >>> s.total_params, s.trainable_params
    (101770, 101770)
    """
    if not isinstance(model, Module):
        raise TypeError(f"summary: expected an nn.Module, got {type(model).__name__}")
    inputs = _inputs(input_shape_or_inputs, dtype)
    names = {id(module): name for name, module in model.named_modules()}
    rows: list[dict] = []
    open_rows: list[dict] = []
    seen: set[int] = set()

    def before(module, args):
        name = names[id(module)]
        own = [p for p in module._parameters.values() if p is not None]
        repeated = id(module) in seen
        seen.add(id(module))
        row = {"name": name, "type": type(module).__name__, "depth": name.count(".") + 1 if name else 0,
               "shapes": (), "params": None if repeated else sum(p.numel() for p in own),
               "trainable": None if repeated else sum(p.numel() for p in own if p.requires_grad),
               "leaf": not module._modules}
        rows.append(row)
        open_rows.append(row)

    def after(module, args, output):
        row = open_rows.pop()
        row["shapes"] = tuple(tuple(t.shape) for t in _tensors(output))

    handles = []
    try:
        for module in model.modules():
            handles.append(module.register_forward_pre_hook(before))
            handles.append(module.register_forward_hook(after))
        model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    unique = {id(p): p for p in model.parameters()}.values()
    return ModelSummary(
        type(model).__name__,
        tuple(LayerRow(r["name"], r["type"], r["depth"], tuple(tuple(str(d) if isinstance(d, str) else d
                                                                     for d in s) for s in r["shapes"]),
                       r["params"], r["trainable"], r["leaf"]) for r in rows),
        sum(p.numel() for p in unique), sum(p.numel() for p in unique if p.requires_grad))
