"""The Kullback-Leibler divergence of predicted log-probabilities from targets: checks, forward, rule."""

from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple, cast

from ._autodiff import Rule, compute, differentiable
from ._lib._labels import check_weights
from ._lib._ops import Ops
from ._lib._reduce import example_scale, reduce_losses
from ._lib._validation import (
    Array,
    ArrayT,
    Reduction,
    as_layout_of,
    broadcast_like,
    check_bool,
    check_floating,
    check_logits,
    check_reduction,
    class_axis_last,
    compute_dtype,
    ops_of,
    same_shape,
    size_of,
)


class DivergenceCall(NamedTuple):
    """A checked call of :func:`kl_divergence` (see :class:`~._autodiff.Call`)."""

    ops: Ops
    log_predictions: Array
    targets: Array
    axis: int
    log_targets: bool
    weights: Array | None
    reduction: Reduction

    @property
    def primals(self) -> tuple[Array, ...]:
        return (self.log_predictions,)

    @property
    def constants(self) -> tuple[Any, ...]:
        return (self.targets, self.weights)

    @property
    def one_pass(self) -> bool:
        return False  # the gradient does not need the value's work: -t, scaled


def check_divergence(
    *,
    log_predictions: Array,
    targets: Array,
    axis: int,
    log_targets: bool,
    weights: Array | None,
    reduction: Reduction,
    xp: ModuleType | None,
) -> DivergenceCall:
    """Check the arguments of :func:`kl_divergence` once; return the call's record."""
    named = {"log_predictions": log_predictions, "targets": targets, "weights": weights}
    ops = ops_of(named, xp, optional=("weights",))
    xp = ops.xp
    axis = check_logits(log_predictions, axis, xp, "log_predictions")
    check_reduction(reduction)
    check_floating("targets", targets, xp)
    check_bool("log_targets", log_targets)
    shape = tuple(log_predictions.shape)
    if not same_shape(tuple(targets.shape), shape):
        raise ValueError(
            f"targets has shape {tuple(targets.shape)} but log_predictions has shape {shape}; they must match"
        )
    if weights is not None:
        example_shape = shape[:axis] + shape[axis + 1 :]
        check_weights("weights", weights, example_shape, "per-example loss", ops)
    if not log_targets and ops.is_eager(targets) and size_of(shape) and not bool(xp.min(targets) >= 0):
        raise ValueError("targets must be probabilities, not negative; it contains negative values or NaN")
    return DivergenceCall(ops, log_predictions, targets, axis, log_targets, weights, reduction)


def _targets(call: DivergenceCall, dtype: object) -> tuple[Array, Array, Array | None]:
    """Classes last in the accumulation ``dtype``: the targets as given, the probabilities ``t``, and
    the example weights broadcast to the examples."""
    xp = call.ops.xp
    given = xp.astype(class_axis_last(call.targets, call.axis, xp), dtype, copy=False)
    t = xp.exp(given) if call.log_targets else given
    w = call.weights
    w = None if w is None else broadcast_like(xp.astype(w, dtype), t[..., 0], xp)
    return given, t, w


def _forward(call: DivergenceCall, log_predictions: Array) -> tuple[Array, tuple[Array, ...]]:
    ops = call.ops
    xp = ops.xp
    dtype = compute_dtype(log_predictions.dtype, xp)
    log_p = xp.astype(class_axis_last(log_predictions, call.axis, xp), dtype, copy=False)
    given, t, w = _targets(call, dtype)
    present = t != 0  # a negative target (not checked on arrays whose values are not read): NaN
    zero = xp.zeros_like(t)
    # Where t = 0 both logarithms are replaced by 0 before they meet t: no 0 * -inf, no log(0).
    log_t = xp.where(present, given, zero) if call.log_targets else xp.log(xp.where(present, t, zero + 1))
    loss = xp.sum(t * (log_t - xp.where(present, log_p, zero)), axis=-1)
    return ops.as_result(reduce_losses(loss, w, call.reduction, ops), log_predictions.dtype), ()


def _backward(
    call: DivergenceCall, primals: tuple[Array, ...], residuals: tuple[Array, ...], cotangent: Array
) -> tuple[Array]:
    (log_predictions,) = primals
    ops = call.ops
    xp = ops.xp
    _, t, w = _targets(call, compute_dtype(log_predictions.dtype, xp))
    scale = example_scale(cotangent, w, call.reduction, t[..., 0], t.dtype, ops)
    return (as_layout_of(-t * scale[..., None], log_predictions, call.axis, xp),)


RULE = Rule(check_divergence, _forward, _backward)


@differentiable(RULE)
def kl_divergence(
    log_predictions: ArrayT,
    targets: Array,
    /,
    *,
    axis: int = -1,
    log_targets: bool = False,
    weights: Array | None = None,
    reduction: Reduction = "none",
    xp: ModuleType | None = None,
) -> ArrayT:
    r"""The Kullback-Leibler divergence :math:`D_{KL}(t \,\|\, p)` of each example.

    .. math:: \ell = \sum_c t_c \,(\log t_c - \log p_c)

    summed over ``axis``, where a term with :math:`t_c = 0` is 0, also where
    :math:`\log p_c = -\infty`.

    Parameters
    ----------
    log_predictions : array, shape ``(..., C, ...)``
        Real floating log-probabilities :math:`\log p` (e.g. of :func:`log_softmax`);
        float16 and bfloat16 are accumulated in float32.
    targets : array
        Real floating, the shape of ``log_predictions``: probabilities :math:`t`, or
        their logarithms with ``log_targets=True``. Not checked to sum to 1; negative
        probabilities raise a ``ValueError`` on eager host arrays and give NaN elsewhere.
    axis : int, optional
        The class axis, summed over. Default: the last.
    log_targets : bool, optional
        Whether ``targets`` holds log-probabilities (PyTorch's ``log_target``).
    weights : array, optional
        Non-negative per-example weights, broadcastable to ``log_predictions``
        without ``axis``.
    reduction : {"none", "sum", "mean"}, optional
        ``"none"``: one value per example (``axis`` dropped); ``"sum"``; ``"mean"``:
        the weighted mean over the examples (0 when the weights sum to 0), which for
        2-D inputs is PyTorch's ``reduction="batchmean"``.
    xp : namespace, optional
        Force an array namespace; inferred from the arrays when omitted.

    Returns
    -------
    array
        In the namespace, on the device, and with the dtype of ``log_predictions``.
        Its gradient is taken with respect to ``log_predictions``.

    Notes
    -----
    optax's ``kl_divergence`` and ``kl_divergence_with_log_targets`` are
    ``reduction="none"``; PyTorch's ``F.kl_div`` with ``reduction="mean"`` averages
    over every element, not over the examples.

    References
    ----------
    .. [1] S. Kullback, R. A. Leibler, "On Information and Sufficiency", Ann. Math.
           Statist. 22 (1951).

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> log_p = np.log(np.asarray([[0.5, 0.5], [0.9, 0.1]]))
    >>> al.kl_divergence(log_p, np.asarray([[0.5, 0.5], [1.0, 0.0]]))
    array([0.        , 0.10536052])
    """
    call = check_divergence(
        log_predictions=log_predictions,
        targets=targets,
        axis=axis,
        log_targets=log_targets,
        weights=weights,
        reduction=reduction,
        xp=xp,
    )
    return cast(ArrayT, compute(RULE, call))
