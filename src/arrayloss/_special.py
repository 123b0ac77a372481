"""Stable log-sum-exp and log-softmax, written once against the array API.

The primitives here (:func:`row_max`, :func:`row_sum`, :func:`total_sum`, :func:`all_true`,
:func:`row_dot`, :func:`exp_of_temporary`, :func:`difference`) are standard calls with a
measured shortcut on NumPy or PyTorch: NumPy's reductions by their ufuncs' ``reduce``, without
the Python wrappers of ``np.max`` and ``np.sum`` (which doubled the time of an 8x16 call), and
``out=`` or in-place steps that spare block-sized allocations. The shortcuts give the numbers of
the standard calls, which array-api-strict takes (``conformance/test_integrity.py`` compares the
two on NumPy, bit for bit).
"""

from __future__ import annotations

import math
import sys
from types import ModuleType
from typing import NamedTuple

from array_api_compat import device, is_numpy_namespace, is_torch_array

from ._validation import Array, check_floating, in_compute_dtype, is_eager_host, namespace_of, normalize_axis


def shifted_log_sum(z: Array, xp: ModuleType, *, scratch: Array | None = None) -> tuple[Array, Array]:
    """``(shift, log_sum)`` with ``log(sum(exp(z))) = shift + log_sum`` over the last axis (kept, size 1).

    ``shift`` is the row's maximum, replaced by 0 where it is not finite, so that rows
    of all ``-inf`` give a ``log_sum`` of ``-inf`` (never ``log(0)``), rows holding
    ``+inf`` give ``+inf`` and NaN stays NaN, never ``inf - inf``. Keep the two apart
    to stay accurate for huge logits: ``(z - shift) - log_sum`` keeps a ``log_sum``
    that ``z - (shift + log_sum)`` would round away when ``|shift|`` is large.
    ``scratch`` as in :func:`exp_sums`.
    """
    parts = exp_sums(z, xp, scratch=scratch)
    return parts.shift, parts.log_sum


class ExpSums(NamedTuple):
    """What :func:`exp_sums` returns; every array but ``exps`` keeps the last axis with size 1."""

    shift: Array
    exps: Array
    total: Array
    log_sum: Array


def exp_sums(z: Array, xp: ModuleType, *, scratch: Array | None = None) -> ExpSums:
    """``exps = exp(z - shift)`` over the last axis, their sums ``total`` and ``log_sum = log(total)``.

    ``shift`` and ``log_sum`` as in :func:`shifted_log_sum`. ``scratch``, if given, is a
    writable array of ``z``'s dtype with at least its rows (first axis), which the
    exponentials may overwrite and be returned in: a loop over blocks of rows then
    allocates no block-sized array per block.

    On eager host arrays whose rows all have a finite maximum (checked, one value per
    row), every sum holds ``exp(0) = 1``: the shift and the logarithm need no masks
    (the same numbers; the masks were 5 of the 46 us of an 8x16 NumPy call).
    """
    if math.prod(z.shape[:-1]) == 0:  # no rows: nothing to reduce (Dask's max fails on an empty array)
        shift = xp.zeros((*z.shape[:-1], 1), dtype=z.dtype, device=device(z))
        return ExpSums(shift, xp.exp(z), shift, shift)
    shift = row_max(z, xp)
    finite = is_eager_host(z) and all_true(xp.isfinite(shift), xp)
    if not finite:
        shift = xp.where(xp.isfinite(shift), shift, 0.0)
    exps = exp_of_temporary(difference(z, shift, xp, scratch=scratch), xp)
    total = row_sum(exps, xp)
    return ExpSums(shift, exps, total, xp.log(total) if finite else log_of_sum(total, xp))


def difference(x: Array, y: Array, xp: ModuleType, *, scratch: Array | None = None) -> Array:
    """``x - y``, written into the first rows of ``scratch`` if given (see :func:`exp_sums`)."""
    if scratch is None:
        return x - y
    rows = scratch if scratch.shape[0] == x.shape[0] else scratch[: x.shape[0], ...]
    return _subtract_into(rows, x, y, xp)


def _subtract_into(out: Array, x: Array, y: Array, xp: ModuleType) -> Array:
    """``x - y`` written into ``out``: in one pass on NumPy and PyTorch (their ``out=``), else two."""
    if is_numpy_namespace(xp):
        return xp.subtract(x, y, out=out)
    if is_torch_array(out):
        return sys.modules["torch"].sub(x, y, out=out)
    out[...] = x
    out -= y
    return out


def row_max(x: Array, xp: ModuleType) -> Array:
    """``max(x)`` over the last axis, kept: on NumPy by its ufunc (``np.max``'s Python wrapper
    costs as much again on a small array: 2.6 against 1.4 us at 8x16)."""
    if is_numpy_namespace(xp):
        return sys.modules["numpy"].maximum.reduce(x, axis=-1, keepdims=True)
    return xp.max(x, axis=-1, keepdims=True)


def row_sum(x: Array, xp: ModuleType) -> Array:
    """``sum(x)`` over the last axis, kept: on NumPy by its ufunc (as :func:`row_max`)."""
    if is_numpy_namespace(xp):
        return sys.modules["numpy"].add.reduce(x, axis=-1, keepdims=True)
    return xp.sum(x, axis=-1, keepdims=True)


def total_sum(x: Array, xp: ModuleType) -> Array:
    """``sum(x)`` over all axes: on NumPy by its ufunc (as :func:`row_max`)."""
    if is_numpy_namespace(xp):
        return sys.modules["numpy"].add.reduce(x, axis=None)
    return xp.sum(x)


def all_true(x: Array, xp: ModuleType) -> bool:
    """Whether every element of the boolean ``x`` is true (eager arrays): on NumPy by its ufunc."""
    if is_numpy_namespace(xp):
        return bool(sys.modules["numpy"].logical_and.reduce(x, axis=None))
    return bool(xp.all(x))


def row_dot(x: Array, y: Array, xp: ModuleType) -> Array:
    """``sum(x * y)`` over the last axis: NumPy's ``vecdot`` (no product array, 3.5x faster on a
    4 MiB block), else the product and its sum (``vecdot`` is 6x slower than them on torch CPU)."""
    if is_numpy_namespace(xp):
        return xp.vecdot(x, y, axis=-1)
    return xp.sum(x * y, axis=-1)


def exp_of_temporary(x: Array, xp: ModuleType) -> Array:
    """``exp(x)`` for an ``x`` that the caller owns: in place on NumPy and PyTorch.

    A measured speed-up on eager host arrays (``benchmarks/RESULTS.md``): one
    block-sized allocation per block of rows fewer keeps glibc from returning the
    freed blocks to the system and faulting them in again for the next block.
    """
    if is_numpy_namespace(xp):
        return xp.exp(x, out=x)
    if is_torch_array(x):
        return x.exp_()
    return xp.exp(x)


def log_of_sum(total: Array, xp: ModuleType) -> Array:
    """``log(total)`` of sums of exponentials, ``-inf`` (never a ``log(0)`` warning) where they are 0."""
    nothing = total == 0
    return xp.where(nothing, -math.inf, xp.log(xp.where(nothing, 1.0, total)))


def lse_last(z: Array, xp: ModuleType) -> Array:
    """log(sum(exp(z))) over the last axis of a floating array, keeping that axis (size 1).

    See :func:`shifted_log_sum` for infinities and NaN.
    """
    shift, log_sum = shifted_log_sum(z, xp)
    return log_sum + shift


def _prepare(x: Array, axis: int, xp: ModuleType | None) -> tuple[Array, int, ModuleType]:
    xp = namespace_of({"x": x}, xp)
    check_floating("x", x, xp)
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension, got a 0-d array")
    axis = normalize_axis(axis, x.ndim, "x")
    z = in_compute_dtype(x, xp)
    return xp.moveaxis(z, axis, -1), axis, xp


def logsumexp(x: Array, /, *, axis: int = -1, keepdims: bool = False, xp: ModuleType | None = None) -> Array:
    r"""Log of the sum of exponentials along one axis, computed stably.

    .. math:: \operatorname{lse}(x) = m + \log \sum_i e^{x_i - m}, \quad m = \max_i x_i

    Parameters
    ----------
    x : array
        Real floating array. float16 and bfloat16 are accumulated in float32.
    axis : int, optional
        The axis to reduce. Default: the last.
    keepdims : bool, optional
        Keep the reduced axis with size 1.
    xp : namespace, optional
        The array namespace; inferred from ``x`` when omitted.

    Returns
    -------
    array
        Of the dtype, namespace and device of ``x``. A slice of all ``-inf`` gives
        ``-inf``, one holding ``+inf`` gives ``+inf``, one holding NaN gives NaN.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> al.logsumexp(np.asarray([1000.0, 1000.0]))
    array(1000.69314718)
    """
    z, axis, xp = _prepare(x, axis, xp)
    out = xp.astype(lse_last(z, xp), x.dtype, copy=False)
    return xp.moveaxis(out, -1, axis) if keepdims else out[..., 0]


def log_softmax(x: Array, /, *, axis: int = -1, xp: ModuleType | None = None) -> Array:
    r"""Logarithm of the softmax along one axis: :math:`x_i - \operatorname{lse}(x)`.

    Parameters
    ----------
    x : array
        Real floating array. float16 and bfloat16 are computed in float32.
    axis : int, optional
        The axis along which the softmax is normalised. Default: the last.
    xp : namespace, optional
        The array namespace; inferred from ``x`` when omitted.

    Returns
    -------
    array
        The shape, dtype, namespace and device of ``x``.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> al.log_softmax(np.asarray([0.0, 0.0, -np.inf]))
    array([-0.69314718, -0.69314718,        -inf])
    """
    z, axis, xp = _prepare(x, axis, xp)
    shift, log_sum = shifted_log_sum(z, xp)
    out = xp.astype((z - shift) - log_sum, x.dtype, copy=False)
    return xp.moveaxis(out, -1, axis)
