"""Softmax cross entropy with integer labels and with dense (probability) targets."""

from __future__ import annotations

import math
import sys
from types import ModuleType
from typing import Any, NamedTuple

from array_api_compat import device, is_numpy_namespace

from ._autodiff import analytic_backward, torch_records_gradient
from ._chunking import check_chunk_size, map_row_chunks, rows_per_chunk, scratch_block
from ._native import torch_cross_entropy, torch_delegates
from ._reduce import as_result, reduce_losses
from ._special import (
    all_true,
    difference,
    exp_of_temporary,
    log_of_sum,
    row_dot,
    row_max,
    row_sum,
    shifted_log_sum,
)
from ._validation import (
    Array,
    as_index,
    check_broadcastable,
    check_floating,
    check_fraction,
    check_labels,
    check_labels_in_range,
    check_logits,
    check_real,
    check_reduction,
    check_weights_valid,
    class_axis_last,
    compute_dtype,
    in_compute_dtype,
    is_eager_host,
    namespace_of,
)


def label_indices(labels: Array, xp: ModuleType) -> Array:
    """Integer ``labels`` in their device's indexing dtype, which every gather accepts (torch: not int8)."""
    if labels.dtype == xp.int64:  # the indexing dtype of 64-bit platforms, without asking (1 us)
        return labels
    index_dtype = xp.__array_namespace_info__().default_dtypes(device=device(labels))["indexing"]
    return xp.astype(labels, index_dtype, copy=False)


def pick_label_logits(z: Array, labels: Array, xp: ModuleType) -> Array:
    """``z[..., labels]`` along the last axis, for labels already known to be in range."""
    index = label_indices(labels, xp)
    if z.ndim == 2 and is_numpy_namespace(xp):  # integer array indexing: 2.4 against 3.9 us at 8x16
        return z[sys.modules["numpy"].arange(z.shape[0]), index]
    if hasattr(xp, "take_along_axis"):
        return xp.take_along_axis(z, index[..., None], axis=-1)[..., 0]
    # Namespaces without a gather (Dask): select with a comparison, never multiply by a one-hot
    # (0 * -inf would be NaN).
    classes = xp.arange(z.shape[-1], dtype=index.dtype, device=device(z))
    zero = xp.asarray(0, dtype=z.dtype, device=device(z))
    return xp.sum(xp.where(classes == index[..., None], z, zero), axis=-1)


def prepare_labels(
    labels: Array, num_classes: int, ignore_index: int | None, xp: ModuleType, name: str = "labels"
) -> tuple[Array, Array | None, Array | None]:
    """Check integer ``labels`` against ``num_classes`` classes; return ``(safe_labels, counted, poisoned)``.

    ``safe_labels`` has out-of-range labels replaced by 0; ``counted`` is the mask of
    examples not equal to ``ignore_index`` (``None`` without one); ``poisoned`` marks
    counted labels out of range on arrays whose values cannot be checked eagerly
    (``None`` when they were checked). Errors call the labels ``name``.
    """
    counted = None
    if ignore_index is not None:
        info = xp.iinfo(labels.dtype)
        # An ignore_index the labels' dtype cannot hold (-100 for uint8) matches no label.
        counted = labels != ignore_index if info.min <= ignore_index <= info.max else None
    in_range = (labels >= 0) & (labels < num_classes)
    poisoned = None
    if is_eager_host(labels):
        accepted = in_range if counted is None else in_range | ~counted
        if not all_true(accepted, xp):
            check_labels_in_range(labels, num_classes, counted, xp, name)  # raises, naming a bad label
        if counted is None:  # every label is in range
            return labels, counted, poisoned
    else:
        poisoned = ~in_range if counted is None else ~in_range & counted
    return xp.where(in_range, labels, xp.zeros_like(labels)), counted, poisoned


def label_terms(
    z: Array, safe_labels: Array, *, label_smoothing: float, z_loss: float, xp: ModuleType
) -> Array:
    """Per-example cross entropy of ``z`` (classes last, accumulation dtype) and in-range labels."""
    return label_terms_and_row_stats(z, safe_labels, label_smoothing=label_smoothing, z_loss=z_loss, xp=xp)[0]


def label_terms_and_row_stats(
    z: Array,
    safe_labels: Array,
    *,
    label_smoothing: float,
    z_loss: float,
    xp: ModuleType,
    scratch: Array | None = None,
) -> tuple[Array, Array, Array]:
    """``(loss, shift, log_sum)``: :func:`label_terms` and the rows' :func:`~._special.shifted_log_sum`.

    All three have the leading shape of ``z`` (the row axis dropped); the backward pass
    builds the softmax from ``shift`` and ``log_sum`` without reducing the rows again.
    ``scratch`` as in :func:`~._special.exp_sums`.
    """
    shift, log_sum = shifted_log_sum(z, xp, scratch=scratch)
    loss = terms_from_row_stats(
        z, safe_labels, shift, log_sum, label_smoothing=label_smoothing, z_loss=z_loss, xp=xp
    )
    return loss, shift[..., 0], log_sum[..., 0]


def terms_from_row_stats(
    z: Array,
    safe_labels: Array,
    shift: Array,
    log_sum: Array,
    *,
    label_smoothing: float,
    z_loss: float,
    xp: ModuleType,
) -> Array:
    """:func:`label_terms` from the rows' ``shift`` and ``log_sum`` (kept axis, as from
    :func:`~._special.shifted_log_sum`)."""
    # lse(z) - z_y as log_sum - (z_y - shift): lse(z) itself would round log_sum away for huge logits.
    loss = log_sum[..., 0] - (pick_label_logits(z, safe_labels, xp) - shift[..., 0])
    if label_smoothing:
        smooth = log_sum[..., 0] - xp.mean(z - shift, axis=-1)  # the mean of huge z would be rounded
        loss = (1.0 - label_smoothing) * loss + label_smoothing * smooth
    if z_loss:
        lse = log_sum[..., 0] + shift[..., 0]
        loss = loss + z_loss * lse * lse
    return loss


class SparseTerms(NamedTuple):
    """What :func:`sparse_terms` returns; ``shift`` and ``log_sum`` as :func:`label_terms_and_row_stats`."""

    loss: Array
    counted: Array | None
    poisoned: Array | None
    shift: Array
    log_sum: Array


def sparse_terms(
    z: Array,
    labels: Array,
    *,
    ignore_index: int | None,
    label_smoothing: float,
    z_loss: float,
    xp: ModuleType,
    name: str = "labels",
    chunk_size: int | None = None,
) -> SparseTerms:
    """Per-example cross entropy of ``z`` (classes last, accumulation dtype) and integer ``labels``.

    Returns the loss, ``counted`` and ``poisoned`` as :func:`prepare_labels`, and the
    rows' ``shift`` and ``log_sum`` (:func:`label_terms_and_row_stats`), each of the
    shape of ``labels``. The loss is computed in row chunks chosen by
    :func:`~arrayloss._chunking.rows_per_chunk` from ``chunk_size``.
    """
    safe_labels, counted, poisoned = prepare_labels(labels, z.shape[-1], ignore_index, xp, name)
    chunk = rows_per_chunk(chunk_size, z, xp)
    if chunk is None or z.ndim < 2:
        terms = label_terms_and_row_stats(
            z, safe_labels, label_smoothing=label_smoothing, z_loss=z_loss, xp=xp
        )
        return SparseTerms(terms[0], counted, poisoned, terms[1], terms[2])
    rows = (xp.reshape(z, (-1, z.shape[-1])), xp.reshape(safe_labels, (-1,)))
    scratch = scratch_block(rows[0], chunk, xp) if is_eager_host(z) else None

    def stacked_terms(z_rows: Array, label_rows: Array) -> Array:
        terms = label_terms_and_row_stats(
            z_rows, label_rows, label_smoothing=label_smoothing, z_loss=z_loss, xp=xp, scratch=scratch
        )
        return xp.stack(terms, axis=-1)

    stacked = xp.reshape(map_row_chunks(stacked_terms, rows, chunk, xp), (*labels.shape, 3))
    loss, shift, log_sum = (stacked[..., k] for k in range(3))
    return SparseTerms(loss, counted, poisoned, shift, log_sum)


def check_sparse_options(
    num_classes: int,
    class_weights: Array | None,
    ignore_index: int | None,
    label_smoothing: float,
    z_loss: float,
    reduction: str,
    chunk_size: int | None,
) -> int | None:
    """Check the options of the integer-label cross entropies; return ``ignore_index`` as an int."""
    check_reduction(reduction)
    check_fraction("label_smoothing", label_smoothing)
    check_chunk_size(chunk_size)
    if ignore_index is not None:
        ignore_index = as_index("ignore_index", ignore_index)
    if not z_loss >= 0:
        raise ValueError(f"z_loss must be non-negative, got {z_loss!r}")
    if class_weights is not None and tuple(class_weights.shape) != (num_classes,):
        raise ValueError(
            f"class_weights must have shape ({num_classes},), one weight per class, "
            f"got {tuple(class_weights.shape)}"
        )
    return ignore_index


def broadcast_weights(
    weights: Array, shape: tuple[int, ...], target: str, dtype: object, xp: ModuleType
) -> Array:
    """Check per-example ``weights`` against ``shape`` (of ``target``) and broadcast them in ``dtype``."""
    check_real("weights", weights, xp)
    check_broadcastable("weights", weights, shape, target)
    if is_eager_host(weights):
        check_weights_valid("weights", weights, xp)
    return xp.broadcast_to(xp.astype(weights, dtype), shape)


def example_weights(
    weights: Array | None,
    class_weights: Array | None,
    labels: Array,
    counted: Array | None,
    dtype: object,
    xp: ModuleType,
) -> Array | None:
    """Combine per-example ``weights``, the labels' ``class_weights`` and the ignore mask."""
    combined = None
    if weights is not None:
        combined = broadcast_weights(weights, tuple(labels.shape), "labels", dtype, xp)
    if class_weights is not None:
        check_real("class_weights", class_weights, xp)
        if is_eager_host(class_weights):
            check_weights_valid("class_weights", class_weights, xp)
        if math.prod(labels.shape) == 0:  # no labels: Dask cannot flatten some empty shapes, e.g. (2, 0, 2)
            picked = xp.zeros(tuple(labels.shape), dtype=dtype, device=device(labels))
        else:
            in_range = (labels >= 0) & (labels < class_weights.shape[0])
            flat = xp.reshape(label_indices(xp.where(in_range, labels, xp.zeros_like(labels)), xp), (-1,))
            picked = xp.reshape(xp.take(xp.astype(class_weights, dtype), flat, axis=0), tuple(labels.shape))
        combined = picked if combined is None else combined * picked
    if counted is not None:
        if combined is None:
            combined = xp.astype(counted, dtype)
        else:
            combined = xp.where(counted, combined, xp.zeros_like(combined))
    return combined


@analytic_backward
def sparse_softmax_cross_entropy(
    logits: Array,
    labels: Array,
    /,
    *,
    axis: int = -1,
    weights: Array | None = None,
    class_weights: Array | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "none",
    chunk_size: int | None = None,
    xp: ModuleType | None = None,
) -> Array:
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
    C++ call beats about 25 array-API calls (the measured rule is in ``arrayloss._native``).

    References
    ----------
    Szegedy et al., "Rethinking the Inception Architecture for Computer Vision" (label
    smoothing), 2016. Chowdhery et al., "PaLM: Scaling Language Modeling with Pathways"
    (z-loss), 2022.

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
    options: dict[str, Any] = {
        "axis": axis,
        "weights": weights,
        "class_weights": class_weights,
        "ignore_index": ignore_index,
        "label_smoothing": label_smoothing,
        "z_loss": z_loss,
        "reduction": reduction,
        "chunk_size": chunk_size,
        "xp": xp,
    }
    if torch_delegates(logits, labels, options):
        return torch_cross_entropy(logits, labels, options)
    return sparse_loss_and_row_stats(logits, labels, **options)[0]


def sparse_loss_and_row_stats(
    logits: Array,
    labels: Array,
    *,
    axis: int,
    weights: Array | None,
    class_weights: Array | None,
    ignore_index: int | None,
    label_smoothing: float,
    z_loss: float,
    reduction: str,
    chunk_size: int | None,
    xp: ModuleType | None,
) -> tuple[Array, tuple[Array, Array]]:
    """:func:`sparse_softmax_cross_entropy` and the rows' ``(shift, log_sum)`` (see :func:`sparse_terms`).

    The row statistics, of the shape of ``labels`` in the accumulation dtype, let the
    analytic backward pass build the softmax without reducing the logits again.
    """
    xp, axis, z, ignore_index = checked_sparse_logits(
        logits,
        labels,
        axis=axis,
        weights=weights,
        class_weights=class_weights,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        reduction=reduction,
        chunk_size=chunk_size,
        xp=xp,
    )
    terms = sparse_terms(
        z,
        labels,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        xp=xp,
        chunk_size=chunk_size,
    )
    w = example_weights(weights, class_weights, labels, terms.counted, z.dtype, xp)
    out = reduce_losses(terms.loss, w, reduction, xp, poisoned=terms.poisoned)
    return as_result(out, logits.dtype, xp), (terms.shift, terms.log_sum)


def checked_sparse_logits(
    logits: Array,
    labels: Array,
    *,
    axis: int,
    weights: Array | None,
    class_weights: Array | None,
    ignore_index: int | None,
    label_smoothing: float,
    z_loss: float,
    reduction: str,
    chunk_size: int | None,
    xp: ModuleType | None,
) -> tuple[ModuleType, int, Array, int | None]:
    """Check the arguments of :func:`sparse_softmax_cross_entropy`.

    Returns the namespace, the class axis (non-negative), the logits with classes last
    in the accumulation dtype, and ``ignore_index`` as an int.
    """
    xp = namespace_of(
        {"logits": logits, "labels": labels, "weights": weights, "class_weights": class_weights},
        xp,
        optional=("weights", "class_weights"),
    )
    axis = check_logits(logits, axis, xp)
    ignore_index = check_sparse_options(
        logits.shape[axis], class_weights, ignore_index, label_smoothing, z_loss, reduction, chunk_size
    )
    check_labels(labels, logits.shape[:axis] + logits.shape[axis + 1 :], xp)
    z = in_compute_dtype(class_axis_last(logits, axis, xp), xp)
    return xp, axis, z, ignore_index


def dense_terms(z: Array, targets: Array, *, label_smoothing: float, xp: ModuleType) -> Array:
    """Per-example cross entropy of ``z`` and probability ``targets``, both classes-last, same dtype.

    Eager host arrays: in cache-sized blocks of rows (:func:`dense_block_terms`), one
    exponential and no logits-sized temporary; other arrays, and tensors that PyTorch
    autograd records (in-place steps): :func:`masked_dense_terms`.
    """
    if not is_eager_host(z) or torch_records_gradient((z, targets)):
        return masked_dense_terms(z, targets, label_smoothing=label_smoothing, xp=xp)
    if z.ndim < 2:
        return dense_block_terms(z, targets, label_smoothing=label_smoothing, xp=xp).loss
    chunk = rows_per_chunk(None, z, xp)
    rows = (xp.reshape(z, (-1, z.shape[-1])), xp.reshape(targets, (-1, z.shape[-1])))
    scratch = scratch_block(rows[0], chunk, xp)

    def block_loss(z_rows: Array, target_rows: Array) -> Array:
        return dense_block_terms(
            z_rows, target_rows, label_smoothing=label_smoothing, xp=xp, scratch=scratch
        ).loss

    return xp.reshape(map_row_chunks(block_loss, rows, chunk, xp), tuple(z.shape[:-1]))


class DenseTerms(NamedTuple):
    """What :func:`dense_block_terms` returns (the row axis of ``exps`` and ``total`` kept)."""

    loss: Array
    exps: Array
    total: Array
    log_sum: Array
    mass: Array


def dense_block_terms(
    z: Array, targets: Array, *, label_smoothing: float, xp: ModuleType, scratch: Array | None = None
) -> DenseTerms:
    r"""Cross entropy of rows ``z`` of an eager host array and probability ``targets``, and its parts.

    As :math:`\big(\sum_c t_c\big) \log \sum_c e^{z_c - m} - \sum_c t_c (z_c - m)`, from one
    exponential of the rows (kept in ``exps``, in ``scratch`` if given, see
    :func:`~._special.exp_sums`), with ``total`` the rows' sums of exponentials (kept
    axis), ``log_sum`` their logarithms and ``mass`` the sums of the (smoothed) targets.
    If a logit is not finite (``0 * -inf`` would be NaN), the loss comes from
    :func:`masked_dense_terms` instead: this reads values, for eager arrays only.
    """
    maxima = row_max(z, xp)
    finite = math.prod(z.shape) == 0 or (all_true(xp.isfinite(maxima), xp) and bool(xp.isfinite(xp.min(z))))
    shift = maxima if finite else xp.where(xp.isfinite(maxima), maxima, 0.0)
    shifted = difference(z, shift, xp, scratch=scratch)
    mass = xp.sum(targets, axis=-1)
    if label_smoothing:  # the targets (1 - eps) * t + eps / C, without forming them
        mass = (1.0 - label_smoothing) * mass + label_smoothing
    cross = None
    if finite:
        cross = row_dot(targets, shifted, xp)
        if label_smoothing:
            smooth = (label_smoothing / z.shape[-1]) * xp.sum(shifted, axis=-1)
            cross = (1.0 - label_smoothing) * cross + smooth
    exps = exp_of_temporary(shifted, xp)
    total = row_sum(exps, xp)
    log_sum = xp.log(total) if finite else log_of_sum(total, xp)  # finite: every total is at least 1
    if cross is None:
        loss = masked_dense_terms(z, targets, label_smoothing=label_smoothing, xp=xp)
    else:
        loss = mass * log_sum[..., 0] - cross
    return DenseTerms(loss, exps, total, log_sum, mass)


def masked_dense_terms(z: Array, targets: Array, *, label_smoothing: float, xp: ModuleType) -> Array:
    """:func:`dense_terms` by the log-probabilities, masked where a target is 0 (logits-sized temporaries)."""
    if label_smoothing:
        targets = (1.0 - label_smoothing) * targets + label_smoothing / z.shape[-1]
    shift, log_sum = shifted_log_sum(z, xp)
    log_probs = (z - shift) - log_sum
    zero = xp.asarray(0, dtype=z.dtype, device=device(z))
    # A target of 0 contributes 0, also where the log-probability is -inf (no 0 * -inf = NaN); a finite
    # log-probability is kept, so the derivative with respect to a target of 0 is still -log p.
    masked = (targets == 0) & ~xp.isfinite(log_probs)
    return -xp.sum(targets * xp.where(masked, zero, log_probs), axis=-1)


@analytic_backward
def softmax_cross_entropy(
    logits: Array,
    targets: Array,
    /,
    *,
    axis: int = -1,
    weights: Array | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "none",
    xp: ModuleType | None = None,
) -> Array:
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
    xp, _, z, t, w = checked_dense_logits(
        logits,
        targets,
        axis=axis,
        weights=weights,
        label_smoothing=label_smoothing,
        reduction=reduction,
        xp=xp,
    )
    loss = dense_terms(z, t, label_smoothing=label_smoothing, xp=xp)
    return as_result(reduce_losses(loss, w, reduction, xp), logits.dtype, xp)


def checked_dense_logits(
    logits: Array,
    targets: Array,
    *,
    axis: int,
    weights: Array | None,
    label_smoothing: float,
    reduction: str,
    xp: ModuleType | None,
) -> tuple[ModuleType, int, Array, Array, Array | None]:
    """Check the arguments of :func:`softmax_cross_entropy`.

    Returns the namespace, the class axis (non-negative), the logits and targets with
    classes last in the accumulation dtype, and the weights broadcast to one per example
    (or None).
    """
    xp = namespace_of({"logits": logits, "targets": targets, "weights": weights}, xp, optional=("weights",))
    axis = check_logits(logits, axis, xp)
    check_reduction(reduction)
    check_fraction("label_smoothing", label_smoothing)
    check_floating("targets", targets, xp)
    if tuple(targets.shape) != tuple(logits.shape):
        raise ValueError(
            f"targets has shape {tuple(targets.shape)} but logits has shape {tuple(logits.shape)}; "
            "they must match"
        )
    dtype = compute_dtype(logits.dtype, xp)
    z = xp.astype(class_axis_last(logits, axis, xp), dtype, copy=False)
    t = xp.astype(class_axis_last(targets, axis, xp), dtype, copy=False)
    shape = tuple(z.shape[:-1])
    w = None if weights is None else broadcast_weights(weights, shape, "per-example loss", dtype, xp)
    return xp, axis, z, t, w
