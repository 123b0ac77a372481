"""Weighting and reduction of per-example losses, and the derivative of the reduction."""

from __future__ import annotations

import math
from typing import Any

from ._ops import Ops
from ._validation import Array, Reduction, broadcast_like, size_of


def apply_weights(loss: Array, weights: Array | None, ops: Ops) -> Array:
    """``loss * weights``, where a weight of exactly 0 drops the example.

    A zero weight gives 0 even where the loss is ``inf`` or NaN, so masked-out
    data never turns into NaN and a weight of 0 is the same as leaving the
    example out.
    """
    if weights is None:
        return loss
    xp = ops.xp
    # Zero a non-finite loss before multiplying: 0 * inf would be NaN (and a NumPy RuntimeWarning).
    # A finite one is kept, so the derivative with respect to a weight of 0 is still the loss.
    dropped = (weights == 0) & ~xp.isfinite(loss)
    return xp.where(dropped, xp.zeros_like(loss), loss) * weights


def dropped_as_constants(z: Array, weights: Array | None, ops: Ops) -> Array:
    """``z`` (classes last) with the examples of weight 0 made constants of the library's autodiff,
    where it differentiates the operations on ``z``; else ``z`` itself.

    :func:`apply_weights` drops their losses, but autodiff of the composition would still multiply
    their cotangent of 0 by the derivative of their loss: NaN where their logits hold NaN or inf. A
    selection passes nothing back to the branch it does not take, whatever that holds, and the
    values (so the derivative with respect to a weight of 0, the loss) stay as they are.
    """
    if weights is None or not ops.differentiates(z):
        return z
    xp = ops.xp
    return xp.where(xp.expand_dims(weights == 0, axis=-1), ops.constant(z), z)


def safe_divide(numerator: Array, denominator: Array, ops: Ops) -> Array:
    """``numerator / denominator``, and 0 where the denominator is 0 (never NaN from 0/0)."""
    xp = ops.xp
    empty = denominator == 0
    ones = xp.ones_like(denominator)
    return xp.where(empty, xp.zeros_like(numerator), numerator / xp.where(empty, ones, denominator))


def count_nonzero(x: Array, axis: int | tuple[int, ...] | None, ops: Ops) -> Array:
    """Number of non-zero entries of ``x`` along ``axis``, in the floating dtype of ``x``."""
    xp = ops.xp
    return xp.sum(xp.astype(x != 0, x.dtype), axis=axis)


def poison(x: Array, poisoned: Array | None, ops: Ops) -> Array:
    """``x`` with NaN where ``poisoned`` (labels out of range on arrays whose values are not read)."""
    if poisoned is None:
        return x
    return ops.xp.where(poisoned, ops.xp.full_like(x, math.nan), x)


def reduce_losses(
    loss: Array, weights: Array | None, reduction: Reduction, ops: Ops, *, poisoned: Array | None = None
) -> Array:
    """Weight the per-example ``loss`` and reduce it.

    ``"mean"`` is ``sum(weights * loss) / sum(weights)`` (``0`` when the weights sum to
    0), or the plain mean without weights. ``poisoned`` marks examples whose loss is
    NaN whatever their weight (labels out of range on arrays that cannot be checked).
    """
    weighted = poison(apply_weights(loss, weights, ops), poisoned, ops)
    if reduction == "none":
        return weighted
    total = ops.total_sum(weighted)
    if reduction == "sum":
        return total
    if weights is None:  # the plain mean: the count is known without looking at values
        count = size_of(tuple(loss.shape))
        if count is None:  # an unknown dimension: counted by the array library
            return safe_divide(total, ops.total_sum(ops.xp.ones_like(loss)), ops)
        return total / float(count) if count else ops.xp.zeros_like(total)
    return safe_divide(total, ops.total_sum(weights), ops)


def example_scale(
    cotangent: Array,
    weights: Array | None,
    reduction: str,
    like: Array,
    dtype: Any,
    ops: Ops,
) -> Array:
    """The derivative of :func:`reduce_losses` with respect to each example's loss, times the cotangent.

    ``weights`` are the combined example weights (None: all ones); an example of
    weight 0 gets exactly 0. The shape of the array ``like`` (one entry per example), in ``dtype``.
    """
    xp = ops.xp
    scale = xp.astype(cotangent, dtype)
    if reduction == "mean":
        count = size_of(tuple(like.shape))
        if weights is not None:
            scale = safe_divide(scale, xp.sum(weights), ops)
        elif count is None:
            scale = safe_divide(scale, xp.sum(xp.ones_like(like, dtype=dtype)), ops)
        else:
            scale = scale / float(max(count, 1))
    return apply_weights(broadcast_like(scale, like, xp), weights, ops)
