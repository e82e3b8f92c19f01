"""Every VJP rule, grouped by kind of op; importing this package registers them all."""

from passes.autodiff.rules import conv, elementwise, linalg, nn, reduce, resize, scan, shape  # noqa: F401
