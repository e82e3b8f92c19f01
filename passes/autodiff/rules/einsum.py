"""The VJP rule of Einsum: each operand's cotangent is one more Einsum."""

from __future__ import annotations

import string

from passes.autodiff.helpers import static_dims
from passes.autodiff.registry import VJPContext, register_vjp


def _parse(equation: str, ranks: list[int]) -> tuple[list[str], str]:
    """Operand and output subscripts with ``...`` spelled out as fresh capital letters."""
    equation = equation.replace(" ", "")
    lhs, arrow, rhs = equation.partition("->")
    terms = lhs.split(",")
    ellipsis_rank = max((rank - len(t.replace("...", "")) for t, rank in zip(terms, ranks) if "..." in t), default=0)
    fresh = [c for c in string.ascii_uppercase if c not in equation][:ellipsis_rank]

    def spell(term: str, rank: int | None) -> str:
        if "..." not in term:
            return term
        n = ellipsis_rank if rank is None else rank - len(term.replace("...", ""))
        return term.replace("...", "".join(fresh[ellipsis_rank - n:]))

    operands = [spell(t, r) for t, r in zip(terms, ranks)]
    if arrow:
        return operands, spell(rhs, None)
    letters = "".join(operands)
    single = sorted(c for c in set(letters) if letters.count(c) == 1 and c not in fresh)
    return operands, "".join(fresh) + "".join(single)


@register_vjp("Einsum")
def einsum_vjp(ctx: VJPContext):
    """Einsum(x_1, ..., x_n; equation "s_1,...,s_n->o") -> y.

    dx_i = Einsum(g, x_j (j != i); "o,s_j...->s_i'"), s_i' the letters of s_i found in o or another
    operand; letters only s_i has were summed away, so dx_i is expanded back along them. Size-1
    ellipsis dims broadcast against larger ones are summed back. Repeated letters in one operand
    (diagonals) have no rule.
    """
    ranks = [len(v.shape) for v in ctx.inputs]
    operands, output = _parse(ctx.attr("equation"), ranks)
    grads = []
    for i, (x, term) in enumerate(zip(ctx.inputs, operands)):
        if not ctx.needs(i):
            grads.append(None)
            continue
        if len(set(term)) != len(term):
            raise NotImplementedError(f"the gradient of Einsum {ctx.attr('equation')!r} with a repeated index "
                                      f"in operand {i} is not implemented")
        others = [t for j, t in enumerate(operands) if j != i]
        seen = set(output).union(*others)
        kept = "".join(c for c in term if c in seen)
        equation = ",".join([output] + others) + "->" + kept
        inputs = [ctx.g] + [v for j, v in enumerate(ctx.inputs) if j != i]
        grad = ctx.op("Einsum", inputs, {"equation": equation})
        if kept != term:
            missing = [k for k, c in enumerate(term) if c not in seen]
            grad = ctx.op("Expand", [ctx.op("Unsqueeze", [grad, ctx.e.ints(missing)]), ctx.op("Shape", [x])])
        ones = [k for k, d in enumerate(static_dims(x)) if d == 1 and term[k] in seen]
        if ones:  # a broadcast ellipsis dim: einsum gave the full size
            grad = ctx.op("ReduceSum", [grad, ctx.e.ints(ones)], {"keepdims": 1})
        grads.append(grad)
    return grads
