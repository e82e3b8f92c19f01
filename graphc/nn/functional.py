"""``graphc.nn.functional``: ``torch.nn.functional``'s names and semantics, one block per op."""

from __future__ import annotations

import numpy as np

from graphc import ops
from graphc import random as _random
from graphc.dtypes import is_floating
from graphc.errors import shape_error
from graphc.tensor import Tensor, emit
from graphc.user_messages import module_getattr as _module_getattr

__getattr__ = _module_getattr(__name__, "F.")  # F.unfold: "graphc has no F.unfold; ... F has: ..."

_REDUCTIONS = ("mean", "sum", "none")


def _check_reduction(op: str, reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise shape_error(op, f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    return loss if reduction == "none" else ops.reduce("ReduceMean" if reduction == "mean" else "ReduceSum", loss)


# ---- activations -------------------------------------------------------
def relu(x: Tensor) -> Tensor:
    """max(x, 0) (ONNX Relu).

    >>> import graphc as gc, graphc.nn.functional as F
    >>> F.relu(gc.input("x", ("batch", 4))).shape
    ('batch', 4)
    """
    return ops.unary("Relu", x)


def sigmoid(x: Tensor) -> Tensor:
    """1 / (1 + exp(-x)) (ONNX Sigmoid)."""
    return ops.unary("Sigmoid", x)


def tanh(x: Tensor) -> Tensor:
    """tanh(x) (ONNX Tanh)."""
    return ops.unary("Tanh", x)


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """exp(x) / sum(exp(x), dim) (ONNX Softmax)."""
    axis = ops.norm_axis("Softmax", dim, x.ndim)
    return emit("Softmax", [x], {"axis": axis}, shape=x.shape, dtype=x.dtype)


def log_softmax(x: Tensor, dim: int = -1) -> Tensor:
    """x - logsumexp(x, dim) (ONNX LogSoftmax)."""
    axis = ops.norm_axis("LogSoftmax", dim, x.ndim)
    return emit("LogSoftmax", [x], {"axis": axis}, shape=x.shape, dtype=x.dtype)


def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p); identity when not training.

    The mask comes from the in-graph generator (``graphc.random.uniform_like``):
    a fresh mask every training step, reproducible from the Trainer's seed,
    and the same mask in the backward pass (it is a value of the forward graph).
    """
    if not 0.0 <= p <= 1.0:
        raise shape_error("dropout", f"p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return ops.mul(x, 0.0)
    keep = ops.compare("GreaterOrEqual", _random.uniform_like(x), float(p))
    return ops.where(keep, ops.mul(x, 1.0 / (1.0 - p)), 0.0)


# ---- linear ------------------------------------------------------------
def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """x @ weight.T + bias, weight shaped (out, in) as in PyTorch.

    2-D inputs emit one Gemm (transB=1), which ONNX Runtime runs without a
    separate transpose; other ranks emit MatMul with a transposed weight.
    """
    if weight.ndim != 2:
        raise shape_error("linear", f"weight must be 2-D (out, in), got {ops.fmt(weight.shape)}")
    out_f, in_f = weight.shape
    if x.ndim < 1 or (isinstance(x.shape[-1], int) and isinstance(in_f, int) and x.shape[-1] != in_f):
        raise shape_error("linear", f"input {ops.fmt(x.shape)} does not end in in_features={in_f} "
                                    f"(weight {ops.fmt(weight.shape)})")
    if bias is not None and bias.shape != (out_f,):
        raise shape_error("linear", f"bias must be ({out_f},), got {ops.fmt(bias.shape)}")
    if x.dtype != weight.dtype:
        raise shape_error("linear", f"input dtype {x.dtype} differs from weight dtype {weight.dtype}")
    if x.ndim == 2:
        inputs = [x, weight] + ([bias] if bias is not None else [])
        return emit("Gemm", inputs, {"transB": 1}, shape=(x.shape[0], out_f), dtype=x.dtype)
    out = ops.matmul(x, ops.permute(weight, 1, 0))
    return out if bias is None else ops.add(out, bias)


# ---- losses ------------------------------------------------------------
def nll_loss(input: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = -100,
             reduction: str = "mean") -> Tensor:
    """Negative log-likelihood of class indices: input (N, C, ...) log-probabilities, target (N, ...) int64.

    Emits ONNX NegativeLogLikelihoodLoss; ``mean`` divides by the summed
    weights of the non-ignored targets, as PyTorch does.
    """
    _check_reduction("nll_loss", reduction)
    if input.ndim < 2:
        raise shape_error("nll_loss", f"input must be (N, C, ...), got {ops.fmt(input.shape)}")
    if target.dtype.kind not in "iu":
        raise shape_error("nll_loss", f"target must hold class indices (int64), got {target.dtype}; "
                                      f"for probabilities use cross_entropy with a float target")
    expected = (input.shape[0],) + input.shape[2:]
    if target.ndim != len(expected) or any(isinstance(a, int) and isinstance(b, int) and a != b
                                           for a, b in zip(target.shape, expected)):
        raise shape_error("nll_loss", f"target shape {ops.fmt(target.shape)} does not match input "
                                      f"{ops.fmt(input.shape)} (expected {ops.fmt(expected)})")
    if weight is not None:
        weight = _class_weight("nll_loss", weight, input)
    target = ops.cast(target, "int64")
    inputs = [input, target] + ([weight] if weight is not None else [])
    shape = () if reduction != "none" else expected
    return emit("NegativeLogLikelihoodLoss", inputs, {"reduction": reduction, "ignore_index": ignore_index},
                shape=shape, dtype=input.dtype)


def cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None, ignore_index: int = -100,
                  reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """Cross-entropy of logits (N, C, ...) against class indices or class probabilities.

    ``log_softmax`` + ``nll_loss`` for indices; ``-sum(target * log_softmax)``
    for a float target of the input's shape. ``label_smoothing`` follows
    PyTorch: (1 - e) * nll + e * mean over classes of -log p.

    >>> import graphc as gc, graphc.nn.functional as F
    >>> F.cross_entropy(gc.input("z", ("batch", 10)), gc.input("y", ("batch",), "int64")).shape
    ()
    """
    _check_reduction("cross_entropy", reduction)
    if not 0.0 <= label_smoothing <= 1.0:
        raise shape_error("cross_entropy", f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
    if weight is not None and input.ndim > 1:
        weight = _class_weight("cross_entropy", weight, input)
    logp = log_softmax(input, 1 if input.ndim > 1 else 0)
    if is_floating(target.dtype):
        if target.shape != input.shape:
            raise shape_error("cross_entropy", f"a probability target must match the input's shape "
                                               f"{ops.fmt(input.shape)}, got {ops.fmt(target.shape)}")
        if label_smoothing:  # PyTorch mixes the target with the uniform distribution
            classes = input.shape[1]
            target = ops.add(ops.mul(target, 1.0 - label_smoothing), float(label_smoothing) / classes)
        terms = logp * target if weight is None else logp * target * _class_axis(weight, input.ndim)
        return _reduce(ops.neg(ops.reduce("ReduceSum", terms, 1)), reduction)
    nll = nll_loss(logp, target, weight, ignore_index, reduction)
    if not label_smoothing:
        return nll
    classes = input.shape[1]
    if not isinstance(classes, int):
        raise shape_error("cross_entropy", "label_smoothing needs a static number of classes")
    # PyTorch: smooth_i = -sum_c w_c log p_ic, scaled by e / C; "mean" divides by sum_i w[t_i] (kept targets).
    terms = logp if weight is None else ops.mul(logp, _class_axis(weight, input.ndim))
    smooth = ops.neg(ops.reduce("ReduceSum", terms, 1))
    ignored = ops.compare("Equal", target, ignore_index)
    smooth = ops.where(ignored, 0.0, smooth)
    if reduction == "mean":
        kept = ops.cast(ops.compare("Equal", ignored, False), input.dtype)
        if weight is not None:
            safe = ops.where(ignored, 0, ops.cast(target, "int64"))
            kept = ops.mul(kept, emit("Gather", [weight, safe], {"axis": 0}, shape=target.shape, dtype=input.dtype))
        smooth = ops.div(ops.reduce("ReduceSum", smooth), ops.reduce("ReduceSum", kept))
    else:
        smooth = _reduce(smooth, reduction)
    smooth = ops.mul(smooth, 1.0 / classes)
    return ops.add(ops.mul(nll, 1.0 - label_smoothing), ops.mul(smooth, float(label_smoothing)))


def _class_axis(weight: Tensor, rank: int) -> Tensor:
    """A (C,) weight reshaped to broadcast along dim 1 of a rank-``rank`` tensor."""
    return ops.reshape(weight, *([weight.shape[0]] + [1] * (rank - 2)))


def _same_shape(op: str, input: Tensor, target: Tensor) -> None:
    if input.shape != target.shape and any(
            isinstance(a, int) and isinstance(b, int) and a != b or (a == 1) != (b == 1)
            for a, b in zip(input.shape, target.shape)) or input.ndim != target.ndim:
        raise shape_error(op, f"input {ops.fmt(input.shape)} and target {ops.fmt(target.shape)} differ "
                              f"(PyTorch would broadcast them with a warning; reshape one to match)")


def mse_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Mean squared error: reduce((input - target) ** 2)."""
    _check_reduction("mse_loss", reduction)
    _same_shape("mse_loss", input, target)
    diff = ops.sub(input, target)
    return _reduce(ops.mul(diff, diff), reduction)


def l1_loss(input: Tensor, target: Tensor, reduction: str = "mean") -> Tensor:
    """Mean absolute error: reduce(|input - target|)."""
    _check_reduction("l1_loss", reduction)
    _same_shape("l1_loss", input, target)
    return _reduce(ops.absolute(ops.sub(input, target)), reduction)


def _clamped_log(p: Tensor) -> Tensor:
    """log(p) clamped at -100, as PyTorch's BCE does (log(0) = -inf becomes -100). Forward value only."""
    positive = ops.compare("Greater", p, 0.0)
    log = ops.clip(ops.unary("Log", ops.where(positive, p, 1.0)), min=-100.0)
    return ops.where(positive, log, -100.0)


def _with_gradients(value: Tensor, slopes: list[tuple[Tensor, Tensor]]) -> Tensor:
    """``value`` in the forward pass; in the backward pass d/dx = slope for each (x, slope).

    value + sum(slope * x - detach(slope * x)): each pair cancels exactly (the same computed number),
    so the forward value is unchanged while autodiff sees ``slope`` (a constant) as the derivative.
    """
    out = ops.stop_gradient(value)
    for x, slope in slopes:
        linear = ops.mul(ops.stop_gradient(slope), x)
        out = ops.add(out, ops.sub(linear, ops.stop_gradient(linear)))
    return out


def binary_cross_entropy(input: Tensor, target: Tensor, weight: Tensor | None = None,
                         reduction: str = "mean") -> Tensor:
    """-(t log p + (1 - t) log(1 - p)) with each log clamped at -100, with PyTorch's exact gradients.

    PyTorch's backward is d/dp = (p - t) / max(p (1 - p), 1e-12), not the derivative of the clamped
    forward (which is infinite or NaN where p saturates to 0 or 1); ``_with_gradients`` gives the loss
    exactly that slope, and d/dt = log(1 - p) - log(p) with the clamped logs (PyTorch's target
    gradient uses unclamped ones and is infinite at p = 0 or 1), in standard ops.
    """
    _check_reduction("binary_cross_entropy", reduction)
    _same_shape("binary_cross_entropy", input, target)
    log_p = _clamped_log(input)
    log_q = _clamped_log(ops.sub(1.0, input))
    value = ops.neg(ops.add(ops.mul(target, log_p), ops.mul(ops.sub(1.0, target), log_q)))
    slope_p = ops.div(ops.sub(input, target),
                      emit("Max", [ops.mul(input, ops.sub(1.0, input)), ops.as_tensor(1e-12, input)],
                           shape=input.shape, dtype=input.dtype))
    slopes = [(input, slope_p)] + ([(target, ops.sub(log_q, log_p))] if is_floating(target.dtype) else [])
    loss = _with_gradients(value, slopes)
    if weight is not None:
        loss = ops.mul(loss, weight)
    return _reduce(loss, reduction)


def _weight_like(op: str, name: str, weight, input: Tensor) -> Tensor:
    """A weight given as a Tensor, or as an array/list (converted to a constant of ``input``'s dtype)."""
    if isinstance(weight, Tensor):
        return weight
    array = np.asarray(weight.detach().cpu().numpy() if hasattr(weight, "detach") else weight)
    if array.dtype.kind not in "biuf" or not np.all(np.isfinite(array)):
        raise shape_error(op, f"{name} must be finite numbers, got {array!r:.200}")
    return ops.constant(array, dtype=input.dtype)


def _class_weight(op: str, weight, input: Tensor) -> Tensor:
    """A (C,) class weight for an (N, C, ...) input: arrays converted, the length checked at build time
    (ONNX Runtime would otherwise fail at run time, or read out of bounds)."""
    weight = _weight_like(op, "weight", weight, input)
    classes = input.shape[1]
    if weight.ndim != 1 or (isinstance(classes, int) and isinstance(weight.shape[0], int)
                            and weight.shape[0] != classes):
        raise shape_error(op, f"weight must be ({classes},): one value per class of input {ops.fmt(input.shape)}, "
                              f"got {ops.fmt(weight.shape)}")
    return weight


def binary_cross_entropy_with_logits(input: Tensor, target: Tensor, weight=None, size_average=None, reduce=None,
                                     reduction: str = "mean", pos_weight=None) -> Tensor:
    """Sigmoid + binary cross-entropy in one numerically stable expression, as PyTorch computes it:

        loss = (1 - t) x + (1 + (pos_weight - 1) t) softplus(-x),  then * weight, then reduced;
        softplus(-x) = max(-x, 0) + log(1 + exp(-|x|))  (no overflow for any x).

    d/dx = (1 + (pw - 1) t) sigmoid(x) - pw t; the branches are written with ``where`` on x > 0 so that
    the slope at x = 0 is the true one (-1/2 for softplus), not an Abs/Relu kink's 0. ``pos_weight``
    broadcasts along the last (class) dim; ``size_average``/``reduce`` are PyTorch's deprecated spellings.

    >>> import graphc as gc, graphc.nn.functional as F
    >>> F.binary_cross_entropy_with_logits(gc.input("z", ("batch", 3)), gc.input("t", ("batch", 3))).shape
    ()
    """
    op = "binary_cross_entropy_with_logits"
    reduction = legacy_reduction(size_average, reduce, reduction)
    _check_reduction(op, reduction)
    if not is_floating(input.dtype) or not is_floating(target.dtype):
        raise shape_error(op, f"input and target must be floating point (probabilities as the target), got "
                              f"{input.dtype} and {target.dtype}")
    _same_shape(op, input, target)
    positive = ops.compare("Greater", input, 0.0)
    # softplus(-x): where x > 0, log(1 + exp(-x)); else -x + log(1 + exp(x)); exp's argument is always <= 0
    softplus_neg = ops.add(ops.where(positive, 0.0, ops.neg(input)),
                           ops.unary("Log", ops.add(ops.unary("Exp", ops.where(positive, ops.neg(input), input)),
                                                    1.0)))
    if pos_weight is not None:
        pos_weight = _weight_like(op, "pos_weight", pos_weight, input)
        log_weight = ops.add(ops.mul(ops.sub(pos_weight, 1.0), target), 1.0)
        softplus_neg = ops.mul(log_weight, softplus_neg)
    loss = ops.add(ops.mul(ops.sub(1.0, target), input), softplus_neg)
    if weight is not None:
        loss = ops.mul(loss, _weight_like(op, "weight", weight, input))
    return _reduce(loss, reduction)


def legacy_reduction(size_average, reduce, reduction: str) -> str:
    """PyTorch's deprecated ``size_average``/``reduce`` flags mapped to ``reduction`` (as ``_Reduction``)."""
    if size_average is None and reduce is None:
        return reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    return "none" if not reduce else ("mean" if size_average else "sum")


# ---- more activations (compositions: their gradients come from the primitives' rules) ----
def leaky_relu(x: Tensor, negative_slope: float = 0.01, inplace: bool = False) -> Tensor:
    """x if x > 0 else negative_slope * x (``inplace`` is accepted; a graph has no in-place ops)."""
    return ops.where(ops.compare("Greater", x, 0.0), x, ops.mul(x, float(negative_slope)))


def elu(x: Tensor, alpha: float = 1.0) -> Tensor:
    """x if x > 0 else alpha * (exp(x) - 1)."""
    negative = ops.mul(ops.sub(ops.unary("Exp", ops.clip(x, max=0.0)), 1.0), float(alpha))
    return ops.where(ops.compare("Greater", x, 0.0), x, negative)


def softplus(x: Tensor, beta: float = 1.0, threshold: float = 20.0) -> Tensor:
    """log(1 + exp(beta x)) / beta, and x itself where beta x > threshold (PyTorch's overflow guard)."""
    scaled = ops.mul(x, float(beta))
    smooth = ops.div(ops.unary("Log", ops.add(ops.unary("Exp", ops.clip(scaled, max=float(threshold))), 1.0)),
                     float(beta))
    return ops.where(ops.compare("Greater", scaled, float(threshold)), x, smooth)


def gelu(x: Tensor, approximate: str = "none") -> Tensor:
    """x * Phi(x): exact with Erf (default), or PyTorch's tanh approximation."""
    if approximate == "tanh":
        inner = ops.mul(ops.add(x, ops.mul(ops.mul(ops.mul(x, x), x), 0.044715)), float(np.sqrt(2.0 / np.pi)))
        return ops.mul(ops.mul(x, 0.5), ops.add(ops.unary("Tanh", inner), 1.0))
    if approximate != "none":
        raise shape_error("gelu", f"approximate must be 'none' or 'tanh', got {approximate!r}")
    return ops.mul(ops.mul(x, 0.5), ops.add(ops.unary("Erf", ops.mul(x, float(1.0 / np.sqrt(2.0)))), 1.0))


# ---- embedding and normalisation -------------------------------------------------------
def embedding(indices: Tensor, weight: Tensor, padding_idx: int | None = None, max_norm: float | None = None,
              norm_type: float = 2.0, scale_grad_by_freq: bool = False, sparse: bool = False) -> Tensor:
    """Rows of ``weight`` (num, dim) picked by int ``indices`` (ONNX Gather; gradient scatter-adds rows).

    Rows at ``padding_idx`` (negative counts from the end) get no gradient, as in PyTorch:
    Where(index == padding_idx, detach(rows), rows) returns the row as stored, zero or not, and
    lets no gradient into it. ``sparse`` is accepted (the gradient is dense here);
    ``max_norm`` and ``scale_grad_by_freq`` are refused.

    >>> import graphc as gc, graphc.nn.functional as F
    >>> F.embedding(gc.input("i", ("batch", 7), "int64"), gc.constant(np.zeros((10, 3), np.float32))).shape
    ('batch', 7, 3)
    """
    if indices.dtype.kind not in "iu":
        raise shape_error("embedding", f"indices must be integers, got {indices.dtype}")
    if weight.ndim != 2:
        raise shape_error("embedding", f"weight must be (num_embeddings, dim), got {ops.fmt(weight.shape)}")
    if max_norm is not None or scale_grad_by_freq:
        raise shape_error("embedding", f"max_norm={max_norm!r} and scale_grad_by_freq={scale_grad_by_freq!r} "
                                       f"are not supported (expected None and False)")
    out = emit("Gather", [weight, ops.cast(indices, "int64")], {"axis": 0},
               shape=indices.shape + (weight.shape[1],), dtype=weight.dtype)
    if padding_idx is None:
        return out
    num = weight.shape[0]
    if isinstance(num, int):
        if not -num <= padding_idx < num:
            raise shape_error("embedding", f"padding_idx must be within num_embeddings [{-num}, {num}), "
                                           f"got {padding_idx}")
        padding_idx %= num
    elif padding_idx < 0:
        raise shape_error("embedding", f"a negative padding_idx needs a static num_embeddings, got weight "
                                       f"{ops.fmt(weight.shape)}")
    is_pad = ops.unsqueeze(ops.compare("Equal", indices, int(padding_idx)), -1)
    return ops.where(is_pad, ops.stop_gradient(out), out)


def layer_norm(x: Tensor, normalized_shape, weight: Tensor | None = None, bias: Tensor | None = None,
               eps: float = 1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) * weight + bias over the last ``len(normalized_shape)`` dims (biased var)."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if tuple(x.shape[x.ndim - len(shape):]) != shape and all(isinstance(d, int) for d in x.shape[-len(shape):]):
        raise shape_error("layer_norm", f"input {ops.fmt(x.shape)} does not end in {ops.fmt(shape)}")
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    centered = ops.sub(x, ops.reduce("ReduceMean", x, axes, keepdim=True))
    var = ops.reduce("ReduceMean", ops.mul(centered, centered), axes, keepdim=True)
    y = ops.mul(centered, ops.unary("Reciprocal", ops.unary("Sqrt", ops.add(var, float(eps)))))
    if weight is not None:
        y = ops.mul(y, weight)
    if bias is not None:
        y = ops.add(y, bias)
    return y


from graphc.nn.functional_spatial import (  # noqa: E402  (re-exported: torch.nn.functional has them here)
    adaptive_avg_pool2d,
    avg_pool2d,
    batch_norm,
    conv1d,
    conv2d,
    conv_transpose2d,
    interpolate,
    max_pool2d,
)

__all__ = ["relu", "sigmoid", "tanh", "softmax", "log_softmax", "dropout", "linear", "nll_loss", "cross_entropy",
           "mse_loss", "l1_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits", "leaky_relu", "elu",
           "softplus", "gelu", "embedding", "layer_norm", "conv2d", "max_pool2d", "avg_pool2d", "adaptive_avg_pool2d",
           "batch_norm", "conv1d", "conv_transpose2d", "interpolate"]
