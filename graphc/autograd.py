"""``gc.grad``: symbolic gradients by graphc's reverse-mode autodiff pass."""

from __future__ import annotations

from collections.abc import Sequence

from graphc.tensor import Tensor
from passes.autodiff.core import vjp


def grad(output: Tensor, wrt: Sequence[Tensor] | Tensor, grad_output: Tensor | None = None) -> list[Tensor] | Tensor:
    """Gradients of ``output`` (a scalar, or weighted by ``grad_output``) w.r.t. each of ``wrt``, same order.

    >>> import graphc as gc
    >>> x = gc.input("x", (3,))
    >>> gc.grad((x * x).sum(), [x])[0].shape
    (3,)
    """
    single = isinstance(wrt, Tensor)
    targets = [wrt] if single else list(wrt)
    if grad_output is None and output.shape != ():
        raise ValueError(f"grad of a non-scalar output of shape {output.shape} needs grad_output")
    for index, target in enumerate(targets):
        if getattr(target, "requires_grad", True) is False:  # as torch.autograd.grad
            raise ValueError(f"gc.grad: wrt[{index}] ({target.name!r}) is frozen (requires_grad=False); "
                             f"leave it out of the list or unfreeze it")
    seeds = [grad_output.value] if grad_output is not None else None
    values, _ = vjp([output.value], [t.value for t in targets], seeds)
    results = [Tensor(v) for v in values]
    return results[0] if single else results
