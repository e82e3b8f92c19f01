"""Every VJP rule, grouped by kind of op; importing this package registers them all."""

from passes.autodiff.rules import conv, elementwise, linalg, nn, pool, quantize, reduce, resize, scan, shape  # noqa: F401
from passes.autodiff.rules import activations, einsum, gather, layout, losses, normalization  # noqa: F401
from passes.autodiff.rules import reduce_smooth  # noqa: F401
