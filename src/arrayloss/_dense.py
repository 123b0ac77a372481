"""Softmax cross entropy with dense probability targets: the checks, the forward pass, the gradient rule.

:func:`dense_losses` and :func:`dense_logits_vjp` are the per-row math that :mod:`._sequence` reuses.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, NamedTuple, cast

from ._autodiff import Rule, compute, differentiable
from ._lib._blocks import in_row_blocks, map_row_blocks, rows_per_block, scratch_block
from ._lib._labels import check_weights
from ._lib._ops import Ops
from ._lib._reduce import dropped_as_constants, example_scale, reduce_losses
from ._lib._softmax import (
    difference,
    log_of_sum,
    shifted_log_sum,
    softmax_and_lse,
    subtract,
    unsafe_dropped_rows,
    zero_dropped_rows,
)
from ._lib._validation import (
    Array,
    ArrayT,
    Reduction,
    as_layout_of,
    broadcast_like,
    check_floating,
    check_fraction,
    check_logits,
    check_reduction,
    class_axis_last,
    compute_dtype,
    ops_of,
    same_shape,
)


class DenseCall(NamedTuple):
    """A checked call of :func:`softmax_cross_entropy` (see :class:`~._autodiff.Call`)."""

    ops: Ops
    logits: Array
    targets: Array
    axis: int
    weights: Array | None
    label_smoothing: float
    reduction: Reduction

    @property
    def primals(self) -> tuple[Array, ...]:
        return (self.logits,)

    @property
    def constants(self) -> tuple[Any, ...]:
        return (self.weights, self.targets)

    @property
    def one_pass(self) -> bool:  # as for the sparse cross entropy
        return self.reduction != "none" and self.ops.is_eager(self.logits)


def check_dense(
    *,
    logits: Array,
    targets: Array,
    axis: int,
    weights: Array | None,
    label_smoothing: float,
    reduction: Reduction,
    xp: ModuleType | None,
) -> DenseCall:
    """Check the arguments of :func:`softmax_cross_entropy` once; return the call's record."""
    ops = ops_of({"logits": logits, "targets": targets, "weights": weights}, xp, optional=("weights",))
    xp = ops.xp
    axis = check_logits(logits, axis, xp)
    check_reduction(reduction)
    check_fraction("label_smoothing", label_smoothing)
    check_floating("targets", targets, xp)
    if not same_shape(tuple(targets.shape), tuple(logits.shape)):
        raise ValueError(
            f"targets has shape {tuple(targets.shape)} but logits has shape {tuple(logits.shape)}; "
            "they must match"
        )
    if weights is not None:
        example_shape = logits.shape[:axis] + logits.shape[axis + 1 :]
        check_weights("weights", weights, example_shape, "per-example loss", ops)
    return DenseCall(ops, logits, targets, axis, weights, label_smoothing, reduction)


def dense_losses(z: Array, targets: Array, *, label_smoothing: float, ops: Ops) -> Array:
    """Per-row cross entropy of ``z`` and probability ``targets``, both classes-last, same dtype.

    Eager host arrays: in cache-sized blocks of rows (:func:`dense_block_losses`), one
    exponential and no logits-sized temporary; other arrays, and tensors that autograd
    records (in-place steps): :func:`masked_dense_losses`.
    """
    if not ops.is_eager(z) or ops.records_gradient((z, targets)):
        return masked_dense_losses(z, targets, label_smoothing=label_smoothing, ops=ops)
    if z.ndim < 2:
        return dense_block_losses(z, targets, label_smoothing=label_smoothing, ops=ops).loss
    xp = ops.xp
    block = rows_per_block(None, z, ops)
    rows = (xp.reshape(z, (-1, z.shape[-1])), xp.reshape(targets, (-1, z.shape[-1])))
    scratch = scratch_block(rows[0], block, ops)

    def block_loss(z_rows: Array, target_rows: Array) -> Array:
        return dense_block_losses(
            z_rows, target_rows, label_smoothing=label_smoothing, ops=ops, scratch=scratch
        ).loss

    return xp.reshape(map_row_blocks(block_loss, rows, block, ops), tuple(z.shape[:-1]))


class DenseBlock(NamedTuple):
    """What :func:`dense_block_losses` returns (the row axis of ``exps`` and ``total`` kept)."""

    loss: Array
    exps: Array
    total: Array
    log_sum: Array
    mass: Array


def dense_block_losses(
    z: Array, targets: Array, *, label_smoothing: float, ops: Ops, scratch: Array | None = None
) -> DenseBlock:
    r"""Cross entropy of rows ``z`` of an eager host array and probability ``targets``, and its parts.

    As :math:`\big(\sum_c t_c\big) \log \sum_c e^{z_c - m} - \sum_c t_c (z_c - m)`, from one
    exponential of the rows (kept in ``exps``, in ``scratch`` if given, see
    :func:`~._lib._softmax.exp_sums`), with ``total`` the rows' sums of exponentials (kept
    axis), ``log_sum`` their logarithms and ``mass`` the sums of the (smoothed) targets.
    If a logit is not finite (``0 * -inf`` would be NaN), the loss comes from
    :func:`masked_dense_losses` instead: this reads values, for eager arrays only.
    """
    xp = ops.xp
    maxima = ops.row_max(z)
    finite = math.prod(z.shape) == 0 or (ops.all_true(xp.isfinite(maxima)) and bool(xp.isfinite(xp.min(z))))
    shift = maxima if finite else xp.where(xp.isfinite(maxima), maxima, 0.0)
    shifted = difference(z, shift, ops, scratch=scratch)
    mass = xp.sum(targets, axis=-1)
    if label_smoothing:  # the targets (1 - eps) * t + eps / C, without forming them
        mass = (1.0 - label_smoothing) * mass + label_smoothing
    cross = None
    if finite:
        cross = ops.row_dot(targets, shifted)
        if label_smoothing:
            smooth = (label_smoothing / z.shape[-1]) * xp.sum(shifted, axis=-1)
            cross = (1.0 - label_smoothing) * cross + smooth
    exps = ops.exp_of_temporary(shifted)
    total = ops.row_sum(exps)
    log_sum = xp.log(total) if finite else log_of_sum(total, ops)  # finite: every total is at least 1
    if cross is None:
        loss = masked_dense_losses(z, targets, label_smoothing=label_smoothing, ops=ops)
    else:
        loss = mass * log_sum[..., 0] - cross
    return DenseBlock(loss, exps, total, log_sum, mass)


def masked_dense_losses(z: Array, targets: Array, *, label_smoothing: float, ops: Ops) -> Array:
    """:func:`dense_losses` by the log-probabilities, masked where a target is 0 (logits-sized arrays)."""
    xp = ops.xp
    if label_smoothing:
        targets = (1.0 - label_smoothing) * targets + label_smoothing / z.shape[-1]
    shift, log_sum = shifted_log_sum(z, ops)
    log_probs = subtract(z - shift, log_sum, ops)  # NaN in a row holding +inf
    zero = xp.asarray(0, dtype=z.dtype, device=ops.device(z))
    # A target of 0 contributes 0, also where the log-probability is -inf (no 0 * -inf = NaN); a finite
    # log-probability is kept, so the derivative with respect to a target of 0 is still -log p.
    masked = (targets == 0) & ~xp.isfinite(log_probs)
    return -xp.sum(targets * xp.where(masked, zero, log_probs), axis=-1)


def _subtract_targets(grad: Array, targets: Array, coefficient: Array, label_smoothing: float) -> Array:
    """``grad`` (a temporary, changed in place) minus the smoothed ``targets`` times ``coefficient``."""
    grad -= targets * (coefficient * (1.0 - label_smoothing))
    if label_smoothing:
        grad -= coefficient * (label_smoothing / grad.shape[-1])
    return grad


def dense_logits_vjp(
    z: Array, targets: Array, scale: Array, *, label_smoothing: float, masked: bool, ops: Ops
) -> Array:
    r"""Gradient of :math:`\sum_i s_i \ell_i` for dense ``targets`` with respect to ``z``.

    .. math:: \frac{\partial \ell}{\partial z} = \operatorname{softmax}(z) \sum_c t_c - t,
              \qquad t = (1-\varepsilon)\,\mathrm{targets} + \varepsilon / C

    With ``masked``, rows of scale 0 are exactly 0 even where their logits are not finite.
    Computed in blocks of rows (:func:`~._lib._blocks.in_row_blocks`).
    """
    xp = ops.xp

    def rows(z: Array, targets: Array, scale: Array, scratch: Array | None = None) -> tuple[Array]:
        coefficient = scale[..., None]
        mass = (1.0 - label_smoothing) * xp.sum(targets, axis=-1, keepdims=True) + label_smoothing
        grad = softmax_and_lse(z, scale, (), masked, ops, scratch)[0]  # our temporary: updated in place
        grad *= coefficient * mass
        return (_subtract_targets(grad, targets, coefficient, label_smoothing),)

    return in_row_blocks(rows, z, (targets, scale), ops, scratch=True)[0]


def _gradient_rows_and_losses(
    z: Array,
    targets: Array,
    scale: Array,
    *,
    label_smoothing: float,
    masked: bool,
    ops: Ops,
    scratch: Array | None = None,
) -> tuple[Array, Array]:
    """The gradient rows of :func:`dense_logits_vjp` and the rows' losses, from one exponential of ``z``.

    Eager host arrays (:func:`dense_block_losses`); ``masked`` and ``scratch`` as in
    :func:`~._sparse.gradient_rows_and_losses`.
    """
    parts = dense_block_losses(z, targets, label_smoothing=label_smoothing, ops=ops, scratch=scratch)
    if masked and unsafe_dropped_rows(parts.log_sum[..., 0], scale, ops):
        zeroed = zero_dropped_rows(z, scale, ops)
        parts = dense_block_losses(zeroed, targets, label_smoothing=label_smoothing, ops=ops, scratch=scratch)
    coefficient = scale[..., None]
    grad = parts.exps  # softmax = exps / total
    grad *= coefficient * (parts.mass[..., None] / parts.total)
    return _subtract_targets(grad, targets, coefficient, label_smoothing), parts.loss


def _classes_last(call: DenseCall, logits: Array) -> tuple[Array, Array, Array | None]:
    """Logits and targets with classes last in the accumulation dtype, and the weights broadcast."""
    xp = call.ops.xp
    dtype = compute_dtype(logits.dtype, xp)
    z = xp.astype(class_axis_last(logits, call.axis, xp), dtype, copy=False)
    t = xp.astype(class_axis_last(call.targets, call.axis, xp), dtype, copy=False)
    w = call.weights
    w = None if w is None else broadcast_like(xp.astype(w, dtype), z[..., 0], xp)
    return z, t, w


def _forward(call: DenseCall, logits: Array) -> tuple[Array, tuple[Array, ...]]:
    z, t, w = _classes_last(call, logits)
    loss = dense_losses(
        dropped_as_constants(z, w, call.ops), t, label_smoothing=call.label_smoothing, ops=call.ops
    )
    return call.ops.as_result(reduce_losses(loss, w, call.reduction, call.ops), logits.dtype), ()


def _backward(
    call: DenseCall, primals: tuple[Array, ...], residuals: tuple[Array, ...], cotangent: Array
) -> tuple[Array]:
    (logits,) = primals
    ops = call.ops
    z, t, w = _classes_last(call, logits)
    scale = example_scale(cotangent, w, call.reduction, z[..., 0], z.dtype, ops)
    grad = dense_logits_vjp(z, t, scale, label_smoothing=call.label_smoothing, masked=w is not None, ops=ops)
    return (as_layout_of(grad, logits, call.axis, ops.xp),)


def _fused(call: DenseCall, logits: Array) -> tuple[Array, tuple[Array]]:
    """A scalar loss and its gradient, from one exponential of each block."""
    ops = call.ops
    xp = ops.xp
    z, t, w = _classes_last(call, logits)
    ones = xp.ones((), dtype=z.dtype, device=ops.device(z))
    scale = example_scale(ones, w, call.reduction, z[..., 0], z.dtype, ops)

    def rows(z: Array, t: Array, scale: Array, scratch: Array | None = None) -> tuple[Array, Array]:
        return _gradient_rows_and_losses(
            z, t, scale, label_smoothing=call.label_smoothing, masked=w is not None, ops=ops, scratch=scratch
        )

    grad, loss = in_row_blocks(rows, z, (t, scale), ops, scratch=True)
    value = ops.as_result(reduce_losses(loss, w, call.reduction, ops), logits.dtype)
    return value, (as_layout_of(grad, logits, call.axis, xp),)


RULE = Rule(check_dense, _forward, _backward, _fused)


@differentiable(RULE)
def softmax_cross_entropy(
    logits: ArrayT,
    targets: Array,
    /,
    *,
    axis: int = -1,
    weights: Array | None = None,
    label_smoothing: float = 0.0,
    reduction: Reduction = "none",
    xp: ModuleType | None = None,
) -> ArrayT:
    r"""Softmax cross entropy between ``logits`` and dense probability ``targets``.

    .. math:: \ell = -\sum_c t_c \log \operatorname{softmax}(z)_c,
              \qquad t = (1-\varepsilon)\,\mathrm{targets} + \varepsilon / C

    Parameters
    ----------
    logits : array, shape ``(..., C, ...)``
        Real floating logits; float16 and bfloat16 are accumulated in float32.
    targets : array
        Real floating, the shape of ``logits``; each slice along ``axis`` is a
        probability distribution (not checked). A target of 0 contributes 0 even
        where the logit is ``-inf``.
    axis : int, optional
        The class axis. Default: the last.
    weights : array, optional
        Non-negative per-example weights, broadcastable to ``logits`` without ``axis``.
    label_smoothing : float in [0, 1], optional
        :math:`\varepsilon` above.
    reduction : {"none", "sum", "mean"}, optional
        As in :func:`sparse_softmax_cross_entropy`; ``"mean"`` is the weighted mean,
        0 when the weights sum to 0.
    xp : namespace, optional
        Force an array namespace; inferred from the arrays when omitted.

    Returns
    -------
    array
        In the namespace, on the device, and with the dtype of ``logits``.

    Notes
    -----
    On eager host arrays (NumPy, array-api-strict, torch on CPU) the loss is computed
    in cache-sized blocks of rows as
    :math:`(\sum_c t_c) \operatorname{lse}(z) - \sum_c t_c z_c`, with one exponential
    and no array of the size of ``logits``; with ``reduction="sum"`` or ``"mean"`` on
    CPU tensors that require grad, the gradient (:math:`\operatorname{softmax}(z)
    \sum_c t_c - t`, scaled) is computed in the same pass and kept until
    ``backward()``, as in :func:`sparse_softmax_cross_entropy`.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> logits = np.asarray([[2.0, 0.5, -1.0]])
    >>> al.softmax_cross_entropy(logits, np.asarray([[1.0, 0.0, 0.0]]))
    array([0.2413113])
    """
    call = check_dense(
        logits=logits,
        targets=targets,
        axis=axis,
        weights=weights,
        label_smoothing=label_smoothing,
        reduction=reduction,
        xp=xp,
    )
    return cast(ArrayT, compute(RULE, call))
