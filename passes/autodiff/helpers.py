"""Helpers that keep VJP rules one line long (cf. JAX ``deflinear``, TVM ``_fit_shape``)."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from passes.autodiff.registry import VJPContext


def static_dims(value: ir.Value) -> list | None:
    """The dims of ``value`` as ints / strings / None, or None when the rank is unknown."""
    if value.shape is None:
        return None
    return [d if isinstance(d, int) else (d.value if hasattr(d, "value") else None) for d in value.shape]


def unbroadcast(ctx: VJPContext, grad: ir.Value, target: ir.Value, out: ir.Value | None = None) -> ir.Value:
    """Sum ``grad`` (shaped like the broadcast result ``out``) down to ``target``'s shape.

    Axes are found statically: leading axes ``target`` lacks, and axes where
    ``target`` has 1 and the result may not. Summing a size-1 axis is harmless,
    so an unknown result dim is treated as "maybe broadcast".
    """
    out = out if out is not None else ctx.outputs[0]
    t_dims, o_dims = static_dims(target), static_dims(out)
    if t_dims is None or o_dims is None:
        raise NotImplementedError(f"unbroadcast needs known ranks, got {target.shape} and {out.shape}")
    lead = len(o_dims) - len(t_dims)
    axes = list(range(lead))
    axes += [lead + i for i, d in enumerate(t_dims) if d == 1 and o_dims[lead + i] != 1]
    if not axes:
        return grad
    if axes == list(range(lead)):  # only leading axes (a bias): one ReduceSum without keepdims
        return ctx.op("ReduceSum", [grad, ctx.e.ints(axes)], {"keepdims": 0})
    summed = ctx.op("ReduceSum", [grad, ctx.e.ints(axes)], {"keepdims": 1})
    if lead:
        summed = ctx.op("Squeeze", [summed, ctx.e.ints(range(lead))])
    return summed


def shape_of(ctx: VJPContext, value: ir.Value) -> ir.Value:
    """``value``'s shape as an int64 tensor: a constant when static, else ``Shape``."""
    dims = static_dims(value)
    if dims is not None and all(isinstance(d, int) for d in dims):
        return ctx.e.ints(dims)
    return ctx.op("Shape", [value])


def zeros_like(ctx: VJPContext, value: ir.Value) -> ir.Value:
    """A tensor of zeros shaped like ``value`` (dynamic shape, static dtype)."""
    return zeros_of(ctx.e, value)


def zeros_of(emitter, value: ir.Value) -> ir.Value:
    """``zeros_like`` for callers with only an emitter (the autodiff walker)."""
    zero = ir.Tensor(np.zeros((1,), dtype=value.dtype.numpy()))
    return emitter.op("ConstantOfShape", [emitter.op("Shape", [value])], {"value": zero})


def normalize_axes(axes, rank: int) -> list[int]:
    return sorted(a + rank if a < 0 else a for a in axes)


def reduction_axes(ctx: VJPContext, axes_input_index: int = 1) -> list[int] | None:
    """The static ``axes`` of a Reduce* node (input since opset 18), or None for "all"."""
    rank = len(ctx.inputs[0].shape)
    if len(ctx.inputs) > axes_input_index and ctx.inputs[axes_input_index] is not None:
        const = ctx.inputs[axes_input_index].const_value
        if const is None:
            raise NotImplementedError(f"{ctx.node.op_type} with non-constant axes has no gradient rule")
        axes = [int(a) for a in np.asarray(const.numpy()).reshape(-1)]
        if axes:
            return normalize_axes(axes, rank)
        if ctx.attr("noop_with_empty_axes", 0):
            return []
    return list(range(rank))


def restore_reduced(ctx: VJPContext, grad: ir.Value, axes: list[int]) -> ir.Value:
    """Re-insert reduced axes (when keepdims=0) so ``grad`` broadcasts against the input."""
    if ctx.attr("keepdims", 1) or not axes:
        return grad
    return ctx.op("Unsqueeze", [grad, ctx.e.ints(axes)])
