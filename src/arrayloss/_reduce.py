"""Weighting and reduction of per-example losses, shared by every loss."""

from __future__ import annotations

import math
from types import ModuleType

from array_api_compat import is_numpy_namespace

from ._special import total_sum
from ._validation import Array


def apply_weights(loss: Array, weights: Array | None, xp: ModuleType) -> Array:
    """``loss * weights``, where a weight of exactly 0 drops the example.

    A zero weight gives 0 even where the loss is ``inf`` or NaN, so masked-out
    data never turns into NaN and a weight of 0 is the same as leaving the
    example out.
    """
    if weights is None:
        return loss
    # Zero a non-finite loss before multiplying: 0 * inf would be NaN (and a NumPy RuntimeWarning).
    # A finite one is kept, so the derivative with respect to a weight of 0 is still the loss.
    dropped = (weights == 0) & ~xp.isfinite(loss)
    return xp.where(dropped, xp.zeros_like(loss), loss) * weights


def safe_divide(numerator: Array, denominator: Array, xp: ModuleType) -> Array:
    """``numerator / denominator``, and 0 where the denominator is 0 (never NaN from 0/0)."""
    empty = denominator == 0
    ones = xp.ones_like(denominator)
    return xp.where(empty, xp.zeros_like(numerator), numerator / xp.where(empty, ones, denominator))


def count_nonzero(x: Array, axis: int | tuple[int, ...] | None, xp: ModuleType) -> Array:
    """Number of non-zero entries of ``x`` along ``axis``, in the floating dtype of ``x``."""
    return xp.sum(xp.astype(x != 0, x.dtype), axis=axis)


def reduce_losses(
    loss: Array, weights: Array | None, reduction: str, xp: ModuleType, *, poisoned: Array | None = None
) -> Array:
    """Weight the per-example ``loss`` and reduce it.

    ``"mean"`` is ``sum(weights * loss) / sum(weights)`` (``0`` when the weights sum to
    0), or the plain mean without weights. ``poisoned`` marks examples whose loss is
    NaN whatever their weight (labels out of range on arrays that cannot be checked).
    """
    weighted = apply_weights(loss, weights, xp)
    if poisoned is not None:
        weighted = xp.where(poisoned, xp.full_like(weighted, math.nan), weighted)
    if reduction == "none":
        return weighted
    total = total_sum(weighted, xp)
    if reduction == "sum":
        return total
    if weights is None:  # the plain mean: the count is known without looking at values
        count = math.prod(loss.shape)
        return total / float(count) if count else xp.zeros_like(total)
    return safe_divide(total, total_sum(weights, xp), xp)


def as_result(out: Array, dtype: object, xp: ModuleType) -> Array:
    """``out`` in the result ``dtype``, always an array.

    NumPy turns 0-d results of reductions and arithmetic into scalars, which
    indexing with an Ellipsis makes 0-d arrays again (7x faster than ``asarray``);
    other libraries keep 0-d arrays.
    """
    if out.dtype != dtype:
        out = xp.astype(out, dtype)
    return out[...] if is_numpy_namespace(xp) else out
