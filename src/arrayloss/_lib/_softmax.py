"""The stable log-sum-exp of rows, the primitive under every loss, written once against the array API."""

from __future__ import annotations

import math
from typing import NamedTuple

from ._ops import Ops
from ._validation import Array, size_of


class ExpSums(NamedTuple):
    """What :func:`exp_sums` returns; every array but ``exps`` keeps the last axis with size 1."""

    shift: Array
    exps: Array
    total: Array
    log_sum: Array


def exp_sums(z: Array, ops: Ops, *, scratch: Array | None = None) -> ExpSums:
    """``exps = exp(z - shift)`` over the last axis, their sums ``total`` and ``log_sum = log(total)``.

    ``log(sum(exp(z))) = shift + log_sum``. ``shift`` is the row's maximum, replaced
    by 0 where it is not finite, so that rows of all ``-inf`` give a ``log_sum`` of
    ``-inf`` (never ``log(0)``), rows holding ``+inf`` give ``+inf`` and NaN stays NaN,
    never ``inf - inf``. Keep the two apart to stay accurate for huge logits:
    ``(z - shift) - log_sum`` keeps a ``log_sum`` that ``z - (shift + log_sum)`` would
    round away when ``|shift|`` is large.

    ``scratch``, if given, is a writable array of ``z``'s dtype with at least its rows
    (first axis), which the exponentials may overwrite and be returned in: a loop over
    blocks of rows then allocates no block-sized array per block.

    On eager host arrays whose rows all have a finite maximum (checked, one value per
    row), every sum holds ``exp(0) = 1``: the shift and the logarithm need no masks
    (the same numbers, fewer steps).

    Rows of no elements (a last axis of size 0) have a sum of 0 and a ``log_sum`` of
    ``-inf``, the logarithm of an empty sum (as ``scipy.special.logsumexp``), with a
    shift of 0: there is no maximum to take.
    """
    return _exp_sums(z, ops, scratch)[0]


def _exp_sums(z: Array, ops: Ops, scratch: Array | None) -> tuple[ExpSums, bool]:
    """:func:`exp_sums`, and whether every row's maximum was read and found finite (eager arrays only):
    then every ``log_sum`` is finite, since every sum lies between 1 and the number of its terms."""
    xp = ops.xp
    if size_of(tuple(z.shape)) == 0 or z.shape[-1] == 0:  # a static shape: the branch costs nothing
        # Nothing to take the maximum of (the libraries' maxima raise on an empty axis). The sums over
        # the last axis are zeros of the rows' shape, in z's namespace, device and dtype, also where
        # the number of rows is unknown (Dask after boolean indexing).
        total = ops.row_sum(z)
        return ExpSums(ops.constant(total), xp.exp(z), total, total - math.inf), False
    shift, finite = finite_shift(ops.row_max(z), ops, eager=ops.is_eager(z))
    exps = ops.exp_of_temporary(difference(z, shift, ops, scratch=scratch))
    total = ops.row_sum(exps)
    return ExpSums(shift, exps, total, xp.log(total) if finite else log_of_sum(total, ops)), finite


def finite_shift(row_max: Array, ops: Ops, *, eager: bool) -> tuple[Array, bool]:
    """The shift of :func:`exp_sums` from the rows' maximum (kept axis), and whether every row's was finite.

    A constant of differentiation (``d lse / d shift = 0``: autodiff need not go through the
    maximum), 0 where the maximum is not finite. On ``eager`` arrays the maxima are read once:
    when all are finite the mask is skipped (and True returned); otherwise False.
    """
    xp = ops.xp
    shift = ops.constant(row_max)
    finite = eager and ops.all_true(xp.isfinite(shift))
    if not finite:
        shift = xp.where(xp.isfinite(shift), shift, 0.0)
    return shift, finite


def shifted_log_sum(z: Array, ops: Ops, *, scratch: Array | None = None) -> tuple[Array, Array]:
    """``(shift, log_sum)`` of :func:`exp_sums`: ``log(sum(exp(z))) = shift + log_sum``, axis kept."""
    parts = exp_sums(z, ops, scratch=scratch)
    return parts.shift, parts.log_sum


def log_softmax_rows(z: Array, ops: Ops) -> Array:
    """``log(softmax(z))`` over the last axis, as ``(z - shift) - log_sum`` of :func:`exp_sums`.

    Where a row's ``log_sum`` is not finite, the values of ``scipy.special.log_softmax``
    (IEEE arithmetic: NaN for every entry of a row of all ``-inf`` and for the ``+inf``
    entries of a row holding ``+inf``, whose other entries are ``-inf``; NaN in a row
    holding NaN), without the floating-point "invalid" warning of ``inf - inf``:

    - eager host arrays whose rows all have a finite maximum (read by :func:`exp_sums`
      anyway): every ``log_sum`` is finite, the plain difference;
    - other eager host arrays (a row of all ``-inf``, or holding ``+inf`` or NaN): by
      :func:`subtract`, which takes more passes over the rows;
    - arrays whose values are not read: a ``log_sum`` of ``-inf`` (a row of all
      ``-inf``) is replaced by NaN, one value per row, so that no entry computes
      ``-inf - -inf``. A row holding ``+inf`` still computes ``inf - inf`` at its
      ``+inf`` entries: silent on PyTorch and JAX, not on Dask's NumPy blocks.
    """
    parts, finite = _exp_sums(z, ops, None)
    shift, log_sum = parts.shift, parts.log_sum
    del parts  # the exponentials, whose memory the differences below can then reuse
    shifted = z - shift
    if finite:
        return shifted - log_sum
    if ops.is_eager(z):
        return subtract(shifted, log_sum, ops)
    return shifted - ops.xp.where(log_sum == -math.inf, math.nan, log_sum)


def difference(x: Array, y: Array, ops: Ops, *, scratch: Array | None = None) -> Array:
    """``x - y``, written into the first rows of ``scratch`` if given (see :func:`exp_sums`)."""
    if scratch is None:
        return x - y
    rows = scratch if scratch.shape[0] == x.shape[0] else scratch[: x.shape[0], ...]
    return ops.subtract_into(rows, x, y)


def subtract(x: Array, y: Array, ops: Ops) -> Array:
    """``x - y`` (per-row values), NaN where both are the same infinity, with no floating-point "invalid"
    warning: a row's log-sum-exp minus its label's logit is ``inf - inf`` where that logit is ``+inf``,
    also in rows that a weight of 0 then drops."""
    xp = ops.xp
    undefined = xp.isinf(y) & (x == y)
    return xp.where(undefined, math.nan, x - xp.where(undefined, 0.0, y))


def log_of_sum(total: Array, ops: Ops) -> Array:
    """``log(total)`` of sums of exponentials, ``-inf`` (never a ``log(0)`` warning) where they are 0."""
    xp = ops.xp
    nothing = total == 0
    return xp.where(nothing, -math.inf, xp.log(xp.where(nothing, 1.0, total)))


def softmax_and_lse(
    z: Array,
    scale: Array,
    row_stats: tuple[Array, ...],
    masked: bool,
    ops: Ops,
    scratch: Array | None = None,
) -> tuple[Array, Array]:
    """Softmax over the last axis and the log-sum-exp (kept axis) of the rows ``z``.

    The softmax is ``exp((z - shift) - log_sum)``, accurate for huge logits too, from the
    rows' ``row_stats = (shift, log_sum)`` (leading shape of ``z``), or from
    :func:`shifted_log_sum` when ``row_stats`` is empty. With ``masked``, the rows of
    ``scale`` 0 are computed from zeros (finite, never NaN from ``inf - inf``); on eager
    host arrays only when one of them is not finite (its log-sum-exp shows it), which
    spares a block-sized temporary. The softmax is a temporary of the caller, computed
    in ``scratch`` if given (see :func:`exp_sums`).
    """
    if row_stats:
        shift, log_sum = row_stats[0][..., None], row_stats[1][..., None]
    else:
        shift, log_sum = shifted_log_sum(z, ops, scratch=scratch)
    lse = shift + log_sum
    if masked and unsafe_dropped_rows(lse[..., 0], scale, ops):
        z, shift, log_sum = (zero_dropped_rows(a, scale, ops) for a in (z, shift, log_sum))
        lse = shift + log_sum
    shifted = difference(z, shift, ops, scratch=scratch)
    shifted -= log_sum  # as (z - shift) - log_sum, in place
    return ops.exp_of_temporary(shifted), lse


def unsafe_dropped_rows(finite_if_safe: Array, scale: Array, ops: Ops) -> bool:
    """Whether the rows of ``scale`` 0 must be zeroed before their gradient is taken.

    On eager host arrays: where one of them has a ``finite_if_safe`` value (its
    log-sum-exp) that is not finite. Always on other arrays, whose values are not read.
    """
    if not ops.is_eager(scale):
        return True
    xp = ops.xp
    return bool(xp.any((scale == 0) & ~xp.isfinite(finite_if_safe)))


def zero_dropped_rows(z: Array, scale: Array, ops: Ops) -> Array:
    """``z`` (rows, or one column per row) with the rows of scale 0 set to 0: their gradient is then 0."""
    xp = ops.xp
    return xp.where(scale[..., None] == 0, xp.zeros_like(z), z)
