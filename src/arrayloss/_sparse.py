"""Softmax cross entropy with integer labels: the checks, the forward pass, the gradient rule.

:func:`sparse_losses` and :func:`sparse_gradient_and_losses` are the per-row math that
:mod:`._linear` and :mod:`._sequence` reuse.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, NamedTuple, cast

from ._autodiff import Rule, compute, differentiable
from ._lib._blocks import in_row_blocks, map_row_blocks, rows_per_block, scratch_block
from ._lib._labels import (
    Labels,
    check_class_weights,
    check_weights,
    checked_labels,
    example_weights,
    label_indices,
)
from ._lib._ops import Ops
from ._lib._reduce import dropped_as_constants, example_scale, poison, reduce_losses
from ._lib._softmax import (
    exp_sums,
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
    as_index,
    as_layout_of,
    as_real,
    check_chunk_size,
    check_fraction,
    check_labels,
    check_logits,
    check_reduction,
    class_axis_last,
    compute_dtype,
    in_compute_dtype,
    ops_of,
)


class LabelOptions(NamedTuple):
    """The checked labels and options of an integer-label cross entropy (also :mod:`._linear`'s)."""

    labels: Labels
    raw_labels: Array
    weights: Array | None
    class_weights: Array | None
    ignore_index: int | None
    label_smoothing: float
    z_loss: float
    reduction: Reduction
    chunk_size: int | None
    softcap: float | None

    def example_weights(self, dtype: object, ops: Ops) -> Array | None:
        """The combined weight of each example (None: all 1), see :func:`~._lib._labels.example_weights`."""
        return example_weights(self.weights, self.class_weights, self.labels, dtype, ops)


def check_label_options(
    labels: Array,
    num_classes: int | None,
    example_shape: tuple[int, ...],
    ops: Ops,
    *,
    weights: Array | None,
    class_weights: Array | None,
    ignore_index: int | None,
    label_smoothing: float,
    z_loss: float,
    reduction: Reduction,
    chunk_size: int | None,
    softcap: float | None,
) -> LabelOptions:
    """Check the labels (of ``example_shape``, values on eager arrays) and the options; return them.

    ``num_classes=None``: the classes are not known here (a vocabulary sharded over ranks), labels
    are checked to be non-negative and ``class_weights`` must be None.
    """
    check_reduction(reduction)
    if softcap is not None and not 0 < as_real("softcap", softcap) < math.inf:
        raise ValueError(f"softcap must be None or a positive finite number, got {softcap!r}")
    label_smoothing = check_fraction("label_smoothing", label_smoothing)
    chunk_size = check_chunk_size(chunk_size)
    if ignore_index is not None:
        ignore_index = as_index("ignore_index", ignore_index)
    if not as_real("z_loss", z_loss) >= 0:
        raise ValueError(f"z_loss must be non-negative, got {z_loss!r}")
    if class_weights is not None and num_classes is not None:
        check_class_weights(class_weights, num_classes, ops)
    check_labels(labels, example_shape, ops.xp)
    if weights is not None:
        check_weights("weights", weights, tuple(labels.shape), "labels", ops)
    return LabelOptions(
        checked_labels(labels, num_classes, ignore_index, ops),
        labels,
        weights,
        class_weights,
        ignore_index,
        label_smoothing,
        z_loss,
        reduction,
        chunk_size,
        None if softcap is None else float(softcap),
    )


class SparseCall(NamedTuple):
    """A checked call of :func:`sparse_softmax_cross_entropy` (see :class:`~._autodiff.Call`)."""

    ops: Ops
    logits: Array
    axis: int
    options: LabelOptions

    @property
    def primals(self) -> tuple[Array, ...]:
        return (self.logits,)

    @property
    def constants(self) -> tuple[Any, ...]:
        return (self.options.weights, self.options.class_weights)

    @property
    def one_pass(self) -> bool:
        # The gradient in the forward pass, scaled by the cotangent later: one pass over the logits
        # fewer, on eager host arrays; elsewhere a compiler fuses.
        return self.options.reduction != "none" and self.ops.is_eager(self.logits)


def check_sparse(
    *,
    logits: Array,
    labels: Array,
    axis: int,
    weights: Array | None,
    class_weights: Array | None,
    ignore_index: int | None,
    label_smoothing: float,
    z_loss: float,
    reduction: Reduction,
    chunk_size: int | None,
    softcap: float | None,
    xp: ModuleType | None,
) -> SparseCall:
    """Check the arguments of :func:`sparse_softmax_cross_entropy` once; return the call's record."""
    ops = ops_of(
        {"logits": logits, "labels": labels, "weights": weights, "class_weights": class_weights},
        xp,
        optional=("weights", "class_weights"),
    )
    xp = ops.xp
    axis = check_logits(logits, axis, xp)
    options = check_label_options(
        labels,
        logits.shape[axis],
        logits.shape[:axis] + logits.shape[axis + 1 :],
        ops,
        weights=weights,
        class_weights=class_weights,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        reduction=reduction,
        chunk_size=chunk_size,
        softcap=softcap,
    )
    return SparseCall(ops, logits, axis, options)


class Capped(NamedTuple):
    """Logits after :func:`capped`, and the derivative of the cap (None without one)."""

    z: Array
    slope: Array | None

    def gradient(self, grad: Array, scale: Array, masked: bool, ops: Ops) -> Array:
        """``grad`` (rows of the gradient for the capped logits) for the logits themselves; with
        ``masked``, rows of ``scale`` 0 stay exactly 0 whatever their logits."""
        if self.slope is None:
            return grad
        slope = self.slope
        if masked:
            xp = ops.xp
            slope = xp.where(scale[..., None] == 0, xp.zeros_like(slope), slope)
        grad *= slope  # our temporary: in place where the library allows it
        return grad


def capped(z: Array, softcap: float | None, ops: Ops) -> Capped:
    r"""Gemma 2's logit soft-capping, :math:`c 	anh(z / c)`, and its slope :math:`1 - 	anh^2(z/c)`."""
    if softcap is None:
        return Capped(z, None)
    xp = ops.xp
    t = xp.tanh(z / softcap)
    return Capped(t * softcap, 1.0 - t * t)


def losses_from_row_stats(
    z: Array,
    safe_labels: Array,
    shift: Array,
    log_sum: Array,
    *,
    label_smoothing: float,
    z_loss: float,
    ops: Ops,
) -> Array:
    """Per-row cross entropy of ``z`` (classes last) from the rows' ``shift`` and ``log_sum`` (kept axis,
    as from :func:`~._lib._softmax.shifted_log_sum`) and in-range labels."""
    xp = ops.xp
    label_gap = ops.pick(z, label_indices(safe_labels, ops)) - shift[..., 0]
    mean_gap = None
    if label_smoothing:
        gaps = z - shift  # the mean of (z - shift), not of z: the mean of huge z would be rounded
        # A row holding NaN, +inf or only -inf (log_sum not finite) would add +inf and -inf (a warning):
        # its mean is taken of zeros, and losses_from_gaps gives it NaN.
        undefined = ~xp.isfinite(log_sum)
        if not ops.is_eager(z) or not ops.all_true(~undefined):
            gaps = xp.where(undefined, 0.0, gaps)
        mean_gap = xp.mean(gaps, axis=-1)
    return losses_from_gaps(
        shift[..., 0],
        log_sum[..., 0],
        label_gap,
        mean_gap,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        ops=ops,
    )


def losses_from_gaps(
    shift: Array,
    log_sum: Array,
    label_gap: Array,
    mean_gap: Array | None,
    *,
    label_smoothing: float,
    z_loss: float,
    ops: Ops,
) -> Array:
    r"""The rows' cross entropy from their statistics, each of the rows' leading shape.

    ``lse = shift + log_sum`` is the log-sum-exp of a row, ``label_gap`` is :math:`z_y -`
    ``shift`` and ``mean_gap`` the mean of :math:`z_c -` ``shift`` over the classes (needed
    only with ``label_smoothing``). The statistics may come from one array of logits
    (:func:`losses_from_row_stats`) or be summed over shards of the classes
    (:mod:`arrayloss.distributed`). Where ``log_sum`` is not finite the loss is NaN or ``+inf``,
    computed without an ``inf - inf`` warning.
    """
    # lse(z) - z_y as log_sum - (z_y - shift): lse(z) itself would round log_sum away for huge logits.
    loss = subtract(log_sum, label_gap, ops)
    if label_smoothing:
        assert mean_gap is not None  # given with label_smoothing
        xp = ops.xp
        finite = xp.isfinite(log_sum)  # else NaN, with no inf - inf of a mean gap summed over shards
        smooth = xp.where(finite, log_sum - xp.where(finite, mean_gap, 0.0), math.nan)
        # At 1 the label's term has weight 0 and is left out: 0 * inf would be NaN (and a warning).
        loss = smooth if label_smoothing == 1.0 else (1.0 - label_smoothing) * loss + label_smoothing * smooth
    if z_loss:
        lse = log_sum + shift
        loss = loss + z_loss * lse * lse
    return loss


def losses_and_row_stats(
    z: Array,
    safe_labels: Array,
    *,
    label_smoothing: float,
    z_loss: float,
    ops: Ops,
    softcap: float | None = None,
    scratch: Array | None = None,
) -> tuple[Array, Array, Array]:
    """``(loss, shift, log_sum)`` of the rows ``z`` (capped at ``softcap``), each of their leading shape.

    The backward pass builds the softmax from ``shift`` and ``log_sum`` without reducing
    the rows again. ``scratch`` as in :func:`~._lib._softmax.exp_sums`.
    """
    z = capped(z, softcap, ops).z
    shift, log_sum = shifted_log_sum(z, ops, scratch=scratch)
    loss = losses_from_row_stats(
        z, safe_labels, shift, log_sum, label_smoothing=label_smoothing, z_loss=z_loss, ops=ops
    )
    return loss, shift[..., 0], log_sum[..., 0]


def sparse_losses(
    z: Array,
    safe_labels: Array,
    *,
    label_smoothing: float,
    z_loss: float,
    ops: Ops,
    chunk_size: int | None = None,
    softcap: float | None = None,
) -> tuple[Array, Array, Array]:
    """:func:`losses_and_row_stats` of ``z`` (classes last), in blocks of rows (:func:`rows_per_block`).

    In the accumulation dtype; half precision is converted block by block.
    """
    xp = ops.xp
    block = rows_per_block(chunk_size, z, ops)
    if block is None or z.ndim < 2:
        z = in_compute_dtype(z, xp)
        return losses_and_row_stats(
            z, safe_labels, label_smoothing=label_smoothing, z_loss=z_loss, ops=ops, softcap=softcap
        )
    rows = (xp.reshape(z, (-1, z.shape[-1])), xp.reshape(safe_labels, (-1,)))
    scratch = scratch_block(rows[0], block, ops) if ops.is_eager(z) else None

    def stacked(z_rows: Array, label_rows: Array) -> Array:
        parts = losses_and_row_stats(
            in_compute_dtype(z_rows, xp),
            label_rows,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            ops=ops,
            softcap=softcap,
            scratch=scratch,
        )
        return xp.stack(parts, axis=-1)

    together = xp.reshape(map_row_blocks(stacked, rows, block, ops), (*safe_labels.shape, 3))
    loss, shift, log_sum = (together[..., k] for k in range(3))
    return loss, shift, log_sum


def subtract_targets(
    grad: Array,
    safe_labels: Array,
    scale: Array,
    label_smoothing: float,
    ops: Ops,
    *,
    num_classes: Array | None = None,
    owned: Array | None = None,
) -> Array:
    """``grad`` minus the smoothed one-hot targets of ``safe_labels`` times ``scale`` (one per row).

    The targets spread ``label_smoothing`` over ``num_classes`` classes (a 0-d array; None: the
    classes of ``grad``). ``owned`` (one per row; None: all) marks the rows whose label is a
    class of ``grad``: the others (a shard of the classes, :mod:`arrayloss.distributed`) get the
    uniform part only. ``grad`` is a temporary of the caller. Where ``Ops.views`` (NumPy, PyTorch), on rows
    (2-d), its label entries are assigned by index: the comparison with every class
    costs a pass over the block. Both compute ``grad - target`` in the same order: the
    same numbers.
    """
    xp = ops.xp
    uniform = scale * (label_smoothing / (grad.shape[-1] if num_classes is None else num_classes))
    at_label = scale * (1.0 - label_smoothing) + uniform
    if owned is not None:
        at_label = xp.where(owned, at_label, uniform)
    index = label_indices(safe_labels, ops)
    if grad.ndim == 2 and ops.views:
        at_labels = xp.take_along_axis(grad, index[:, None], axis=-1)[:, 0] - at_label
        if label_smoothing:
            grad -= uniform[:, None]
        grad[xp.arange(grad.shape[0], dtype=index.dtype, device=ops.device(grad)), index] = at_labels
        return grad
    classes = ops.class_indices(grad, index.dtype)
    return grad - xp.where(classes == index[..., None], at_label[..., None], uniform[..., None])


def sparse_logits_vjp(
    z: Array,
    safe_labels: Array,
    scale: Array,
    *,
    label_smoothing: float,
    z_loss: float,
    masked: bool,
    ops: Ops,
    row_stats: tuple[Array, Array] | None = None,
    softcap: float | None = None,
    num_classes: Array | None = None,
    owned: Array | None = None,
) -> Array:
    r"""Gradient of :math:`\sum_i s_i \ell_i` with respect to ``z`` (classes last, accumulation dtype).

    .. math::

        \frac{\partial \ell}{\partial z} = (1 + 2\lambda \operatorname{lse}(z))\,\operatorname{softmax}(z)
            - (1-\varepsilon)\,\mathrm{onehot}(y) - \varepsilon / C

    ``scale`` holds :math:`s_i` (see :func:`~._lib._reduce.example_scale`). With
    ``masked``, rows of scale 0 are exactly 0 even where their logits are not finite.
    ``row_stats`` are the rows' ``(shift, log_sum)`` from the forward pass
    (:func:`losses_and_row_stats`), which spare the reduction of every row; None
    computes them. With ``softcap``, the loss of the capped logits (:func:`capped`).
    ``num_classes`` and ``owned`` as in :func:`subtract_targets`: ``z`` may be a shard of
    the classes, whose softmax then needs the ``row_stats`` of all of them.
    Computed in blocks of rows (:func:`~._lib._blocks.in_row_blocks`).
    """

    def rows(
        z: Array, safe_labels: Array, scale: Array, *extra: Array, scratch: Array | None = None
    ) -> tuple[Array]:
        owned_rows, stats = (None, extra) if owned is None else (extra[0], extra[1:])
        cap = capped(z, softcap, ops)
        softmax, lse = softmax_and_lse(cap.z, scale, stats, masked, ops, scratch)
        coefficient = scale[..., None]
        if z_loss:
            coefficient = coefficient * (1.0 + 2.0 * z_loss * lse)
        softmax *= coefficient  # our temporary: in place where the library allows it
        grad = subtract_targets(
            softmax, safe_labels, scale, label_smoothing, ops, num_classes=num_classes, owned=owned_rows
        )
        return (cap.gradient(grad, scale, masked, ops),)

    per_row = (safe_labels, scale, *(() if owned is None else (owned,)), *(row_stats or ()))
    return in_row_blocks(rows, z, per_row, ops, scratch=True)[0]


def gradient_rows_and_losses(
    z: Array,
    safe_labels: Array,
    scale: Array,
    *,
    label_smoothing: float,
    z_loss: float,
    masked: bool,
    ops: Ops,
    softcap: float | None = None,
    scratch: Array | None = None,
) -> tuple[Array, Array]:
    """The gradient rows of :func:`sparse_logits_vjp` and the rows' losses, from one exponential of ``z``.

    ``z`` are rows of logits (classes last, accumulation dtype); the losses are
    unweighted. With ``masked``, rows of scale 0 are computed from zero logits: their
    gradient is 0 and their loss finite, for the caller to weight by 0. The gradient
    rows may be written into ``scratch`` (see :func:`~._lib._softmax.exp_sums`).
    """
    eager = ops.is_eager(z)
    cap = capped(z, softcap, ops)
    z = cap.z
    if masked and not eager:  # values are not read: rows of scale 0 are zeroed
        z = zero_dropped_rows(z, scale, ops)
    shift, exps, total, log_sum = exp_sums(z, ops, scratch=scratch)
    # Eager arrays: rows of scale 0 whose logits are not finite (their log_sum is not) are computed
    # again from zeros; other rows of scale 0 get exactly 0 anyway (finite exps times 0).
    if masked and eager and unsafe_dropped_rows(log_sum[..., 0], scale, ops):
        z = zero_dropped_rows(z, scale, ops)
        shift, exps, total, log_sum = exp_sums(z, ops, scratch=scratch)
    loss = losses_from_row_stats(
        z, safe_labels, shift, log_sum, label_smoothing=label_smoothing, z_loss=z_loss, ops=ops
    )
    coefficient = scale[..., None] / total  # softmax = exps / total
    if z_loss:
        coefficient = coefficient * (1.0 + 2.0 * z_loss * (shift + log_sum))
    exps *= coefficient  # in place: one block-sized temporary fewer per block
    grad = subtract_targets(exps, safe_labels, scale, label_smoothing, ops)
    return cap.gradient(grad, scale, masked, ops), loss


def sparse_gradient_and_losses(
    z: Array,
    safe_labels: Array,
    scale: Array,
    *,
    label_smoothing: float,
    z_loss: float,
    masked: bool,
    ops: Ops,
    chunk_size: int | None,
    softcap: float | None = None,
) -> tuple[Array, Array]:
    """The gradient of :func:`sparse_logits_vjp` and the rows' unweighted losses, block by block.

    Each block of rows of ``z`` is exponentiated once (:func:`gradient_rows_and_losses`),
    in the gradient's own rows where the library allows it.
    """

    def rows(z: Array, safe_labels: Array, scale: Array, scratch: Array | None = None) -> tuple[Array, Array]:
        return gradient_rows_and_losses(
            z,
            safe_labels,
            scale,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            masked=masked,
            ops=ops,
            softcap=softcap,
            scratch=scratch,
        )

    grad, loss = in_row_blocks(rows, z, (safe_labels, scale), ops, chunk_size=chunk_size, scratch=True)
    return grad, loss


def _classes_last(call: SparseCall, logits: Array) -> tuple[Array, Any]:
    """The logits with classes last, in their own dtype (the blocks convert half precision one
    at a time), and the accumulation dtype."""
    xp = call.ops.xp
    return class_axis_last(logits, call.axis, xp), compute_dtype(logits.dtype, xp)


def _weights_and_scale(call: SparseCall, cotangent: Array, dtype: Any) -> tuple[Array | None, Array]:
    """The combined example weights and each example's gradient factor (NaN for a poisoned label),
    in the accumulation ``dtype``."""
    options, ops = call.options, call.ops
    w = options.example_weights(dtype, ops)
    scale = example_scale(cotangent, w, options.reduction, options.raw_labels, dtype, ops)
    return w, poison(scale, options.labels.poisoned, ops)


def _forward(call: SparseCall, logits: Array) -> tuple[Array, tuple[Array, ...]]:
    """The loss, and the rows' ``(shift, log_sum)`` for the backward pass."""
    options, ops = call.options, call.ops
    z, dtype = _classes_last(call, logits)
    w = options.example_weights(dtype, ops)
    loss, shift, log_sum = sparse_losses(
        dropped_as_constants(z, w, ops),
        options.labels.safe,
        label_smoothing=options.label_smoothing,
        z_loss=options.z_loss,
        ops=ops,
        chunk_size=options.chunk_size,
        softcap=options.softcap,
    )
    out = reduce_losses(loss, w, options.reduction, ops, poisoned=options.labels.poisoned)
    return ops.as_result(out, logits.dtype), (shift, log_sum)


def _backward(
    call: SparseCall, primals: tuple[Array, ...], residuals: tuple[Array, ...], cotangent: Array
) -> tuple[Array]:
    (logits,) = primals
    options, ops = call.options, call.ops
    z, dtype = _classes_last(call, logits)
    w, scale = _weights_and_scale(call, cotangent, dtype)
    grad = sparse_logits_vjp(
        z,
        options.labels.safe,
        scale,
        label_smoothing=options.label_smoothing,
        z_loss=options.z_loss,
        masked=w is not None,
        ops=ops,
        row_stats=(residuals[0], residuals[1]) if residuals else None,
        softcap=options.softcap,
    )
    return (as_layout_of(grad, logits, call.axis, ops.xp),)


def _fused(call: SparseCall, logits: Array) -> tuple[Array, tuple[Array]]:
    """The loss and its gradient with respect to ``logits``, from one exponential of each block."""
    options, ops = call.options, call.ops
    xp = ops.xp
    z, dtype = _classes_last(call, logits)
    shape = () if options.reduction != "none" else tuple(options.raw_labels.shape)
    w, scale = _weights_and_scale(call, xp.ones(shape, dtype=dtype, device=ops.device(z)), dtype)
    grad, loss = sparse_gradient_and_losses(
        z,
        options.labels.safe,
        scale,
        label_smoothing=options.label_smoothing,
        z_loss=options.z_loss,
        masked=w is not None,
        ops=ops,
        chunk_size=options.chunk_size,
        softcap=options.softcap,
    )
    value = reduce_losses(loss, w, options.reduction, ops, poisoned=options.labels.poisoned)
    return ops.as_result(value, logits.dtype), (as_layout_of(grad, logits, call.axis, xp),)


RULE = Rule(check_sparse, _forward, _backward, _fused)


@differentiable(RULE)
def sparse_softmax_cross_entropy(
    logits: ArrayT,
    labels: Array,
    /,
    *,
    axis: int = -1,
    weights: Array | None = None,
    class_weights: Array | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: Reduction = "none",
    chunk_size: int | None = None,
    softcap: float | None = None,
    xp: ModuleType | None = None,
) -> ArrayT:
    r"""Softmax cross entropy between ``logits`` and integer class ``labels``.

    For one example with logits :math:`z \in \mathbb{R}^C`, label :math:`y`,
    smoothing :math:`\varepsilon` and z-loss weight :math:`\lambda`:

    .. math::

        \ell = (1-\varepsilon)\,(\operatorname{lse}(z) - z_y)
               + \varepsilon\,\Big(\operatorname{lse}(z) - \frac{1}{C}\sum_c z_c\Big)
               + \lambda\,\operatorname{lse}(z)^2

    which is the cross entropy against the target :math:`(1-\varepsilon)\,\mathrm{onehot}(y)
    + \varepsilon/C` (the convention of PyTorch and optax) plus PaLM's z-loss.
    Each example has the weight :math:`w_i = \mathrm{weights}_i \cdot
    \mathrm{class\_weights}_{y_i} \cdot [y_i \ne \mathrm{ignore\_index}]`; a weight
    of 0 removes the example (its loss is 0 even if it is ``inf`` or NaN).

    Parameters
    ----------
    logits : array, shape ``(..., C, ...)``
        Unnormalised log-probabilities, real floating. float16 and bfloat16 are
        accumulated in float32 and the result is cast back.
    labels : array of integers
        The shape of ``logits`` without ``axis``; values in ``[0, C)`` or ``ignore_index``.
    axis : int, optional
        The class axis of ``logits``. Default: the last.
    weights : array, optional
        Non-negative per-example weights, broadcastable to ``labels``.
    class_weights : array, shape ``(C,)``, optional
        Non-negative weight of each class, applied by label (PyTorch's ``weight=``).
        With label smoothing, the whole smoothed loss of an example is scaled by
        its label's weight (PyTorch instead weights each class of the smoothing
        term; the two agree when ``label_smoothing=0``).
    ignore_index : int, optional
        Examples with this label have weight 0 and are left out of the mean.
    label_smoothing : float in [0, 1], optional
        :math:`\varepsilon` above.
    z_loss : float, optional
        :math:`\lambda \ge 0` above.
    reduction : {"none", "sum", "mean"}, optional
        ``"none"``: the weighted loss of each example, shape of ``labels``.
        ``"sum"``: :math:`\sum_i w_i \ell_i`.
        ``"mean"``: :math:`\sum_i w_i \ell_i / \sum_i w_i`, or 0 when the weights sum to 0
        (an empty batch, or all examples ignored).
    chunk_size : int, optional
        Compute the loss ``chunk_size`` examples (rows of ``logits``) at a time, so
        that the working memory of the computation is a few ``chunk_size x C``
        arrays rather than several of the size of ``logits``. The result is the
        same. By default eager arrays on the host (NumPy, array-api-strict, torch
        on CPU) are processed in cache-sized blocks of rows, which is faster, and
        other arrays (GPU, JAX, Dask) in one piece.
    softcap : float, optional
        Cap the logits smoothly at :math:`\pm c`: :math:`z \leftarrow c \tanh(z / c)`
        before the loss (Gemma 2's final-logit soft-capping), with its gradient.
    xp : namespace, optional
        Force an array namespace; inferred from the arrays when omitted.

    Returns
    -------
    array
        In the namespace, on the device, and with the dtype of ``logits``.

    Raises
    ------
    TypeError
        Non-array inputs, integer logits, non-integer labels, arrays of two libraries.
    ValueError
        Mismatched shapes or devices, ``axis`` out of range, unknown ``reduction``,
        options out of range; and, on eager host arrays (NumPy, array-api-strict,
        torch on CPU), labels outside ``[0, C)`` and negative or NaN weights. On other
        arrays (GPU, JAX, Dask, ``torch.compile``, ``torch.func``) checking values would sync the
        device or break the trace, so an out-of-range label gives that example a
        NaN loss instead, and weights are not checked.

    Notes
    -----
    When PyTorch records gradients of ``logits``, ``loss.backward()`` uses the
    analytic gradient (``softmax - target``, scaled). With ``reduction="sum"`` or
    ``"mean"`` on CPU tensors it is computed in the forward pass, together with the
    loss, in one read of the logits, and kept until ``backward()``: one array the size
    of ``logits``, which then becomes their ``.grad`` without a copy (the peak memory
    of ``F.cross_entropy`` forward and backward is three such arrays).

    Small calls on PyTorch CPU tensors without ``z_loss`` or ``chunk_size`` (2-D float32
    or float64 logits of at most 32 MiB, 4 MiB when autograd records them, int64 labels;
    ``class_weights`` of the logits' dtype, without label smoothing) are handed to
    ``torch.nn.functional.cross_entropy`` after arrayloss's own checks, with the same
    results (per-example ``weights`` multiply its losses of each example): there its one
    C++ call beats about 25 array-API calls (the measured rule is in ``arrayloss._lib._torch``).

    References
    ----------
    Szegedy et al., "Rethinking the Inception Architecture for Computer Vision" (label
    smoothing), 2016. Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways"
    (z-loss), 2022. Gemma Team, "Gemma 2: Improving Open Language Models at a Practical
    Size" (logit soft-capping), 2024.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> logits = np.asarray([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    >>> labels = np.asarray([0, 2])
    >>> al.sparse_softmax_cross_entropy(logits, labels)
    array([0.2413113 , 1.00194285])
    >>> al.sparse_softmax_cross_entropy(logits, labels, ignore_index=2, reduction="mean")
    array(0.2413113)
    """
    call = check_sparse(
        logits=logits,
        labels=labels,
        axis=axis,
        weights=weights,
        class_weights=class_weights,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        reduction=reduction,
        chunk_size=chunk_size,
        softcap=softcap,
        xp=xp,
    )
    native = call.ops.native_cross_entropy(logits, call)
    return cast(ArrayT, compute(RULE, call) if native is None else native)
