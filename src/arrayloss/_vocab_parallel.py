"""Vocab-parallel cross entropy: the checks, the per-row math over shards of the classes, the rule.

The public module is :mod:`arrayloss.distributed` (its docstring describes the algorithm);
this module follows the loss modules' pattern (``docs/architecture.md``) and reuses the
per-row math of :mod:`._sparse`. The shards' statistics and collectives here also serve the
sharded output layer, :mod:`._vocab_parallel_linear`.
"""

from __future__ import annotations

import operator
import sys
from types import ModuleType
from typing import Any, NamedTuple, Protocol, cast, runtime_checkable

from ._autodiff import Rule, compute, differentiable
from ._lib._backends import is_array
from ._lib._labels import label_indices
from ._lib._ops import Ops
from ._lib._reduce import reduce_losses
from ._lib._softmax import difference, finite_shift, log_of_sum
from ._lib._validation import (
    Array,
    ArrayT,
    Reduction,
    check_logits,
    compute_dtype,
    in_compute_dtype,
    ops_of,
    reshape_target,
    size_of,
)
from ._sparse import (
    LabelOptions,
    SparseCall,
    _weights_and_scale,
    check_label_options,
    losses_from_gaps,
    sparse_logits_vjp,
)


@runtime_checkable
class Collectives(Protocol):
    """All-reduces over the ranks of a group: each returns, on every rank, the element-wise
    maximum (``max``) or sum (``sum``) of the arrays that the ranks pass, of one shape and dtype."""

    def max(self, x: Any, /) -> Any: ...

    def sum(self, x: Any, /) -> Any: ...


# --- checks ------------------------------------------------------------------------------------


def check_collectives(collectives: object) -> Collectives:
    """``collectives`` if it has callable ``max`` and ``sum``; ``TypeError`` naming it otherwise."""
    if not all(callable(getattr(collectives, name, None)) for name in ("max", "sum")):
        raise TypeError(
            "collectives must have methods max(x) and sum(x) that all-reduce an array over the ranks "
            f"(e.g. arrayloss.distributed.torch_collectives()), got {type(collectives).__name__}"
        )
    return cast(Collectives, collectives)


def is_start_array(vocab_start: object) -> bool:
    """Whether ``vocab_start`` is an array (a NumPy scalar such as ``np.int64(3)`` counts as an int)."""
    numpy = sys.modules.get("numpy")
    return is_array(vocab_start) and not (numpy is not None and isinstance(vocab_start, numpy.generic))


def check_vocab_start(vocab_start: object, ops: Ops) -> int | Array:
    """``vocab_start`` as a non-negative Python int or a 0-d integer array (values: eager arrays)."""
    xp = ops.xp
    if is_start_array(vocab_start):
        start = cast(Array, vocab_start)
        if start.ndim != 0 or not xp.isdtype(start.dtype, "integral"):
            raise TypeError(
                f"vocab_start must be an int or a 0-d integer array, got an array of shape "
                f"{tuple(start.shape)} and dtype {start.dtype}"
            )
        if ops.is_eager(start) and not ops.all_true(start >= 0):
            raise ValueError(f"vocab_start must be non-negative, got {int(start)}")
        return start
    if isinstance(vocab_start, bool):
        raise TypeError("vocab_start must be an int or a 0-d integer array, got bool")
    try:
        value = operator.index(cast(Any, vocab_start))
    except TypeError:
        raise TypeError(
            f"vocab_start must be an int or a 0-d integer array, got {type(vocab_start).__name__}"
        ) from None
    if value < 0:
        raise ValueError(f"vocab_start must be non-negative, got {value}")
    return value


def ops_and_start(named: dict[str, Any], vocab_start: object, xp: ModuleType | None) -> tuple[Ops, Any]:
    start = vocab_start if is_start_array(vocab_start) else None
    ops = ops_of({**named, "vocab_start": start}, xp, optional=("bias", "weights", "vocab_start"))
    return ops, check_vocab_start(vocab_start, ops)


# --- the per-row math ---------------------------------------------------------------------------


def local_labels(labels: Array, vocab_start: int | Array, num_local: int, ops: Ops) -> tuple[Array, Array]:
    """``(owned, index)``: whether each global label is a class of this shard, and its index in the
    shard (0 where not owned, so that every gather is in range)."""
    xp = ops.xp
    index = label_indices(labels, ops) - vocab_start
    owned = (index >= 0) & (index < num_local)
    return owned, xp.where(owned, index, xp.zeros_like(index))


class ShardStats(NamedTuple):
    """The rows' statistics over all ranks, of :func:`shard_losses`: one value per row but
    ``num_classes`` (0-d), in the accumulation dtype."""

    loss: Array  # unweighted
    shift: Array
    log_sum: Array  # log-sum-exp over every class = shift + log_sum
    owners: Array | None  # eager arrays: how many ranks hold the label (1 in range, 0 outside every shard)
    num_classes: Array  # the classes of all ranks


def shard_losses(
    z: Array,
    labels: Array,
    vocab_start: int | Array,
    collectives: Collectives,
    *,
    label_smoothing: float,
    z_loss: float,
    ops: Ops,
    num_classes: Array | None = None,
) -> ShardStats:
    """The cross entropy of rows whose classes are sharded over the ranks, from this rank's ``z``.

    ``z`` are rows ``(R, C_local)`` in the accumulation dtype holding the classes
    ``[vocab_start, vocab_start + C_local)``; ``labels`` ``(R,)`` are global, in range or not.
    Two all-reduces: the rows' maxima, then one sum of the table of per-row sums (exponentials,
    label logit, with smoothing the logits, on eager arrays the label's owners, which the check
    of the labels reads) and the class count (unless ``num_classes``, the classes of all ranks, is
    given). The losses are :func:`arrayloss._sparse.losses_from_gaps` of the summed statistics.
    """
    xp = ops.xp
    dtype, device = z.dtype, ops.device(z)
    rows, num_local = z.shape[0], z.shape[-1]
    # no rows: no maximum to take (Dask's max fails on an empty array)
    empty = size_of((rows,)) == 0
    row_max = xp.zeros((0, 1), dtype=dtype, device=device) if empty else ops.row_max(z)
    shift, _ = finite_shift(collectives.max(row_max), ops, eager=ops.is_eager(z))
    owned, index = local_labels(labels, vocab_start, num_local, ops)
    zero = xp.zeros_like(shift[..., 0])
    label_gap = xp.where(owned, ops.pick(z, index) - shift[..., 0], zero)
    columns = [ops.row_sum(ops.exp_of_temporary(difference(z, shift, ops)))[..., 0], label_gap]
    if label_smoothing:
        columns.append(ops.row_sum(z - shift)[..., 0])
    eager = ops.is_eager(z)
    if eager:
        columns.append(xp.astype(owned, dtype))
    extra = [class_count(num_local, dtype, ops, device)] if num_classes is None else []
    summed, tail = sum_columns(columns, extra, collectives, ops)
    if num_classes is None:
        num_classes = tail[0]
    log_sum = log_of_sum(summed[0], ops)
    mean_gap = summed[2] / num_classes if label_smoothing else None
    loss = losses_from_gaps(
        shift[..., 0],
        log_sum,
        summed[1],
        mean_gap,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        ops=ops,
    )
    return ShardStats(loss, shift[..., 0], log_sum, summed[-1] if eager else None, num_classes)


def sum_columns(
    columns: list[Array], extra: list[Array], collectives: Collectives, ops: Ops
) -> tuple[list[Array], list[Array]]:
    """The columns (one value per row each) and the ``extra`` 1-element arrays, all-reduced by one
    ``sum`` of them laid end to end; returned apart again (``extra`` as 0-d arrays)."""
    xp = ops.xp
    rows = size_of(tuple(columns[0].shape))
    if rows is None:  # rows of unknown number: a table of them, flattened (one reshape each way)
        table = xp.reshape(xp.stack(columns, axis=-1), (-1,))
        summed = collectives.sum(xp.concat([table, *extra]))
        parts = xp.reshape(summed[: -len(extra) or None], (-1, len(columns)))
        return [parts[:, k] for k in range(len(columns))], [
            summed[-k - 1] for k in reversed(range(len(extra)))
        ]
    summed = collectives.sum(xp.concat([*columns, *extra]))  # no reshape (Dask cannot reshape empty arrays)
    count = rows * len(columns)
    return [summed[k * rows : (k + 1) * rows] for k in range(len(columns))], [
        summed[count + k] for k in range(len(extra))
    ]


def class_count(num_local: int, dtype: Any, ops: Ops, device: Any) -> Array:
    """This rank's number of classes, a 1-element array to all-reduce by ``sum``."""
    return ops.xp.asarray([num_local], dtype=dtype, device=device)


def beyond(labels: Array, num_classes: Array, ops: Ops) -> Array:
    """Whether each (non-negative) label is at least ``num_classes`` (a 0-d floating array)."""
    xp = ops.xp
    return xp.astype(labels, num_classes.dtype) >= num_classes


def labels_outside(options: LabelOptions, num_classes: Array, ops: Ops) -> Array:
    """The counted labels at or past ``num_classes`` (the classes of all ranks), or poisoned already:
    the examples whose loss is NaN on arrays whose values are not read."""
    labels = options.labels
    bad = beyond(labels.safe, num_classes, ops)
    if labels.counted is not None:
        bad = bad & labels.counted
    return bad if labels.poisoned is None else bad | labels.poisoned


def unowned_labels(stats: ShardStats, options: LabelOptions, ops: Ops, eager: bool) -> Array | None:
    """Counted labels that no rank (or more than one) holds: on ``eager`` arrays a ``ValueError``
    naming one (every rank raises it: the counts are all-reduced); otherwise the mask of
    :func:`labels_outside`, whose losses are NaN."""
    if not eager:
        return labels_outside(options, stats.num_classes, ops)
    xp = ops.xp
    labels, counted = options.raw_labels, options.labels.counted
    owners = xp.reshape(stats.owners, reshape_target(tuple(labels.shape)))  # eager: counted
    bad = owners != 1.0
    if counted is not None:
        bad = bad & counted
    if ops.all_true(~bad):
        return None
    total = int(stats.num_classes)
    first = int(xp.argmax(xp.astype(xp.reshape(bad, (-1,)), xp.int8)))
    value = int(xp.reshape(labels, (-1,))[first])
    owners_of = int(xp.reshape(owners, (-1,))[first])
    if owners_of == 0 and 0 <= value < total:  # the shards leave a gap (and reach past the classes)
        raise ValueError(
            f"labels contains {value}, a class that no rank holds: the shards [vocab_start, "
            f"vocab_start + C_local) of the ranks, {total} classes in all, must cover [0, {total})"
        )
    if owners_of == 0:
        raise ValueError(
            f"labels contains {value}, outside the valid range [0, {total}) of class indices "
            "(the classes of every rank's shard)"
        )
    raise ValueError(
        f"labels contains {value}, a class that {owners_of} ranks hold: the shards "
        "[vocab_start, vocab_start + C_local) of the ranks overlap"
    )


# --- vocab_parallel_cross_entropy ---------------------------------------------------------------


class VocabParallelCall(NamedTuple):
    """A checked call of :func:`vocab_parallel_cross_entropy` (see :class:`~arrayloss._autodiff.Call`).

    ``sparse`` is the record of :func:`~arrayloss.sparse_softmax_cross_entropy` for the
    local logits (class axis last), whose labels are global.
    """

    sparse: SparseCall
    vocab_start: int | Array
    collectives: Collectives

    @property
    def ops(self) -> Ops:
        return self.sparse.ops

    @property
    def primals(self) -> tuple[Array, ...]:
        return (self.sparse.logits,)

    @property
    def constants(self) -> tuple[Any, ...]:
        return self.sparse.constants

    @property
    def one_pass(self) -> bool:
        return False


def check_vocab_parallel(
    *,
    local_logits: Array,
    labels: Array,
    vocab_start: int | Array,
    collectives: Collectives,
    weights: Array | None,
    ignore_index: int | None,
    label_smoothing: float,
    z_loss: float,
    reduction: Reduction,
    xp: ModuleType | None,
) -> VocabParallelCall:
    """Check the arguments of :func:`vocab_parallel_cross_entropy` once; return the call's record."""
    named = {"local_logits": local_logits, "labels": labels, "weights": weights}
    ops, start = ops_and_start(named, vocab_start, xp)
    check_collectives(collectives)
    axis = check_logits(local_logits, -1, ops.xp, name="local_logits")
    options = check_label_options(
        labels,
        None,
        tuple(local_logits.shape[:-1]),
        ops,
        weights=weights,
        class_weights=None,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        reduction=reduction,
        chunk_size=None,
        softcap=None,
    )
    return VocabParallelCall(SparseCall(ops, local_logits, axis, options), start, collectives)


def _poisoned(call: SparseCall, poisoned: Array | None) -> SparseCall:
    """``call`` whose out-of-range labels are ``poisoned`` (None: unchanged)."""
    if poisoned is None:
        return call
    options = call.options
    return call._replace(options=options._replace(labels=options.labels._replace(poisoned=poisoned)))


def _forward(call: VocabParallelCall, logits: Array) -> tuple[Array, tuple[Array, ...]]:
    """The loss, and the rows' global ``(shift, log_sum, num_classes[, poisoned])`` for the backward pass."""
    sparse, ops = call.sparse, call.ops
    xp = ops.xp
    options = sparse.options
    dtype = compute_dtype(logits.dtype, xp)
    z = xp.reshape(in_compute_dtype(logits, xp), (-1, logits.shape[-1]))
    stats = shard_losses(
        z,
        xp.reshape(options.labels.safe, (-1,)),
        call.vocab_start,
        call.collectives,
        label_smoothing=options.label_smoothing,
        z_loss=options.z_loss,
        ops=ops,
    )
    poisoned = unowned_labels(stats, options, ops, ops.is_eager(logits))
    loss = xp.reshape(stats.loss, reshape_target(tuple(options.raw_labels.shape)))
    w = options.example_weights(dtype, ops)
    out = reduce_losses(loss, w, options.reduction, ops, poisoned=poisoned)
    residuals = (stats.shift, stats.log_sum, stats.num_classes)
    return ops.as_result(out, logits.dtype), residuals + (() if poisoned is None else (poisoned,))


def _backward(
    call: VocabParallelCall, primals: tuple[Array, ...], residuals: tuple[Array, ...], cotangent: Array
) -> tuple[Array]:
    """The local slice of the full gradient: no collective."""
    (logits,) = primals
    shift, log_sum, num_classes, *poisoned = residuals
    sparse = _poisoned(call.sparse, poisoned[0] if poisoned else None)
    ops = call.ops
    xp, options = ops.xp, sparse.options
    dtype = compute_dtype(logits.dtype, xp)
    w, scale = _weights_and_scale(sparse, cotangent, dtype)
    num_local = logits.shape[-1]
    owned, index = local_labels(xp.reshape(options.labels.safe, (-1,)), call.vocab_start, num_local, ops)
    grad = sparse_logits_vjp(
        xp.reshape(logits, (-1, num_local)),
        index,
        xp.reshape(scale, (-1,)),
        label_smoothing=options.label_smoothing,
        z_loss=options.z_loss,
        masked=w is not None,
        ops=ops,
        row_stats=(shift, log_sum),
        num_classes=num_classes,
        owned=owned,
    )
    return (xp.astype(xp.reshape(grad, tuple(logits.shape)), logits.dtype, copy=False),)


RULE = Rule(check_vocab_parallel, _forward, _backward, custom_vjp=True)


@differentiable(RULE)
def vocab_parallel_cross_entropy(
    local_logits: ArrayT,
    labels: Array,
    /,
    *,
    vocab_start: int | Array,
    collectives: Collectives,
    weights: Array | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: Reduction = "none",
    xp: ModuleType | None = None,
) -> ArrayT:
    r"""Softmax cross entropy of logits sharded along the classes across ranks.

    Each rank passes its shard ``local_logits`` of the logits, the classes
    ``[vocab_start, vocab_start + C_local)`` (``C_local`` may differ between ranks; the
    shards of the ranks must cover ``[0, C)`` once), and the same global ``labels``.
    Every rank gets the value of :func:`~arrayloss.sparse_softmax_cross_entropy` on the
    full logits :math:`z \in \mathbb{R}^{C}` of each example:

    .. math::

        \ell = (1-\varepsilon)\,(\operatorname{lse}(z) - z_y)
               + \varepsilon\,\Big(\operatorname{lse}(z) - \frac{1}{C}\sum_c z_c\Big)
               + \lambda\,\operatorname{lse}(z)^2,
        \qquad \operatorname{lse}(z) = m + \log \sum_{r} \sum_{c \in r} e^{z_c - m},
        \quad m = \max_r \max_{c \in r} z_c

    with two all-reduces of per-row values (``max`` of the row maxima :math:`m`, one
    ``sum`` of the rows' exponential sums, label logits, smoothing sums and the class
    counts). The gradient of ``local_logits`` (PyTorch autograd, JAX, and
    :func:`~arrayloss.value_and_grad`) is the local slice of the full gradient,
    :math:`(1 + 2\lambda\operatorname{lse})\operatorname{softmax}(z) - (1-\varepsilon)
    \mathrm{onehot}(y) - \varepsilon / C`, scaled by the example's weight and the
    reduction, computed without any collective.

    Parameters
    ----------
    local_logits : array, shape ``(..., C_local)``
        This rank's logits, real floating, classes last. float16 and bfloat16 are
        accumulated in float32 and the result is cast back.
    labels : array of integers, shape ``local_logits.shape[:-1]``
        Global class indices in ``[0, C)`` or ``ignore_index``, the same on every rank.
    vocab_start : int or 0-d integer array
        The global index of this rank's first class (inside ``shard_map``, a traced
        ``lax.axis_index(name) * C_local``).
    collectives : Collectives
        An object with ``max(x)`` and ``sum(x)`` that all-reduce an array over the ranks
        (:func:`torch_collectives`, :func:`jax_collectives`, or your own).
    weights, ignore_index, label_smoothing, z_loss, reduction
        As in :func:`~arrayloss.sparse_softmax_cross_entropy`, the same on every rank.
    xp : namespace, optional
        Force an array namespace; inferred from the arrays when omitted.

    Returns
    -------
    array
        The same on every rank: in the namespace, on the device and with the dtype of
        ``local_logits``; the shape of ``labels`` for ``reduction="none"``, else 0-d.

    Raises
    ------
    TypeError
        As :func:`~arrayloss.sparse_softmax_cross_entropy`; a ``vocab_start`` that is not
        an int or a 0-d integer array; ``collectives`` without ``max`` and ``sum``.
    ValueError
        As :func:`~arrayloss.sparse_softmax_cross_entropy`, and a negative ``vocab_start``.
        On eager host arrays, after the all-reduces (on every rank alike), a counted label
        that no rank's shard holds, or that several hold (overlapping shards). On other
        arrays such an example's loss is NaN instead.

    Notes
    -----
    Megatron-LM's vocab-parallel cross entropy, with its options. The all-reduces are
    made inside the loss's forward pass, whose analytic gradient PyTorch and JAX
    (``jax.custom_vjp``; so ``jax.jvp`` of this loss is not available) take: autodiff
    never differentiates a collective.

    References
    ----------
    Shoeybi et al., "Megatron-LM: Training Multi-Billion Parameter Language Models Using
    Model Parallelism", 2019.

    Examples
    --------
    One rank holding every class (collectives that return their argument) gives
    :func:`~arrayloss.sparse_softmax_cross_entropy`; two shards reduced together give it too:

    >>> import numpy as np
    >>> import arrayloss as al
    >>> from arrayloss.distributed import vocab_parallel_cross_entropy
    >>> class OneRank:
    ...     def max(self, x):
    ...         return x
    ...
    ...     def sum(self, x):
    ...         return x
    >>> logits = np.asarray([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    >>> labels = np.asarray([0, 2])
    >>> vocab_parallel_cross_entropy(logits, labels, vocab_start=0, collectives=OneRank())
    array([0.2413113 , 1.00194285])
    >>> al.sparse_softmax_cross_entropy(logits, labels)
    array([0.2413113 , 1.00194285])
    """
    call = check_vocab_parallel(
        local_logits=local_logits,
        labels=labels,
        vocab_start=vocab_start,
        collectives=collectives,
        weights=weights,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        reduction=reduction,
        xp=xp,
    )
    return cast(ArrayT, compute(RULE, call))
