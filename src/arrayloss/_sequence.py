"""Sequence losses: TensorFlow Addons' ``sequence_loss`` and TensorFlow's ``sequence_loss_by_example``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from types import ModuleType

from array_api_compat import device

from ._autodiff import analytic_backward
from ._cross_entropy import dense_terms, sparse_terms
from ._reduce import apply_weights, as_result, count_nonzero, safe_divide
from ._validation import (
    Array,
    check_floating,
    check_labels,
    check_logits,
    check_real,
    check_same_length,
    check_weights_valid,
    compute_dtype,
    is_eager_host,
    namespace_of,
)

LossFunction = Callable[..., Array]

SEQUENCE_FLAGS = ("average_across_timesteps", "average_across_batch", "sum_over_timesteps", "sum_over_batch")
"""The reduction flags of :func:`sequence_loss`."""

# Pairs of sequence_loss flags that TensorFlow Addons rejects together.
_EXCLUSIVE_FLAGS = (
    ("average_across_timesteps", "sum_over_timesteps"),
    ("average_across_batch", "sum_over_batch"),
    ("average_across_batch", "sum_over_timesteps"),
    ("sum_over_batch", "average_across_timesteps"),
)


def step_losses(
    logits: Array, targets: Array, softmax_loss_function: LossFunction | None, xp: ModuleType
) -> Array:
    """Cross entropy of every step of ``[batch, time, classes]`` logits, shape ``[batch, time]``.

    The result is in the accumulation dtype (float32 for half-precision logits).
    ``targets`` are integer ``[batch, time]`` labels or float ``[batch, time, classes]``
    probabilities. A ``softmax_loss_function`` is called once, as
    ``f(labels=..., logits=...)`` on the flattened ``[batch * time, ...]`` arrays,
    and must return one loss per row.
    """
    check_step_logits(logits, xp)
    batch, time, classes = logits.shape
    dtype = compute_dtype(logits.dtype, xp)
    if softmax_loss_function is not None:
        flat = softmax_loss_function(
            labels=xp.reshape(targets, (batch * time, *targets.shape[2:])),
            logits=xp.reshape(logits, (batch * time, classes)),
        )
        return xp.astype(xp.reshape(flat, (batch, time)), dtype)
    z = xp.astype(logits, dtype, copy=False)
    if targets.ndim == 3:
        check_floating("targets", targets, xp)
        if tuple(targets.shape) != tuple(logits.shape):
            raise ValueError(
                f"dense targets have shape {tuple(targets.shape)} but logits have shape "
                f"{tuple(logits.shape)}; they must match"
            )
        return dense_terms(z, xp.astype(targets, dtype, copy=False), label_smoothing=0.0, xp=xp)
    check_labels(targets, (batch, time), xp, "targets")
    terms = sparse_terms(
        z, targets, ignore_index=None, label_smoothing=0.0, z_loss=0.0, xp=xp, name="targets"
    )
    loss, poisoned = terms.loss, terms.poisoned
    # Targets out of range on arrays that cannot be checked eagerly: that step's loss is NaN.
    return loss if poisoned is None else xp.where(poisoned, xp.full_like(loss, math.nan), loss)


def check_step_logits(logits: Array, xp: ModuleType) -> None:
    """Raise unless ``logits`` are real floating ``[batch, time, classes]`` with classes."""
    check_logits(logits, -1, xp)
    if logits.ndim != 3:
        raise ValueError(f"logits must be a [batch, time, classes] array, got shape {tuple(logits.shape)}")


def _step_weights(
    weights: Array | None, shape: tuple[int, int], dtype: object, xp: ModuleType, like: Array
) -> Array:
    if weights is None:
        return xp.ones(shape, dtype=dtype, device=device(like))
    check_real("weights", weights, xp)
    if tuple(weights.shape) != shape:
        raise ValueError(f"weights has shape {tuple(weights.shape)} but must be [batch, time] = {shape}")
    if is_eager_host(weights):
        check_weights_valid("weights", weights, xp)
    return xp.astype(weights, dtype)


def tfa_denominator(
    w: Array,
    *,
    average_across_timesteps: bool,
    average_across_batch: bool,
    sum_over_timesteps: bool,
    sum_over_batch: bool,
    xp: ModuleType,
) -> tuple[tuple[int, ...], Array | None]:
    """The ``[batch, time]`` axes :func:`sequence_loss` reduces, and what their sums are divided by.

    The summed weights ``w`` when averaging, their count of non-zeros for ``sum_over_*``
    (None when no axis is reduced).
    """
    axes = tuple(
        axis
        for axis, reduced in (
            (0, average_across_batch or sum_over_batch),
            (1, average_across_timesteps or sum_over_timesteps),
        )
        if reduced
    )
    if not axes:
        return axes, None
    averaged = average_across_batch or average_across_timesteps
    return axes, xp.sum(w, axis=axes) if averaged else count_nonzero(w, axes, xp)


@analytic_backward
def sequence_loss(
    logits: Array,
    targets: Array,
    weights: Array | None = None,
    /,
    *,
    average_across_timesteps: bool = True,
    average_across_batch: bool = True,
    sum_over_timesteps: bool = False,
    sum_over_batch: bool = False,
    softmax_loss_function: LossFunction | None = None,
    xp: ModuleType | None = None,
) -> Array:
    r"""Weighted cross entropy of a batch of sequences (TensorFlow Addons' ``sequence_loss``).

    With per-step cross entropies :math:`\ell_{bt}` and weights :math:`w_{bt}`, the
    reduced axes (batch and/or time) are summed and divided by

    - the summed weights, :math:`\sum w_{bt}\ell_{bt} / \sum w_{bt}`, for ``average_*``;
    - the number of non-zero weights, :math:`\sum w_{bt}\ell_{bt} / \#\{w_{bt} \ne 0\}`,
      for ``sum_over_*`` (TensorFlow Addons' definition, despite the name).

    A division by 0 gives 0. The output has shape ``[]`` when both axes are reduced,
    ``[batch]`` when only time is, ``[time]`` when only batch is, and ``[batch, time]``
    when neither is. Averaging and summing the same axis, ``average_across_batch``
    with ``sum_over_timesteps``, and ``sum_over_batch`` with
    ``average_across_timesteps`` are rejected, as in TensorFlow Addons (the order of
    the two reductions would be ambiguous).

    Parameters
    ----------
    logits : array, shape ``[batch, time, classes]``
        Real floating logits.
    targets : array, shape ``[batch, time]``
        Integer labels, or float probabilities of shape ``[batch, time, classes]``.
    weights : array, shape ``[batch, time]``, optional
        Non-negative per-step weights (e.g. a padding mask); ``None`` means all ones.
    average_across_timesteps, average_across_batch, sum_over_timesteps, sum_over_batch : bool
        The reductions described above.
    softmax_loss_function : callable, optional
        Replaces the cross entropy; called as ``f(labels=..., logits=...)`` with the
        targets and logits flattened to ``[batch * time, ...]``; returns ``[batch * time]``.
    xp : namespace, optional
        Force an array namespace; inferred from the arrays when omitted.

    Returns
    -------
    array
        Rank 0, 1 or 2 as above, with the dtype, namespace and device of ``logits``.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> logits = np.zeros((2, 3, 4))
    >>> targets = np.zeros((2, 3), dtype=np.int64)
    >>> mask = np.asarray([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    >>> al.sequence_loss(logits, targets, mask)
    array(1.38629436)
    >>> al.sequence_loss(logits, targets, mask, average_across_batch=False)
    array([1.38629436, 1.38629436])
    """
    flags = checked_flags(
        average_across_timesteps=average_across_timesteps,
        average_across_batch=average_across_batch,
        sum_over_timesteps=sum_over_timesteps,
        sum_over_batch=sum_over_batch,
    )
    xp = namespace_of({"logits": logits, "targets": targets, "weights": weights}, xp, optional=("weights",))
    losses = step_losses(logits, targets, softmax_loss_function, xp)
    w = _step_weights(weights, tuple(losses.shape), losses.dtype, xp, losses)
    return as_result(reduce_steps(losses, w, flags, xp), logits.dtype, xp)


def checked_flags(**flags: bool) -> dict[str, bool]:
    """The four reduction flags of :func:`sequence_loss`, checked against TensorFlow Addons' exclusions."""
    for first, second in _EXCLUSIVE_FLAGS:
        if flags[first] and flags[second]:
            raise ValueError(f"{first} and {second} cannot both be True")
    return flags


def reduce_steps(losses: Array, w: Array, flags: dict[str, bool], xp: ModuleType) -> Array:
    """:func:`sequence_loss` from the ``[batch, time]`` step ``losses`` and weights ``w``."""
    weighted = apply_weights(losses, w, xp)
    axes, denominator = tfa_denominator(w, xp=xp, **flags)
    if axes:
        weighted = safe_divide(xp.sum(weighted, axis=axes), denominator, xp)
    return weighted


def step_scale(cotangent: Array, w: Array, flags: dict[str, bool], xp: ModuleType) -> Array:
    """The derivative of :func:`reduce_steps` times ``cotangent`` with respect to each step's loss."""
    scale = xp.astype(cotangent, w.dtype)
    axes, denominator = tfa_denominator(w, xp=xp, **flags)
    if axes:
        scale = safe_divide(scale, denominator, xp)
        for axis in axes:
            scale = xp.expand_dims(scale, axis=axis)
    return apply_weights(xp.broadcast_to(scale, tuple(w.shape)), w, xp)


def _stack_steps(name: str, steps: Sequence[Array], xp: ModuleType) -> Array:
    shapes = {tuple(step.shape) for step in steps}
    if len(shapes) > 1:
        raise ValueError(f"every step of {name} must have the same shape, got {sorted(shapes)}")
    return xp.stack(list(steps), axis=1)


def _stacked(
    logits: Sequence[Array] | Array,
    targets: Sequence[Array] | Array,
    weights: Sequence[Array] | Array,
    xp: ModuleType | None,
) -> tuple[Array, Array, Array, ModuleType]:
    """Stack per-step sequences batch-major (``[batch, time, ...]``); return arrays and their namespace."""
    if not isinstance(logits, (list, tuple)):
        return (
            logits,
            targets,
            weights,
            namespace_of({"logits": logits, "targets": targets, "weights": weights}, xp),
        )
    for name, seq in (("targets", targets), ("weights", weights)):
        if not isinstance(seq, (list, tuple)):
            raise TypeError(
                f"logits is a sequence of per-step arrays, so {name} must be one too, "
                f"got {type(seq).__name__}"
            )
    steps = {"logits": logits, "targets": targets, "weights": weights}
    if check_same_length(steps) == 0:
        raise ValueError("logits, targets and weights are empty sequences; need at least one step")
    xp = namespace_of({f"{name}[{t}]": step for name, seq in steps.items() for t, step in enumerate(seq)}, xp)
    stacked = [_stack_steps(name, seq, xp) for name, seq in steps.items()]
    return stacked[0], stacked[1], stacked[2], xp


@analytic_backward
def sequence_loss_by_example(
    logits: Sequence[Array] | Array,
    targets: Sequence[Array] | Array,
    weights: Sequence[Array] | Array,
    /,
    *,
    average_across_timesteps: bool = True,
    softmax_loss_function: LossFunction | None = None,
    xp: ModuleType | None = None,
) -> Array:
    r"""Weighted cross entropy of each sequence in a batch (TensorFlow's legacy function).

    .. math:: L_b = \frac{\sum_t w_{bt}\,\ell_{bt}}{\sum_t w_{bt} + 10^{-12}}

    (without the division when ``average_across_timesteps`` is False), where
    :math:`\ell_{bt}` is the softmax cross entropy of step :math:`t` of example
    :math:`b`. A step of weight 0 contributes 0, even if its loss is ``inf`` or NaN.

    Parameters
    ----------
    logits : sequence of arrays ``[batch, classes]``, or array ``[batch, time, classes]``
        One array per time step, as in TensorFlow, or the steps stacked batch-major.
    targets : sequence of integer arrays ``[batch]``, or array ``[batch, time]``
    weights : sequence of arrays ``[batch]``, or array ``[batch, time]``
        Non-negative per-step weights.
    average_across_timesteps : bool, optional
        Divide by the summed weights (plus ``1e-12``). Default True.
    softmax_loss_function : callable, optional
        Replaces the cross entropy; called as ``f(labels=..., logits=...)`` on
        ``[batch * time, ...]`` rows; returns one loss per row.
    xp : namespace, optional
        Force an array namespace; inferred from the arrays when omitted.

    Returns
    -------
    array, shape ``[batch]``
        With the dtype, namespace and device of the logits.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> logits = [np.asarray([[1.5, 1.5, 1.5], [0.7, 0.9, 0.2]]),
    ...           np.asarray([[0.5, 0.2, 1.7], [0.1, 1.2, 0.5]])]
    >>> labels = [np.asarray([0, 1]), np.asarray([2, 0])]
    >>> weights = [np.ones(2), np.ones(2)]
    >>> al.sequence_loss_by_example(logits, labels, weights)
    array([0.76008178, 1.27178254])
    """
    logits, targets, weights, xp = _stacked(logits, targets, weights, xp)
    losses = step_losses(logits, targets, softmax_loss_function, xp)
    w = _step_weights(weights, tuple(losses.shape), losses.dtype, xp, losses)
    total = xp.sum(apply_weights(losses, w, xp), axis=1)
    if average_across_timesteps:
        total = total / (xp.sum(w, axis=1) + 1e-12)
    return as_result(total, logits.dtype, xp)
