"""PyTorch's ``torch.nn.functional`` losses, with its names, argument order, defaults and conventions,
on any array library.

Code written against ``F.cross_entropy`` runs on NumPy, CuPy, JAX, Dask or any array-API
library by importing these instead; on torch tensors the numbers are PyTorch's. The
conventions are PyTorch's, not the package's own:

- the class axis is 1 (0 for an unbatched ``(C,)`` input);
- ``reduction="mean"`` divides by the sum of the class weights of the counted targets
  (:func:`cross_entropy`, :func:`nll_loss`), by the number of elements
  (:func:`binary_cross_entropy_with_logits`, :func:`kl_div`), and a mean over no
  target is NaN (the package's own functions give 0);
- with class weights and label smoothing, the smoothing term is weighted by class
  (PyTorch's own formula: ``(1 - eps) * nll + eps / C * sum_c w_c * -log p_c``).

Where they differ from PyTorch, they are stricter: labels out of range, negative
weights and targets outside [0, 1] raise on eager host arrays, and an element of
weight 0 is 0 even where its input is not finite (PyTorch: NaN), as is the label's term
at ``label_smoothing=1``.

>>> import numpy as np
>>> from arrayloss.compat import torch as F
>>> F.cross_entropy(np.asarray([[2.0, 0.0, -1.0]]), np.asarray([0]))
array(0.16984602)
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import cast

from .._binary import sigmoid_binary_cross_entropy
from .._ctc import ctc_loss as _ctc_loss
from .._dense import softmax_cross_entropy
from .._divergence import kl_divergence
from .._lib._backends import is_array
from .._lib._labels import Labels, check_class_weights, checked_labels
from .._lib._ops import Ops
from .._lib._reduce import poison
from .._lib._validation import (
    Array,
    Reduction,
    as_index,
    check_fraction,
    check_labels,
    check_logits,
    check_reduction,
    class_axis_last,
    compute_dtype,
    ops_of,
    reshape_target,
    size_of,
)
from .._sparse import sparse_softmax_cross_entropy
from ._names import peer_names

__all__ = ["binary_cross_entropy_with_logits", "cross_entropy", "ctc_loss", "kl_div", "nll_loss"]

# The names of arrayloss's arguments (words of its error messages) and of the adapters'.
_CLASS_NAMES = {"logits": "input", "labels": "target", "targets": "target", "class_weights": "weight"}
_CTC_NAMES = {
    "logits": "log_probs",
    "labels": "targets",
    "logit_lengths": "input_lengths",
    "label_lengths": "target_lengths",
    "label_length": "target_length",
    "max_label_length": "max_target_length",
}


def _class_axis(input: Array, xp: ModuleType) -> int:
    """The class axis of ``input``, checked (a real floating dtype, not 0-d, at least one class)."""
    return check_logits(input, 1 if input.ndim > 1 else 0, xp, name="input")


def _count(x: Array, ops: Ops) -> Array:
    """The number of elements of ``x``, as a 0-d array of its (accumulation) dtype."""
    xp = ops.xp
    dtype = compute_dtype(x.dtype, xp)
    size = size_of(tuple(x.shape))
    if size is None:
        return ops.total_sum(xp.ones_like(x, dtype=dtype))
    return xp.asarray(float(size), dtype=dtype, device=ops.device(x))


def _reduce(losses: Array, total: Array, denominator: Array, reduction: str, ops: Ops) -> Array:
    """PyTorch's reduction: ``losses`` as they are, their ``total``, or ``total / denominator`` (NaN
    for 0 / 0, computed without a floating-point warning)."""
    if reduction == "none":
        return losses
    if reduction == "sum":
        return ops.as_result(total, losses.dtype)
    xp = ops.xp
    empty = denominator == 0
    nan = xp.full_like(total, float("nan"))
    mean = xp.where(empty, nan, total / xp.where(empty, xp.ones_like(denominator), denominator))
    return ops.as_result(mean, losses.dtype)


def _class_view(weight: Array, input: Array, axis: int, ops: Ops) -> Array:
    """``weight`` ``(C,)`` shaped to broadcast along the class ``axis`` of ``input``."""
    shape = [1] * input.ndim
    shape[axis] = weight.shape[0]
    return ops.xp.reshape(weight, tuple(shape))


def _target_weights(labels: Labels, weight: Array | None, dtype: object, ops: Ops) -> Array:
    """The weight of each target: ``weight[target]`` (1 without ``weight``), 0 where it is ignored."""
    xp = ops.xp
    if weight is None:
        scale = xp.ones_like(labels.safe, dtype=dtype)
    else:
        per_target = xp.take(xp.astype(weight, dtype), xp.reshape(labels.safe, (-1,)))
        scale = xp.reshape(per_target, reshape_target(tuple(labels.safe.shape)))
    if labels.counted is None:
        return scale
    return xp.where(labels.counted, scale, xp.zeros_like(scale))


@peer_names(_CLASS_NAMES)
def cross_entropy(
    input: Array,
    target: Array,
    weight: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> Array:
    """``torch.nn.functional.cross_entropy``: class indices or class probabilities as ``target``.

    ``input`` ``(N, C)``, ``(N, C, d1, ...)`` or ``(C,)``; ``target`` integer class indices
    ``(N, d1, ...)`` (or ``()``), or floating probabilities of the shape of ``input``.
    ``weight`` ``(C,)`` weights the classes; ``ignore_index`` applies to class indices.
    """
    ops = ops_of({"input": input, "target": target, "weight": weight}, None, optional=("weight",))
    xp = ops.xp
    check_reduction(reduction)
    check_fraction("label_smoothing", label_smoothing)
    axis = _class_axis(input, xp)
    num_classes = input.shape[axis]
    if weight is not None:
        check_class_weights(weight, num_classes, ops)
    if xp.isdtype(target.dtype, "real floating"):  # probabilities: every element counts once
        t = target
        if label_smoothing:
            t = t * (1.0 - label_smoothing) + label_smoothing / num_classes
        if weight is not None:
            t = t * _class_view(weight, input, axis, ops)
        losses = softmax_cross_entropy(input, t, axis=axis)
        return _reduce(losses, xp.sum(losses), _count(losses, ops), reduction, ops)
    check_labels(target, input.shape[:axis] + input.shape[axis + 1 :], xp, name="target")
    if weight is not None and label_smoothing:  # PyTorch weights the smoothing term by class
        nll = sparse_softmax_cross_entropy(
            input, target, axis=axis, class_weights=weight, ignore_index=ignore_index
        )
        classes = xp.broadcast_to(_class_view(weight, input, axis, ops), tuple(input.shape))
        counted = xp.astype(target != ignore_index, nll.dtype)
        smooth = softmax_cross_entropy(input, classes, axis=axis, weights=counted)
        losses = (label_smoothing / num_classes) * smooth
        if label_smoothing != 1.0:  # at 1 the label's term has weight 0, not 0 * inf
            losses = (1.0 - label_smoothing) * nll + losses
    else:
        losses = sparse_softmax_cross_entropy(
            input,
            target,
            axis=axis,
            class_weights=weight,
            ignore_index=ignore_index,
            label_smoothing=label_smoothing,
        )
    if reduction == "none":
        return losses
    labels = checked_labels(target, num_classes, ignore_index, ops, name="target")
    denominator = xp.sum(_target_weights(labels, weight, losses.dtype, ops))
    return _reduce(losses, xp.sum(losses), denominator, reduction, ops)


@peer_names(_CLASS_NAMES)
def nll_loss(
    input: Array,
    target: Array,
    weight: Array | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Array:
    """``torch.nn.functional.nll_loss``: ``-weight[y] * input[y]`` of log-probabilities ``input``
    (class axis 1, or 0 for ``(C,)``), 0 where ``target == ignore_index``."""
    ops = ops_of({"input": input, "target": target, "weight": weight}, None, optional=("weight",))
    xp = ops.xp
    check_reduction(reduction)
    axis = _class_axis(input, xp)
    num_classes = input.shape[axis]
    if weight is not None:
        check_class_weights(weight, num_classes, ops)
    check_labels(target, input.shape[:axis] + input.shape[axis + 1 :], xp, name="target")
    labels = checked_labels(target, num_classes, ignore_index, ops, name="target")
    picked = ops.pick(class_axis_last(input, axis, xp), labels.safe)
    scale = _target_weights(labels, weight, picked.dtype, ops)
    # An ignored target is 0 whatever its input (no 0 * -inf); out of range unchecked: NaN.
    losses = poison(-(scale * xp.where(scale == 0, xp.zeros_like(picked), picked)), labels.poisoned, ops)
    return _reduce(losses, xp.sum(losses), xp.sum(scale), reduction, ops)


def binary_cross_entropy_with_logits(
    input: Array,
    target: Array,
    weight: Array | None = None,
    reduction: str = "mean",
    pos_weight: Array | None = None,
) -> Array:
    """``torch.nn.functional.binary_cross_entropy_with_logits``; ``"mean"`` over the elements, whatever
    ``weight`` is."""
    check_reduction(reduction)
    loss = sigmoid_binary_cross_entropy(
        input,
        target,
        weights=weight,
        pos_weight=pos_weight,
        reduction="none" if reduction == "none" else "sum",
    )
    if reduction != "mean":
        return loss
    ops = ops_of({"input": input}, None)
    return _reduce(loss, loss, _count(input, ops), reduction, ops)


def kl_div(input: Array, target: Array, reduction: str = "mean", log_target: bool = False) -> Array:
    """``torch.nn.functional.kl_div``: elementwise ``target * (log target - input)`` of log-probabilities
    ``input``; ``"batchmean"`` divides the sum by ``input.shape[0]``, ``"mean"`` by the number of
    elements."""
    if reduction not in ("none", "sum", "mean", "batchmean"):
        raise ValueError(f"reduction must be one of ('none', 'sum', 'mean', 'batchmean'), got {reduction!r}")
    ops = ops_of({"input": input, "target": target}, None)
    xp = ops.xp
    # Each element its own distribution of one class: the divergence's terms, elementwise.
    terms = kl_divergence(
        xp.expand_dims(input, axis=-1),
        xp.expand_dims(target, axis=-1),
        log_targets=log_target,
        reduction="none" if reduction == "none" else "sum",
    )
    if reduction in ("none", "sum"):
        return terms
    if reduction == "mean":
        return _reduce(terms, terms, _count(input, ops), reduction, ops)
    batch = input.shape[0] if input.ndim else 1
    return ops.as_result(terms / batch, terms.dtype)


def _lengths(name: str, lengths: Array | Sequence[int], like: Array, batched: bool, ops: Ops) -> Array:
    """PyTorch's lengths, an integer array ``(N,)`` (``()`` or ``(1,)`` unbatched) or a sequence of ints,
    as an array ``(N,)`` in the namespace and on the device of ``like``."""
    xp = ops.xp
    if isinstance(lengths, (list, tuple)):
        values = [as_index(f"{name}[{i}]", n) for i, n in enumerate(lengths)]
        array = xp.asarray(values, device=ops.device(like))
    elif is_array(lengths):
        array = lengths
    else:  # as PyTorch, which takes a tensor or a tuple of ints
        raise TypeError(
            f"{name} must be an integer array or a sequence of ints, got {type(lengths).__name__}"
        )
    if not batched:
        if array.ndim > 1 or (array.ndim == 1 and array.shape[0] != 1):
            raise ValueError(
                f"{name} of an unbatched input must have shape () or (1,), got {tuple(array.shape)}"
            )
        array = xp.reshape(array, (1,))
    return array


def _padded_targets(targets: Array, target_lengths: Array, ops: Ops) -> Array:
    """Concatenated targets ``(sum(target_lengths),)`` as rows ``(N, S)``, each sequence's labels first
    (on eager arrays, other sizes raise ``ValueError``, as in PyTorch).

    ``S`` is the longest target length on eager arrays, else the length of ``targets`` (a
    shape known without reading values); the entries past each length are ignored.
    """
    xp = ops.xp
    if not xp.isdtype(target_lengths.dtype, "integral"):
        raise TypeError(f"target_lengths must have an integer dtype, got {target_lengths.dtype}")
    total = targets.shape[0]
    counts = xp.astype(target_lengths, xp.int64)
    # The running sum as a product with a triangle of ones (array-api-compat's cumulative_sum is
    # cached per type, which torch.compile refuses to trace; the batch is small).
    ranks = xp.arange(counts.shape[0], device=ops.device(counts))
    ends = xp.matmul(xp.astype(ranks[:, None] >= ranks[None, :], xp.int64), counts)
    width = total
    if ops.is_eager(target_lengths) and counts.shape[0] > 0 and ops.all_true(counts >= 0):
        needed = int(ends[-1])
        if needed != total:  # PyTorch's rule
            raise ValueError(
                f"concatenated targets must hold sum(target_lengths) = {needed} labels, got {total}"
            )
        width = int(xp.max(counts))
    if total == 0:
        return xp.zeros((counts.shape[0], 0), dtype=targets.dtype, device=ops.device(targets))
    starts = ends - counts
    positions = starts[:, None] + xp.arange(width, dtype=xp.int64, device=ops.device(targets))[None, :]
    index = xp.clip(positions, 0, total - 1)  # the entries past a length: ignored
    picked = xp.take(targets, xp.reshape(index, (-1,)))
    return xp.reshape(picked, (counts.shape[0], width))


def ctc_loss(
    log_probs: Array,
    targets: Array,
    input_lengths: Array | Sequence[int],
    target_lengths: Array | Sequence[int],
    blank: int = 0,
    reduction: str = "mean",
    zero_infinity: bool = False,
) -> Array:
    """``torch.nn.functional.ctc_loss``: time-major ``log_probs`` ``(T, N, C)`` (or ``(T, C)``
    unbatched), ``targets`` padded ``(N, S)`` or concatenated ``(sum(target_lengths),)`` (``(S,)``
    unbatched), ``input_lengths`` and ``target_lengths`` integer arrays ``(N,)`` (``()`` or ``(1,)``
    unbatched) or sequences of ints.

    ``"mean"`` is PyTorch's: the batch mean of each loss divided by its target length (at
    least 1); ``"none"`` of an unbatched input is a 0-d array. The gradient with respect to
    ``log_probs`` is PyTorch's too, ``exp(log_probs)`` minus the alignment posterior (the
    gradient of the logits that ``log_probs`` were normalised from). Concatenated targets
    are laid out in rows as wide as the longest target on eager arrays, as wide as all of
    them elsewhere (a shape that needs no value read: the recursion's states grow with it).
    """
    ops = ops_of({"log_probs": log_probs, "targets": targets}, None)
    xp = ops.xp
    if log_probs.ndim not in (2, 3):
        raise ValueError(f"log_probs must have shape (T, N, C) or (T, C), got shape {tuple(log_probs.shape)}")
    batched = log_probs.ndim == 3
    input_lengths = _lengths("input_lengths", input_lengths, log_probs, batched, ops)
    target_lengths = _lengths("target_lengths", target_lengths, log_probs, batched, ops)
    logits = xp.permute_dims(log_probs, (1, 0, 2)) if batched else xp.expand_dims(log_probs, axis=0)
    if targets.ndim == 1:
        if not xp.isdtype(targets.dtype, "integral"):
            raise TypeError(f"targets must have an integer dtype, got {targets.dtype}")
        targets = _padded_targets(targets, target_lengths, ops) if batched else targets[None, :]
    with peer_names(_CTC_NAMES):
        loss = _ctc_loss(
            logits,
            targets,
            logit_lengths=input_lengths,
            label_lengths=target_lengths,
            blank=blank,
            reduction=cast(Reduction, reduction),  # checked by ctc_loss
            zero_infinity=zero_infinity,
        )
    return loss if batched or reduction != "none" else xp.reshape(loss, ())
