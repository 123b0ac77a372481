"""Sequence losses: TensorFlow Addons' ``sequence_loss`` and TensorFlow's ``sequence_loss_by_example``.

Both weight the cross entropy of every step of ``[batch, time, classes]`` logits
(:func:`step_losses`, from the sparse and dense cross entropies' per-row math) and
reduce it over batch and time; their gradient rules scale the cross entropies'.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, NamedTuple

from ._autodiff import Rule, compute, differentiable
from ._dense import dense_logits_vjp, dense_losses
from ._lib._labels import Labels, checked_labels
from ._lib._ops import Ops
from ._lib._reduce import apply_weights, count_nonzero, dropped_as_constants, poison, safe_divide
from ._lib._validation import (
    Array,
    broadcast_like,
    check_bool,
    check_floating,
    check_labels,
    check_logits,
    check_real,
    check_same_length,
    check_weights_valid,
    compute_dtype,
    ops_of,
    reshape_target,
    same_shape,
)
from ._sparse import sparse_gradient_and_losses, sparse_logits_vjp, sparse_losses

LossFunction = Callable[..., Array]

# Pairs of sequence_loss flags that TensorFlow Addons rejects together.
_EXCLUSIVE_FLAGS = (
    ("average_across_timesteps", "sum_over_timesteps"),
    ("average_across_batch", "sum_over_batch"),
    ("average_across_batch", "sum_over_timesteps"),
    ("sum_over_batch", "average_across_timesteps"),
)


class Steps(NamedTuple):
    """Checked ``[batch, time, classes]`` logits, their targets and weights, and a custom loss function.

    ``labels`` are the checked integer targets (None for dense targets or a custom loss).
    """

    ops: Ops
    logits: Array
    targets: Array
    weights: Array | None
    labels: Labels | None
    loss_function: LossFunction | None

    def weights_in(self, dtype: object, like: Array) -> Array:
        """The ``[batch, time]`` weights in ``dtype`` (ones when none were given), on ``like``'s device."""
        xp = self.ops.xp
        if self.weights is None:
            return xp.ones_like(like[..., 0] if like.ndim == 3 else like, dtype=dtype)
        return xp.astype(self.weights, dtype)


def check_steps(
    logits: Array,
    targets: Array,
    weights: Array | None,
    loss_function: LossFunction | None,
    xp: ModuleType | None,
) -> Steps:
    """Check ``[batch, time, classes]`` logits, ``[batch, time]`` integer or dense targets, weights."""
    ops = ops_of({"logits": logits, "targets": targets, "weights": weights}, xp, optional=("weights",))
    xp = ops.xp
    check_logits(logits, -1, xp)
    if logits.ndim != 3:
        raise ValueError(f"logits must be a [batch, time, classes] array, got shape {tuple(logits.shape)}")
    batch, time, classes = logits.shape
    labels = None
    if loss_function is None and targets.ndim == 3:
        check_floating("targets", targets, xp)
        if not same_shape(tuple(targets.shape), tuple(logits.shape)):
            raise ValueError(
                f"dense targets have shape {tuple(targets.shape)} but logits have shape "
                f"{tuple(logits.shape)}; they must match"
            )
    elif loss_function is None:
        check_labels(targets, (batch, time), xp, "targets")
        labels = checked_labels(targets, classes, None, ops, "targets")
    if weights is not None:
        check_real("weights", weights, xp)
        if not same_shape(tuple(weights.shape), (batch, time)):
            raise ValueError(
                f"weights has shape {tuple(weights.shape)} but must be [batch, time] = {(batch, time)}"
            )
        if ops.is_eager(weights):
            check_weights_valid("weights", weights, xp)
    return Steps(ops, logits, targets, weights, labels, loss_function)


def step_losses(steps: Steps, logits: Array) -> Array:
    """Cross entropy of every step, shape ``[batch, time]``, in the accumulation dtype.

    A custom loss function is called once, as ``f(labels=..., logits=...)`` on the
    flattened ``[batch * time, ...]`` arrays, and must return one loss per row. A target
    out of range on arrays that cannot be checked eagerly gives that step a NaN loss.
    """
    ops, targets = steps.ops, steps.targets
    xp = ops.xp
    batch, time, classes = logits.shape
    dtype = compute_dtype(logits.dtype, xp)
    logits = dropped_as_constants(logits, steps.weights, ops)
    if steps.loss_function is not None:
        flat = steps.loss_function(
            labels=xp.reshape(targets, (-1, *targets.shape[2:])),
            logits=xp.reshape(logits, (-1, classes)),
        )
        return xp.astype(xp.reshape(flat, reshape_target((batch, time))), dtype)
    if steps.labels is None:
        z, t = (xp.astype(a, dtype, copy=False) for a in (logits, targets))
        return dense_losses(z, t, label_smoothing=0.0, ops=ops)
    # Half precision is converted to the accumulation dtype block by block.
    loss = sparse_losses(logits, steps.labels.safe, label_smoothing=0.0, z_loss=0.0, ops=ops)[0]
    return poison(loss, steps.labels.poisoned, ops)


def step_vjp(steps: Steps, logits: Array, scale: Array) -> Array:
    """Gradient w.r.t. ``[batch, time, classes]`` logits of the steps' losses weighted by ``scale``."""
    ops = steps.ops
    xp = ops.xp
    if steps.labels is None:
        z, targets = (xp.astype(a, scale.dtype, copy=False) for a in (logits, steps.targets))
        grad = dense_logits_vjp(z, targets, scale, label_smoothing=0.0, masked=True, ops=ops)
    else:  # half precision converted block by block
        scale = poison(scale, steps.labels.poisoned, ops)
        grad = sparse_logits_vjp(
            logits, steps.labels.safe, scale, label_smoothing=0.0, z_loss=0.0, masked=True, ops=ops
        )
    return xp.astype(grad, logits.dtype, copy=False)


def _not_custom(call: Any) -> str | None:
    if call.steps.loss_function is None:
        return None
    return (
        "value_and_grad cannot differentiate a custom softmax_loss_function analytically; "
        "call the loss with arrays of a library with autodiff (PyTorch, JAX) instead"
    )


class Flags(NamedTuple):
    """The reduction flags of :func:`sequence_loss`."""

    average_across_timesteps: bool
    average_across_batch: bool
    sum_over_timesteps: bool
    sum_over_batch: bool

    def reduced_axes(self) -> tuple[int, ...]:
        """The ``[batch, time]`` axes that are reduced."""
        batch = self.average_across_batch or self.sum_over_batch
        time = self.average_across_timesteps or self.sum_over_timesteps
        return (0,) * batch + (1,) * time

    def denominator(self, w: Array, axes: tuple[int, ...], ops: Ops) -> Array:
        """What the sums over the reduced ``axes`` are divided by: the summed weights ``w`` when
        averaging, their count of non-zeros for ``sum_over_*``."""
        if self.average_across_batch or self.average_across_timesteps:
            return ops.xp.sum(w, axis=axes)
        return count_nonzero(w, axes, ops)

    def reduce(self, losses: Array, w: Array, ops: Ops) -> Array:
        """:func:`sequence_loss` from the ``[batch, time]`` step ``losses`` and weights ``w``."""
        weighted = apply_weights(losses, w, ops)
        axes = self.reduced_axes()
        if axes:
            weighted = safe_divide(ops.xp.sum(weighted, axis=axes), self.denominator(w, axes, ops), ops)
        return weighted

    def scale(self, cotangent: Array, w: Array, ops: Ops) -> Array:
        """The derivative of :meth:`reduce` times ``cotangent`` with respect to each step's loss."""
        xp = ops.xp
        scale = xp.astype(cotangent, w.dtype)
        axes = self.reduced_axes()
        if axes:
            scale = safe_divide(scale, self.denominator(w, axes, ops), ops)
            for axis in axes:  # by indexing: Dask cannot expand_dims rows of unknown number
                scale = scale[None, ...] if axis == 0 else scale[..., None]
        return apply_weights(broadcast_like(scale, w, xp), w, ops)


@dataclass(frozen=True)
class StepsCall:
    """A checked call of a sequence loss (see :class:`~._autodiff.Call`): its steps, and its
    reduction in a subclass."""

    steps: Steps

    @property
    def ops(self) -> Ops:
        return self.steps.ops

    @property
    def primals(self) -> tuple[Array, ...]:
        return (self.steps.logits,)

    @property
    def constants(self) -> tuple[Any, ...]:
        return (self.steps.weights, self.steps.targets)


@dataclass(frozen=True)
class SequenceCall(StepsCall):
    """A checked call of :func:`sequence_loss`."""

    flags: Flags

    @property
    def one_pass(self) -> bool:
        # As for the sparse cross entropy: the gradient in the forward pass, for a scalar loss with
        # integer targets on eager host arrays.
        scalar = len(self.flags.reduced_axes()) == 2
        return scalar and self.steps.labels is not None and self.ops.is_eager(self.steps.logits)


def check_sequence(
    *,
    logits: Array,
    targets: Array,
    weights: Array | None,
    average_across_timesteps: bool,
    average_across_batch: bool,
    sum_over_timesteps: bool,
    sum_over_batch: bool,
    softmax_loss_function: LossFunction | None,
    xp: ModuleType | None,
) -> SequenceCall:
    """Check the arguments of :func:`sequence_loss` once; return the call's record."""
    flags = Flags(average_across_timesteps, average_across_batch, sum_over_timesteps, sum_over_batch)
    for name, value in flags._asdict().items():
        check_bool(name, value)
    for first, second in _EXCLUSIVE_FLAGS:
        if getattr(flags, first) and getattr(flags, second):
            raise ValueError(f"{first} and {second} cannot both be True")
    return SequenceCall(check_steps(logits, targets, weights, softmax_loss_function, xp), flags)


def _sequence_forward(call: SequenceCall, logits: Array) -> tuple[Array, tuple[Array, ...]]:
    steps = call.steps
    losses = step_losses(steps, logits)
    w = steps.weights_in(losses.dtype, losses)
    return call.ops.as_result(call.flags.reduce(losses, w, call.ops), logits.dtype), ()


def _sequence_backward(
    call: SequenceCall, primals: tuple[Array, ...], residuals: tuple[Array, ...], cotangent: Array
) -> tuple[Array]:
    (logits,) = primals
    w = call.steps.weights_in(compute_dtype(logits.dtype, call.ops.xp), logits)
    return (step_vjp(call.steps, logits, call.flags.scale(cotangent, w, call.ops)),)


def _sequence_fused(call: SequenceCall, logits: Array) -> tuple[Array, tuple[Array]]:
    """A scalar loss of integer targets and its gradient, from one exponential of each block."""
    ops, steps = call.ops, call.steps
    xp = ops.xp
    dtype = compute_dtype(logits.dtype, xp)  # half precision is converted block by block
    w = steps.weights_in(dtype, logits)
    scale = call.flags.scale(xp.ones((), dtype=dtype, device=ops.device(logits)), w, ops)
    assert steps.labels is not None  # one_pass: integer targets, checked eagerly (none is poisoned)
    grad, losses = sparse_gradient_and_losses(
        logits,
        steps.labels.safe,
        scale,
        label_smoothing=0.0,
        z_loss=0.0,
        masked=True,
        ops=ops,
        chunk_size=None,
    )
    value = ops.as_result(call.flags.reduce(losses, w, ops), logits.dtype)
    return value, (xp.astype(grad, logits.dtype, copy=False),)


SEQUENCE_RULE = Rule(
    check_sequence, _sequence_forward, _sequence_backward, _sequence_fused, covers=_not_custom
)


@differentiable(SEQUENCE_RULE)
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
    call = check_sequence(
        logits=logits,
        targets=targets,
        weights=weights,
        average_across_timesteps=average_across_timesteps,
        average_across_batch=average_across_batch,
        sum_over_timesteps=sum_over_timesteps,
        sum_over_batch=sum_over_batch,
        softmax_loss_function=softmax_loss_function,
        xp=xp,
    )
    return compute(SEQUENCE_RULE, call)


@dataclass(frozen=True)
class ByExampleCall(StepsCall):
    """A checked call of :func:`sequence_loss_by_example`."""

    average_across_timesteps: bool
    listed: bool  # the logits came as a list of per-step arrays

    @property
    def one_pass(self) -> bool:  # no fused pass: the loss is not a scalar
        return False


def _stack_steps(name: str, steps: Sequence[Array], xp: ModuleType) -> Array:
    shapes = {tuple(step.shape) for step in steps}
    if len(shapes) > 1:
        raise ValueError(f"every step of {name} must have the same shape, got {sorted(shapes)}")
    return xp.stack(list(steps), axis=1)


def check_by_example(
    *,
    logits: Sequence[Array] | Array,
    targets: Sequence[Array] | Array,
    weights: Sequence[Array] | Array,
    average_across_timesteps: bool,
    softmax_loss_function: LossFunction | None,
    xp: ModuleType | None,
) -> ByExampleCall:
    """Check the arguments of :func:`sequence_loss_by_example` once; lists of steps are stacked."""
    check_bool("average_across_timesteps", average_across_timesteps)
    listed = isinstance(logits, (list, tuple))
    if listed:
        for name, seq in (("targets", targets), ("weights", weights)):
            if not isinstance(seq, (list, tuple)):
                raise TypeError(
                    f"logits is a sequence of per-step arrays, so {name} must be one too, "
                    f"got {type(seq).__name__}"
                )
        lists = {"logits": logits, "targets": targets, "weights": weights}
        if check_same_length(lists) == 0:
            raise ValueError("logits, targets and weights are empty sequences; need at least one step")
        named = {f"{name}[{t}]": step for name, seq in lists.items() for t, step in enumerate(seq)}
        xp = ops_of(named, xp).xp
        logits, targets, weights = (_stack_steps(name, seq, xp) for name, seq in lists.items())
    else:
        xp = ops_of({"logits": logits, "targets": targets, "weights": weights}, xp).xp
    steps = check_steps(logits, targets, weights, softmax_loss_function, xp)
    return ByExampleCall(steps, average_across_timesteps, listed)


def _by_example_forward(call: ByExampleCall, logits: Array) -> tuple[Array, tuple[Array, ...]]:
    ops = call.ops
    xp = ops.xp
    steps = call.steps
    losses = step_losses(steps, logits)
    w = steps.weights_in(losses.dtype, losses)
    total = xp.sum(apply_weights(losses, w, ops), axis=1)
    if call.average_across_timesteps:
        total = total / (xp.sum(w, axis=1) + 1e-12)
    return ops.as_result(total, logits.dtype), ()


def _by_example_backward(
    call: ByExampleCall, primals: tuple[Array, ...], residuals: tuple[Array, ...], cotangent: Array
) -> tuple[Array]:
    (logits,) = primals
    ops = call.ops
    xp = ops.xp
    w = call.steps.weights_in(compute_dtype(logits.dtype, xp), logits)
    scale = xp.astype(cotangent, w.dtype)
    if call.average_across_timesteps:
        scale = scale / (xp.sum(w, axis=1) + 1e-12)
    scale = apply_weights(broadcast_like(scale[:, None], w, xp), w, ops)
    return (step_vjp(call.steps, logits, scale),)


def _by_example_unpack(call: ByExampleCall, grads: tuple[Array, ...]) -> Array | list[Array]:
    (grad,) = grads
    return [grad[:, t, ...] for t in range(grad.shape[1])] if call.listed else grad


BY_EXAMPLE_RULE = Rule(
    check_by_example,
    _by_example_forward,
    _by_example_backward,
    unpack=_by_example_unpack,
    covers=_not_custom,
)


@differentiable(BY_EXAMPLE_RULE)
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
    call = check_by_example(
        logits=logits,
        targets=targets,
        weights=weights,
        average_across_timesteps=average_across_timesteps,
        softmax_loss_function=softmax_loss_function,
        xp=xp,
    )
    return compute(BY_EXAMPLE_RULE, call)
