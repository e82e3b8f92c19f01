"""Helpers of the spatial VJP rules (``conv.py``, ``pool.py``): attributes with defaults, static spatial
dims, and the ConvTranspose that maps an output-shaped gradient back onto the input's size."""

from __future__ import annotations

from passes.autodiff.helpers import static_dims
from passes.autodiff.registry import VJPContext


def spatial_attr(ctx: VJPContext, name: str, default):
    value = ctx.attr(name)
    return list(value) if value is not None else list(default)


def static_spatial(ctx: VJPContext, value, op: str) -> list[int]:
    """The static spatial dims of an (N, C, ...) value; the batch and channel dims may be symbolic."""
    dims = static_dims(value)
    if dims is None or len(dims) < 3 or not all(isinstance(d, int) for d in dims[2:]):
        raise NotImplementedError(f"the gradient of {op} needs static spatial dims, got {value.shape}")
    return list(dims[2:])


def static_hw(ctx: VJPContext, value, op: str) -> tuple[int, int]:
    dims = static_spatial(ctx, value, op)
    if len(dims) != 2:
        raise NotImplementedError(f"the gradient of {op} is implemented for 2-D pooling, got {value.shape}")
    return dims[0], dims[1]


def no_auto_pad(ctx: VJPContext, op: str) -> None:
    if ctx.attr("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        raise NotImplementedError(f"the gradient of {op} with auto_pad is not implemented; use explicit pads")


def transpose_pads(size, out, kernel, stride, dilation, begin, end) -> tuple[int, int]:
    """Pads for a ConvTranspose that maps ``out`` positions back onto exactly ``size`` inputs.

    The forward may have ignored trailing inputs (stride remainder) or read
    past the end (ceil_mode); the end pad absorbs either difference.
    """
    full = stride * (out - 1) + dilation * (kernel - 1) + 1
    return begin, full - begin - size


def conv_transpose(ctx: VJPContext, g, weight, x_sp, out_sp, kernel, strides, dilations, pads, group):
    """ConvTranspose of ``g`` landing on the input's spatial size, with extra end pads where needed."""
    nd = len(x_sp)
    t_pads, extra = [], []
    for axis in range(nd):
        begin, end = transpose_pads(x_sp[axis], out_sp[axis], kernel[axis], strides[axis], dilations[axis],
                                     pads[axis], pads[axis + nd])
        t_pads.append(begin)
        extra.append(end)
    attrs = {"strides": strides, "dilations": dilations, "group": group, "kernel_shape": kernel}
    if min(extra) < 0:  # the forward ignored trailing inputs: pad the result with zeros there
        attrs["pads"] = t_pads + [max(e, 0) for e in extra]
        dx = ctx.op("ConvTranspose", [g, weight], attrs)
        grow = ctx.e.ints([0] * (nd + 2) + [0, 0] + [max(-e, 0) for e in extra])
        return ctx.op("Pad", [dx, grow])
    attrs["pads"] = t_pads + extra
    return ctx.op("ConvTranspose", [g, weight], attrs)
