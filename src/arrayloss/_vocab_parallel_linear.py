"""Vocab-parallel linear cross entropy: the loss of an output layer sharded along the classes.

The public module is :mod:`arrayloss.distributed`; the shards' statistics and collectives are
those of :mod:`._vocab_parallel`, the chunks of rows those of :mod:`._linear`.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple, cast

from ._autodiff import Rule, compute, differentiable
from ._lib._ops import Ops
from ._lib._reduce import example_scale, poison, reduce_losses
from ._lib._softmax import zero_dropped_rows
from ._lib._validation import Array, ArrayT, Reduction
from ._linear import LinearCall, _rows, _rows_as, add_chunk_gradients, check_linear, zero_totals
from ._sparse import sparse_logits_vjp
from ._vocab_parallel import (
    Collectives,
    ShardStats,
    check_collectives,
    class_count,
    labels_outside,
    local_labels,
    ops_and_start,
    shard_losses,
    unowned_labels,
)


class VocabParallelLinearCall(NamedTuple):
    """A checked call of :func:`vocab_parallel_linear_cross_entropy`: ``linear`` is the record of
    :func:`~arrayloss.linear_cross_entropy` for this rank's rows of the output layer."""

    linear: LinearCall
    vocab_start: int | Array
    collectives: Collectives

    @property
    def ops(self) -> Ops:
        return self.linear.ops

    @property
    def primals(self) -> tuple[Array, ...]:
        return self.linear.primals

    @property
    def constants(self) -> tuple[Any, ...]:
        return self.linear.constants

    @property
    def one_pass(self) -> bool:
        # the gradients with the value: one product per chunk fewer (as linear_cross_entropy)
        return self.linear.options.reduction != "none"


def check_vocab_parallel_linear(
    *,
    hidden: Array,
    local_weight: Array,
    labels: Array,
    vocab_start: int | Array,
    collectives: Collectives,
    bias: Array | None,
    weights: Array | None,
    ignore_index: int | None,
    label_smoothing: float,
    z_loss: float,
    reduction: Reduction,
    chunk_size: int | None,
    xp: ModuleType | None,
) -> VocabParallelLinearCall:
    """Check the arguments of :func:`vocab_parallel_linear_cross_entropy` once; return the record."""
    named = {
        "hidden": hidden,
        "local_weight": local_weight,
        "labels": labels,
        "bias": bias,
        "weights": weights,
    }
    ops, start = ops_and_start(named, vocab_start, xp)
    check_collectives(collectives)
    linear = check_linear(
        hidden=hidden,
        weight=local_weight,
        labels=labels,
        bias=bias,
        weights=weights,
        class_weights=None,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        reduction=reduction,
        chunk_size=chunk_size,
        softcap=None,
        xp=ops.xp,
        vocab_shard=True,
    )
    return VocabParallelLinearCall(linear, start, collectives)


class _Gradients(NamedTuple):
    """What a chunk needs for the gradient rows: each example's factor (``scale``, one per row) and
    whether rows of factor 0 must stay exactly 0 (``masked``)."""

    scale: Array
    masked: bool


def _linear_pass(
    call: VocabParallelLinearCall,
    primals: tuple[Array, ...],
    num_classes: Array,
    stats: tuple[Array, Array] | None,
    gradients: _Gradients | None,
) -> tuple[tuple[Array, ...], tuple[Array, ...]]:
    """One pass over chunks of rows: ``(per-row outputs, gradients)``.

    ``num_classes`` is the classes of all ranks (:func:`_num_classes`). Without ``stats`` (the
    forward and the fused passes) each chunk's statistics come from :func:`shard_losses` (two
    all-reduces per chunk) and the per-row outputs are ``(loss, shift, log_sum[, owners])``. With
    ``stats``, the rows' ``(shift, log_sum)`` of a forward pass (the backward pass), no
    collective but hidden's gradient. With ``gradients``, each chunk's
    gradient rows (:func:`~arrayloss._sparse.sparse_logits_vjp` of the local classes) go
    into ``(d_hidden, d_weight[, d_bias])``, hidden's all-reduced by ``sum`` (every rank's
    classes contribute to it); one matrix product per chunk fewer in the fused pass than a
    forward and a backward pass.
    """
    linear, ops = call.linear, call.ops
    xp, options = ops.xp, linear.options
    rows = _rows(linear, primals)
    num_local = rows.weight.shape[0]

    def chunk(
        totals: tuple[Array, Array | None] | None, hidden_rows: Array, label_rows: Array, *given: Array
    ) -> tuple[tuple[Array, Array | None] | None, tuple[Array, ...]]:
        h = xp.astype(hidden_rows, linear.dtype, copy=False)
        if gradients is not None and gradients.masked:  # as linear_cross_entropy's gradient pass
            h = zero_dropped_rows(h, given[0], ops)
        z = rows.logits(h, ops)
        outputs: tuple[Array, ...] = ()
        if stats is None:
            found = shard_losses(
                z,
                label_rows,
                call.vocab_start,
                call.collectives,
                label_smoothing=options.label_smoothing,
                z_loss=options.z_loss,
                ops=ops,
                num_classes=num_classes,
            )
            shift_rows, log_sum_rows = found.shift, found.log_sum
            outputs = (
                found.loss,
                shift_rows,
                log_sum_rows,
                *(() if found.owners is None else (found.owners,)),
            )
        else:
            shift_rows, log_sum_rows = given[-2], given[-1]
        if gradients is None or totals is None:
            return totals, outputs
        owned, index = local_labels(label_rows, call.vocab_start, num_local, ops)
        g = sparse_logits_vjp(
            z,
            index,
            given[0],
            label_smoothing=options.label_smoothing,
            z_loss=options.z_loss,
            masked=gradients.masked,
            ops=ops,
            row_stats=(shift_rows, log_sum_rows),
            num_classes=num_classes,
            owned=owned,
        )
        totals, d_hidden_rows = add_chunk_gradients(totals, g, h, rows.weight, ops)
        return totals, (*outputs, d_hidden_rows)

    per_row = (rows.hidden, rows.labels)
    per_row += () if gradients is None else (gradients.scale,)
    per_row += () if stats is None else stats
    totals = None if gradients is None else zero_totals(rows, linear.dtype, ops)
    totals, outputs = ops.scan_row_blocks(chunk, totals, per_row, linear.chunk)
    if totals is None:
        return outputs, ()
    d_hidden = call.collectives.sum(outputs[-1])
    d_weight, d_bias = totals
    grads = [_rows_as(d_hidden, primals[0], xp), d_weight, *(() if d_bias is None else (d_bias,))]
    cast_back = tuple(xp.astype(g, a.dtype, copy=False) for g, a in zip(grads, primals, strict=True))
    return outputs[:-1], cast_back


def _num_classes(call: VocabParallelLinearCall, primals: tuple[Array, ...]) -> Array:
    """The classes of all ranks: one all-reduce of a scalar for all chunks."""
    ops, weight = call.ops, primals[1]
    count = class_count(weight.shape[0], call.linear.dtype, ops, ops.device(primals[0]))
    return call.collectives.sum(count)[0]


def _linear_value(
    call: VocabParallelLinearCall, primals: tuple[Array, ...], outputs: tuple[Array, ...], num_classes: Array
) -> tuple[Array, tuple[Array, ...]]:
    """The loss from the per-row outputs of :func:`_linear_pass` (labels checked on eager arrays,
    poisoned on others), and the residuals of the backward pass."""
    linear, ops = call.linear, call.ops
    xp, options = ops.xp, linear.options
    loss, shift, log_sum, *owners = outputs
    stats = ShardStats(loss, shift, log_sum, owners[0] if owners else None, num_classes)
    poisoned = unowned_labels(stats, options, ops, ops.is_eager(primals[0]))
    w = options.example_weights(linear.dtype, ops)
    out = reduce_losses(_rows_as(loss, options.raw_labels, xp), w, options.reduction, ops, poisoned=poisoned)
    value = ops.as_result(out, xp.result_type(primals[0].dtype, primals[1].dtype))
    return value, (shift, log_sum, num_classes) + (() if poisoned is None else (poisoned,))


def _linear_scale(call: VocabParallelLinearCall, cotangent: Array, poisoned: Array | None) -> _Gradients:
    """Each example's gradient factor for ``cotangent`` (NaN for the ``poisoned``), flattened to rows."""
    linear, ops = call.linear, call.ops
    options = linear.options
    w = options.example_weights(linear.dtype, ops)
    scale = example_scale(cotangent, w, options.reduction, options.raw_labels, linear.dtype, ops)
    scale = poison(scale, options.labels.poisoned if poisoned is None else poisoned, ops)
    return _Gradients(ops.xp.reshape(scale, (-1,)), w is not None)


def _linear_forward(call: VocabParallelLinearCall, *primals: Array) -> tuple[Array, tuple[Array, ...]]:
    """The loss, chunk by chunk, and the rows' global statistics for the backward pass."""
    num_classes = _num_classes(call, primals)
    return _linear_value(call, primals, _linear_pass(call, primals, num_classes, None, None)[0], num_classes)


def _linear_backward(
    call: VocabParallelLinearCall, primals: tuple[Array, ...], residuals: tuple[Array, ...], cotangent: Array
) -> tuple[Array, ...]:
    """Each chunk's logits recomputed, the local gradient rows, and one all-reduce: ``hidden``'s."""
    shift, log_sum, num_classes, *poisoned = residuals
    if primals[0].shape[0] == 0:  # no rows (on every rank): zero gradients
        return tuple(call.ops.xp.zeros_like(a) for a in primals)
    gradients = _linear_scale(call, cotangent, poisoned[0] if poisoned else None)
    return _linear_pass(call, primals, num_classes, (shift, log_sum), gradients)[1]


def _linear_fused(call: VocabParallelLinearCall, *primals: Array) -> tuple[Array, tuple[Array, ...]]:
    """The scalar loss and its gradients in one pass: each chunk's logits computed once.

    The gradient factors are known before the chunks: on arrays that are not checked, the
    labels outside every shard (at least the class count, all-reduced first) are poisoned up
    front; on eager arrays a label outside every shard raises after the chunks.
    """
    linear, ops = call.linear, call.ops
    xp, options = ops.xp, linear.options
    if primals[0].shape[0] == 0:
        value = _linear_forward(call, *primals)[0]
        return value, tuple(xp.zeros_like(a) for a in primals)
    num_classes = _num_classes(call, primals)
    poisoned = None if ops.is_eager(primals[0]) else labels_outside(options, num_classes, ops)
    ones = xp.ones((), dtype=linear.dtype, device=ops.device(primals[0]))
    outputs, grads = _linear_pass(call, primals, num_classes, None, _linear_scale(call, ones, poisoned))
    return _linear_value(call, primals, outputs, num_classes)[0], grads


LINEAR_RULE = Rule(
    check_vocab_parallel_linear,
    _linear_forward,
    _linear_backward,
    _linear_fused,
    unpack=lambda call, gradients: gradients,
    custom_vjp=True,
)


@differentiable(LINEAR_RULE)
def vocab_parallel_linear_cross_entropy(
    hidden: ArrayT,
    local_weight: Array,
    labels: Array,
    /,
    *,
    vocab_start: int | Array,
    collectives: Collectives,
    bias: Array | None = None,
    weights: Array | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: Reduction = "none",
    chunk_size: int | None = None,
    xp: ModuleType | None = None,
) -> ArrayT:
    r"""Cross entropy of ``hidden @ weight.T + bias`` with the output layer's rows sharded across ranks.

    Each rank holds the rows ``local_weight`` (and ``bias``) of the classes
    ``[vocab_start, vocab_start + C_local)`` and the same ``hidden`` and global
    ``labels``. Every rank gets the value of :func:`~arrayloss.linear_cross_entropy` with
    the full weight (the loss of :func:`vocab_parallel_cross_entropy`), computed
    ``chunk_size`` rows at a time: no rank holds more than a chunk of its
    ``N x C_local`` logits. Each chunk costs two all-reduces of per-row values. The
    gradients (PyTorch autograd, JAX, :func:`~arrayloss.value_and_grad`) are the full
    one of ``hidden`` (the ranks' contributions all-reduced by one ``sum`` of its size)
    and the local slices of ``weight``'s and ``bias``'s. For a scalar ``reduction`` they
    are computed with the value, each chunk's logits once (as
    :func:`~arrayloss.linear_cross_entropy` does); for ``"none"`` the backward pass recomputes
    each chunk's logits, with no collective but ``hidden``'s gradient.

    Parameters
    ----------
    hidden : array, shape ``(..., D)``
        Real floating features, the same on every rank.
    local_weight : array, shape ``(C_local, D)``
        This rank's rows of the output layer.
    labels : array of integers, shape ``hidden.shape[:-1]``
        Global class indices in ``[0, C)`` or ``ignore_index``, the same on every rank.
    vocab_start, collectives
        As in :func:`vocab_parallel_cross_entropy`.
    bias : array, shape ``(C_local,)``, optional
        This rank's part of the bias.
    weights, ignore_index, label_smoothing, z_loss, reduction
        As in :func:`~arrayloss.sparse_softmax_cross_entropy`.
    chunk_size : int, optional
        Rows per chunk, as in :func:`~arrayloss.linear_cross_entropy`. The same on every
        rank: the ranks' all-reduces must pair up. Default: 512 rows (on every rank, whatever
        the width of its shard), 32 MiB of float32 logits of a shard of 16384 classes.
    xp : namespace, optional
        Force an array namespace; inferred from the arrays when omitted.

    Returns
    -------
    array
        The same on every rank, in the dtype of ``hidden @ local_weight.T``.

    Raises
    ------
    TypeError, ValueError
        As :func:`~arrayloss.linear_cross_entropy` (the weight is called ``local_weight``)
        and :func:`vocab_parallel_cross_entropy`.

    Examples
    --------
    Two shards of the classes, whose collectives are computed in one process by hand,
    give :func:`~arrayloss.linear_cross_entropy` of the whole weight:

    >>> import numpy as np
    >>> import arrayloss as al
    >>> from arrayloss.distributed import vocab_parallel_linear_cross_entropy
    >>> class OneRank:
    ...     def max(self, x):
    ...         return x
    ...
    ...     def sum(self, x):
    ...         return x
    >>> hidden = np.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> weight = np.asarray([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.5]])
    >>> labels = np.asarray([0, 1, 2])
    >>> vocab_parallel_linear_cross_entropy(hidden, weight, labels, vocab_start=0, collectives=OneRank())
    array([0.16984602, 0.68026967, 2.87153903])
    """
    call = check_vocab_parallel_linear(
        hidden=hidden,
        local_weight=local_weight,
        labels=labels,
        vocab_start=vocab_start,
        collectives=collectives,
        bias=bias,
        weights=weights,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        reduction=reduction,
        chunk_size=chunk_size,
        xp=xp,
    )
    return cast(ArrayT, compute(LINEAR_RULE, call))
