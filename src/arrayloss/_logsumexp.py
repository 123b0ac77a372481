"""The public log-sum-exp and log-softmax: stable for infinities and huge magnitudes."""

from __future__ import annotations

from types import ModuleType
from typing import Any, cast

from ._lib._ops import Ops
from ._lib._softmax import log_softmax_rows, shifted_log_sum
from ._lib._validation import (
    Array,
    ArrayT,
    check_floating,
    in_compute_dtype,
    move_axis,
    normalize_axis,
    ops_of,
)


def _checked(x: Array, axis: int, xp: ModuleType | None) -> tuple[Array, int, Ops, Any]:
    """Check ``x`` and ``axis``; return ``x`` with ``axis`` last in the accumulation dtype, the axis
    (non-negative), the ops of its namespace and the dtype of ``x``."""
    ops = ops_of({"x": x}, xp)
    xp = ops.xp
    check_floating("x", x, xp)
    if x.ndim == 0:
        raise ValueError("x must have at least one dimension, got a 0-d array")
    axis = normalize_axis(axis, x.ndim, "x")
    z = in_compute_dtype(x, xp)
    return move_axis(z, axis, -1, xp), axis, ops, x.dtype


def logsumexp(
    x: ArrayT, /, *, axis: int = -1, keepdims: bool = False, xp: ModuleType | None = None
) -> ArrayT:
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
        ``-inf``, one holding ``+inf`` gives ``+inf``, one holding NaN gives NaN, and
        an empty one (``axis`` of size 0) gives ``-inf``, the logarithm of an empty sum
        (as ``scipy.special.logsumexp``).

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> al.logsumexp(np.asarray([1000.0, 1000.0]))
    array(1000.69314718)
    """
    z, axis, ops, dtype = _checked(x, axis, xp)
    shift, log_sum = shifted_log_sum(z, ops)
    out = ops.xp.astype(log_sum + shift, dtype, copy=False)
    return cast(ArrayT, move_axis(out, -1, axis, ops.xp) if keepdims else out[..., 0])


def log_softmax(x: ArrayT, /, *, axis: int = -1, xp: ModuleType | None = None) -> ArrayT:
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
        The shape, dtype, namespace and device of ``x`` (empty where ``axis`` has size
        0). Where a slice's log-sum-exp is not finite, the values of
        ``scipy.special.log_softmax``: NaN in a slice of all ``-inf``, and in a slice
        holding ``+inf`` NaN at its ``+inf`` entries and ``-inf`` elsewhere (``inf -
        inf`` is NaN); NaN in a slice holding NaN. No floating-point warning, except on
        Dask for a slice holding ``+inf`` (NumPy's, in the task that computes it).

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> al.log_softmax(np.asarray([0.0, 0.0, -np.inf]))
    array([-0.69314718, -0.69314718,        -inf])
    """
    z, axis, ops, dtype = _checked(x, axis, xp)
    out = ops.xp.astype(log_softmax_rows(z, ops), dtype, copy=False)
    return cast(ArrayT, move_axis(out, -1, axis, ops.xp))
