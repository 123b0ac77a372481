"""optax's losses, with its names, signatures and conventions, on any array library.

Code written against ``optax.losses`` runs on NumPy, CuPy, PyTorch, Dask or any
array-API library by importing these instead; on JAX arrays the numbers are optax's
and ``jax.jit``, ``jax.grad`` and ``jax.vmap`` work. Each returns the per-example
losses (optax's convention: no reduction). ``axis`` may be a tuple of class axes (or
``None``: all axes, where optax allows it), which are moved last and flattened into one,
as optax does; ``where`` excludes classes (a mask of the logits' shape, or without the
class axis).

One difference: with ``where``, a label on an excluded class gives ``+inf`` in
:func:`softmax_cross_entropy_with_integer_labels` (optax returns the log-sum-exp of the
included classes minus that excluded logit, which is no cross entropy).

>>> import numpy as np
>>> from arrayloss.compat import optax
>>> optax.softmax_cross_entropy_with_integer_labels(np.asarray([[2.0, 0.0, -1.0]]), np.asarray([0]))
array([0.16984602])
"""

from __future__ import annotations

from types import ModuleType

from .._autodiff import compute
from .._binary import sigmoid_binary_cross_entropy as _sigmoid_binary_cross_entropy
from .._binary import sigmoid_focal_loss as _sigmoid_focal_loss
from .._ctc import RULE as CTC_RULE
from .._ctc import check_ctc
from .._dense import softmax_cross_entropy as _softmax_cross_entropy
from .._divergence import kl_divergence as _kl_divergence
from .._lib._ops import Ops
from .._lib._validation import Array, normalize_axis, ops_of, same_shape
from .._sparse import sparse_softmax_cross_entropy
from ._names import peer_names

__all__ = [
    "ctc_loss",
    "kl_divergence",
    "kl_divergence_with_log_targets",
    "safe_softmax_cross_entropy",
    "sigmoid_binary_cross_entropy",
    "sigmoid_focal_loss",
    "softmax_cross_entropy",
    "softmax_cross_entropy_with_integer_labels",
]

Axis = int | tuple[int, ...] | None

# The words of ctc_loss's error messages that name its arguments, and optax's names.
_CTC_NAMES = {"blank index": "blank_id", "blank": "blank_id", "label_length": "padding"}


def _classes_last(
    arrays: list[Array | None], axis: Axis, ndim: int, ops: Ops
) -> tuple[list[Array | None], int]:
    """The arrays (of ``ndim`` dimensions) with the class ``axis`` (axes: flattened into one) last,
    and the class axis to pass on."""
    if isinstance(axis, int):
        return arrays, axis
    axes = tuple(range(ndim)) if axis is None else tuple(normalize_axis(a, ndim) for a in axis)
    batch = tuple(a for a in range(ndim) if a not in axes)
    xp = ops.xp

    def flat(x: Array | None) -> Array | None:
        if x is None:
            return None
        moved = xp.permute_dims(x, batch + axes)
        return xp.reshape(moved, (*moved.shape[: len(batch)], -1))

    return [flat(x) for x in arrays], -1


def _mask(where: Array | None, logits: Array, axis: Axis, ops: Ops) -> Array | None:
    """``where`` in the logits' shape (optax inserts the class axis where it is missing)."""
    if where is None or where.ndim == logits.ndim:
        return where
    return ops.xp.expand_dims(where, axis=axis if isinstance(axis, int) else -1)


def _excluded(logits: Array, mask: Array, axis: int, ops: Ops) -> Array:
    """The logits with the classes that ``mask`` excludes at ``-inf``; a row without an included class
    is left as it is (its loss is 0 either way, and no ``-inf - -inf`` is computed)."""
    xp = ops.xp
    kept = mask | ~xp.any(mask, axis=axis, keepdims=True)
    return xp.where(kept, logits, xp.full_like(logits, -float("inf")))


def softmax_cross_entropy(logits: Array, labels: Array, axis: Axis = -1, where: Array | None = None) -> Array:
    """``optax.losses.softmax_cross_entropy``: ``-sum(labels * log_softmax(logits))`` over ``axis``,
    the excluded classes left out of both."""
    ops = ops_of({"logits": logits, "labels": labels}, None)
    xp = ops.xp
    mask = _mask(where, logits, axis, ops)
    (logits, labels, mask), class_axis = _classes_last([logits, labels, mask], axis, logits.ndim, ops)
    if mask is not None:
        logits = _excluded(logits, mask, class_axis, ops)
        labels = xp.where(mask, labels, xp.zeros_like(labels))
    return _softmax_cross_entropy(logits, labels, axis=class_axis)


def softmax_cross_entropy_with_integer_labels(
    logits: Array, labels: Array, axis: int | tuple[int, ...] = -1, where: Array | None = None
) -> Array:
    """``optax.losses.softmax_cross_entropy_with_integer_labels``; an example without an included class
    has loss 0."""
    ops = ops_of({"logits": logits, "labels": labels}, None)
    xp = ops.xp
    mask = _mask(where, logits, axis, ops)
    (logits, mask), class_axis = _classes_last([logits, mask], axis, logits.ndim, ops)
    if mask is None:
        return sparse_softmax_cross_entropy(logits, labels, axis=class_axis)
    any_class = xp.astype(xp.any(mask, axis=class_axis), logits.dtype)
    logits = _excluded(logits, mask, class_axis, ops)
    return sparse_softmax_cross_entropy(logits, labels, axis=class_axis, weights=any_class)


def safe_softmax_cross_entropy(logits: Array, labels: Array) -> Array:
    """``optax.losses.safe_softmax_cross_entropy``: a logit of ``-inf`` with a label of 0 contributes 0
    (as every softmax cross entropy of this package does)."""
    return _softmax_cross_entropy(logits, labels)


def sigmoid_binary_cross_entropy(logits: Array, labels: Array) -> Array:
    """``optax.losses.sigmoid_binary_cross_entropy``, elementwise."""
    return _sigmoid_binary_cross_entropy(logits, labels)


def sigmoid_focal_loss(logits: Array, labels: Array, alpha: float | None = None, gamma: float = 2.0) -> Array:
    """``optax.losses.sigmoid_focal_loss``, elementwise."""
    return _sigmoid_focal_loss(logits, labels, alpha=alpha, gamma=gamma)


def _divergence(
    log_predictions: Array, targets: Array, axis: Axis, where: Array | None, *, log_targets: bool
) -> Array:
    ops = ops_of({"log_predictions": log_predictions, "targets": targets}, None)
    xp = ops.xp
    if where is not None:  # an excluded term is left out: a target of probability 0
        absent = xp.full_like(targets, -float("inf") if log_targets else 0.0)
        targets = xp.where(where, targets, absent)
    (log_predictions, targets), class_axis = _classes_last(
        [log_predictions, targets], axis, log_predictions.ndim, ops
    )
    return _kl_divergence(log_predictions, targets, axis=class_axis, log_targets=log_targets)


def kl_divergence(
    log_predictions: Array, targets: Array, axis: Axis = -1, where: Array | None = None
) -> Array:
    """``optax.losses.kl_divergence``: ``sum(targets * (log targets - log_predictions))`` over ``axis``."""
    return _divergence(log_predictions, targets, axis, where, log_targets=False)


def kl_divergence_with_log_targets(
    log_predictions: Array, log_targets: Array, axis: Axis = -1, where: Array | None = None
) -> Array:
    """``optax.losses.kl_divergence_with_log_targets``: as :func:`kl_divergence`, targets as logarithms."""
    return _divergence(log_predictions, log_targets, axis, where, log_targets=True)


def _lengths(name: str, paddings: Array, of: str, like: Array, axes: str, xp: ModuleType) -> Array:
    """The lengths ``(B,)`` (entries before the padding) that ``paddings`` give of the array ``like``
    named ``of``, whose ``axes`` are ``"BTK"`` or ``"BN"``: ``paddings`` has the shape of its first two."""
    if (
        paddings.ndim != 2
        or like.ndim != len(axes)
        or not same_shape(tuple(paddings.shape), tuple(like.shape[:2]))
    ):
        raise ValueError(
            f"{name} has shape {tuple(paddings.shape)} but {of} has shape {tuple(like.shape)}; "
            f"{name} must have shape (B, {axes[1]}) for {of} of shape ({', '.join(axes)})"
        )
    return xp.sum(xp.astype(paddings == 0, xp.int32), axis=1)


def ctc_loss(
    logits: Array,
    logit_paddings: Array,
    labels: Array,
    label_paddings: Array,
    blank_id: int = 0,
    log_epsilon: float = -1e5,
) -> Array:
    """``optax.losses.ctc_loss``: the loss of each sequence ``(B,)`` of ``logits`` ``(B, T, K)``
    and ``labels`` ``(B, N)``, whose paddings (1.0 past a sequence's end, 0.0 before it) give
    their lengths (the paddings lie at the end, as optax expects).

    ``log_epsilon`` stands for ``log(0)`` as in optax: the recursion starts in every state
    with that log weight (the first with 0), a repeated label may follow itself without a
    blank with that log weight, and a blank after a label is entered with weight
    ``1 + exp(log_epsilon)``. An infeasible sequence (too few frames for its labels) thus
    has a large finite loss (about ``-log_epsilon`` per missing frame) and a finite
    gradient, optax's; a feasible one has ``ctc_loss``'s to rounding. Frames and labels
    past the paddings are ignored even where they hold NaN or inf (optax: NaN).
    """
    named = {
        "logits": logits,
        "logit_paddings": logit_paddings,
        "labels": labels,
        "label_paddings": label_paddings,
    }
    xp = ops_of(named, None).xp
    logit_lengths = _lengths("logit_paddings", logit_paddings, "logits", logits, "BTK", xp)
    label_lengths = _lengths("label_paddings", label_paddings, "labels", labels, "BN", xp)
    with peer_names(_CTC_NAMES):
        call = check_ctc(
            logits=logits,
            labels=labels,
            logit_lengths=logit_lengths,
            label_lengths=label_lengths,
            blank=blank_id,
            reduction="none",
            zero_infinity=False,
            xp=xp,
        )
    return compute(CTC_RULE, call._replace(log_epsilon=float(log_epsilon)))
