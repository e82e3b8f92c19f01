"""Every VJP rule, grouped by kind of op; importing this package registers them all."""

from passes.autodiff.rules import conv, elementwise, linalg, nn, reduce, shape  # noqa: F401
from passes.autodiff.rules import scan  # noqa: F401,E402  (after shape: its Split rule defers to one there)
