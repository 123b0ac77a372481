"""Integer labels and example weights: checked once at a loss's entry, then combined for the math."""

from __future__ import annotations

from typing import NamedTuple

from ._ops import Ops
from ._validation import (
    Array,
    broadcast_like,
    check_broadcastable,
    check_labels_in_range,
    check_real,
    check_weights_valid,
    reshape_target,
    size_of,
)


class Labels(NamedTuple):
    """Checked integer labels.

    ``safe`` has out-of-range labels replaced by 0 (every gather accepts it); ``counted``
    marks the examples not equal to ``ignore_index`` (None without one); ``poisoned``
    marks counted labels out of range on arrays whose values are not read (None when
    they were checked), whose loss is NaN.
    """

    safe: Array
    counted: Array | None
    poisoned: Array | None


def checked_labels(
    labels: Array, num_classes: int | None, ignore_index: int | None, ops: Ops, name: str = "labels"
) -> Labels:
    """Check integer ``labels`` against ``num_classes`` (values: eager arrays; errors call them ``name``).

    ``num_classes=None``: a number of classes not known here (the classes of a vocabulary sharded
    over ranks, :mod:`arrayloss.distributed`), labels are checked to be non-negative only.
    """
    xp = ops.xp
    counted = None
    if ignore_index is not None:
        info = xp.iinfo(labels.dtype)
        # An ignore_index the labels' dtype cannot hold (-100 for uint8) matches no label.
        counted = labels != ignore_index if info.min <= ignore_index <= info.max else None
    poisoned = None
    eager = ops.is_eager(labels)
    if eager and counted is None and num_classes is not None:
        if not ops.all_in_range(labels, num_classes):
            check_labels_in_range(labels, num_classes, counted, xp, name)  # raises, naming a bad label
        return Labels(labels, counted, poisoned)  # every label is in range
    in_range = labels >= 0 if num_classes is None else (labels >= 0) & (labels < num_classes)
    if eager:
        accepted = in_range if counted is None else in_range | ~counted
        if not ops.all_true(accepted):
            check_labels_in_range(labels, num_classes, counted, xp, name)  # raises, naming a bad label
    else:
        poisoned = ~in_range if counted is None else ~in_range & counted
    return Labels(xp.where(in_range, labels, xp.zeros_like(labels)), counted, poisoned)


def label_indices(labels: Array, ops: Ops) -> Array:
    """Integer ``labels`` in their device's indexing dtype, which every gather accepts (torch: not int8)."""
    xp = ops.xp
    if labels.dtype == xp.int64:  # the indexing dtype of 64-bit platforms, without asking
        return labels
    index_dtype = xp.__array_namespace_info__().default_dtypes(device=ops.device(labels))["indexing"]
    return xp.astype(labels, index_dtype, copy=False)


def check_weights(name: str, weights: Array, shape: tuple[int, ...], target: str, ops: Ops) -> None:
    """Check ``weights`` of examples: real, broadcastable to ``shape`` (of ``target``), and on eager
    arrays non-negative and not NaN."""
    check_real(name, weights, ops.xp)
    check_broadcastable(name, weights, shape, target)
    if ops.is_eager(weights):
        check_weights_valid(name, weights, ops.xp)


def check_class_weights(class_weights: Array, num_classes: int, ops: Ops) -> None:
    """Check ``class_weights``: one real weight per class, on eager arrays non-negative and not NaN."""
    if tuple(class_weights.shape) != (num_classes,):
        raise ValueError(
            f"class_weights must have shape ({num_classes},), one weight per class, "
            f"got {tuple(class_weights.shape)}"
        )
    check_real("class_weights", class_weights, ops.xp)
    if ops.is_eager(class_weights):
        check_weights_valid("class_weights", class_weights, ops.xp)


def example_weights(
    weights: Array | None, class_weights: Array | None, labels: Labels, dtype: object, ops: Ops
) -> Array | None:
    """The weight of each example: per-example ``weights``, its label's ``class_weights``, 0 if ignored.

    None when every example has weight 1. The arrays were checked
    (:func:`check_weights`, :func:`check_class_weights`).
    """
    xp = ops.xp
    shape = tuple(labels.safe.shape)
    combined = None
    if weights is not None:
        combined = broadcast_like(xp.astype(weights, dtype), labels.safe, xp)
    if class_weights is not None:
        if size_of(shape) == 0:  # no labels: Dask cannot flatten some empty shapes, e.g. (2, 0, 2)
            picked = xp.zeros(shape, dtype=dtype, device=ops.device(labels.safe))
        else:
            flat = xp.reshape(label_indices(labels.safe, ops), (-1,))
            picked = xp.take(xp.astype(class_weights, dtype), flat, axis=0)
            picked = xp.reshape(picked, reshape_target(shape))
        combined = picked if combined is None else combined * picked
    if labels.counted is not None:
        if combined is None:
            combined = xp.astype(labels.counted, dtype)
        else:
            combined = xp.where(labels.counted, combined, xp.zeros_like(combined))
    return combined
