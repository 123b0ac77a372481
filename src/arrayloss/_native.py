"""Thin delegation to PyTorch's own cross entropy, for the inputs where it is measured to be faster.

``torch.nn.functional.cross_entropy`` is one C++ call with a fused per-row kernel.
The array-API path is about 25 calls: for small logits their overhead dominates
(8x16: 130 us against 4 us), and up to some tens of MiB PyTorch's kernel, which
reads each row once from the L1 cache, also beats the cache-blocked passes. Above
that, its logits-sized outputs are fresh allocations, each page of which the
kernel has to fault in and zero, and the array-API path is faster
(``benchmarks/RESULTS.md``: 1.8x at 4096x4000 and beyond). The rule, measured
with ``benchmarks/crossover.py`` on a 2-core host:

- without gradients, logits of at most :data:`FORWARD_BYTES` go to PyTorch;
- when autograd records the logits, at most :data:`GRADIENT_BYTES` (PyTorch's
  backward allocates two more logits-sized arrays; the fused one-pass gradient
  wins from 16 MiB on).

Only options that PyTorch computes as arrayloss does are delegated: ``ignore_index``,
``label_smoothing``, ``class_weights`` of the logits' dtype without smoothing (PyTorch
weights each class of the smoothing term), and per-example ``weights`` (one per example
or one for all), which multiply PyTorch's per-example losses; not ``z_loss`` or
``chunk_size``. Logits are 2-D float32/float64 CPU tensors outside ``torch.compile``
and ``torch.func``, labels int64. The labels and weights are checked first, so an
out-of-range label (even PyTorch's ``-100``) or a negative weight raises the same
``ValueError`` as on the array-API path. Examples of weight 0 (their class's or their
own) are handed over as ignored, as arrayloss drops them (PyTorch would compute ``0 * inf
= NaN`` for a logit of ``-inf``), and a mean over no weight is 0, where PyTorch's is NaN.
The conformance suite runs every torch test with the delegation on and off
(:data:`ENABLED`) and compares both with the float64 reference.
"""

from __future__ import annotations

import sys
from typing import Any

from array_api_compat import array_namespace, is_torch_array

from ._autodiff import torch_records_gradient
from ._validation import REDUCTIONS, Array, check_labels_in_range, check_weights_valid, is_eager_host

ENABLED = True
"""Delegate to PyTorch where the rule above says so (False: always the array-API path)."""

FORWARD_BYTES = 32 << 20
"""Largest logits (bytes) delegated when autograd does not record them."""

GRADIENT_BYTES = 4 << 20
"""Largest logits (bytes) delegated when autograd records them."""


def torch_delegates(logits: Array, labels: Array, options: dict[str, Any]) -> bool:
    """Whether :func:`torch_cross_entropy` computes this call of the sparse cross entropy.

    ``options`` are the keywords of :func:`arrayloss.sparse_softmax_cross_entropy`.
    """
    if not (ENABLED and is_torch_array(logits) and is_torch_array(labels)):
        return False
    torch = sys.modules["torch"]
    plain = (
        not options["z_loss"]
        and options["chunk_size"] is None
        and options["xp"] is None
        and _int64_or_none(options["ignore_index"])
    )
    axis = options["axis"]
    valid = options["reduction"] in REDUCTIONS and 0.0 <= options["label_smoothing"] <= 1.0
    valid = valid and axis in (1, -1) and not isinstance(axis, bool)
    if not (plain and valid) or logits.ndim != 2 or labels.ndim != 1:
        return False  # bad options and shapes get the array-API path's errors
    if logits.dtype not in (torch.float32, torch.float64) or labels.dtype != torch.int64:
        return False
    if labels.shape[0] != logits.shape[0] or labels.shape[0] == 0 or logits.shape[1] == 0:
        return False  # an empty batch: the array-API path's mean of 0, not PyTorch's NaN
    if labels.device != logits.device:
        return False
    class_weights = options["class_weights"]
    if class_weights is not None:
        alike = is_torch_array(class_weights) and class_weights.dtype == logits.dtype
        alike = alike and tuple(class_weights.shape) == (logits.shape[1],)
        if not alike or class_weights.device != logits.device or options["label_smoothing"]:
            return False
    weights = options["weights"]
    if weights is not None:
        alike = is_torch_array(weights) and not weights.is_complex() and weights.device == logits.device
        if not alike or tuple(weights.shape) not in ((), (1,), tuple(labels.shape)):
            return False
    limit = GRADIENT_BYTES if torch_records_gradient((logits,)) else FORWARD_BYTES
    return logits.numel() * logits.element_size() <= limit and is_eager_host(logits)


def _int64_or_none(ignore_index: Any) -> bool:
    """Whether ``ignore_index`` is None or an int that PyTorch takes as one (not a bool)."""
    if ignore_index is None:
        return True
    return type(ignore_index) is int and -(2**63) <= ignore_index < 2**63


def torch_cross_entropy(logits: Array, labels: Array, options: dict[str, Any]) -> Array:
    """``F.cross_entropy`` for a call that :func:`torch_delegates`, after arrayloss's value checks.

    Labels equal to ``ignore_index`` are left out of the range check. Examples that are
    ignored or of weight 0 (their class's, or their own) are handed to PyTorch as ignored;
    per-example weights multiply PyTorch's losses of each example, and a mean is their sum
    over the summed weights, 0 where they sum to 0 (PyTorch: 0 / 0).
    """
    torch = sys.modules["torch"]
    num_classes = logits.shape[1]
    ignore_index, class_weights, given = options["ignore_index"], options["class_weights"], options["weights"]
    counted = None if ignore_index is None else labels != ignore_index
    safe_labels = labels if counted is None else torch.where(counted, labels, 0)
    extremes = torch.aminmax(safe_labels)
    if extremes.min.item() < 0 or extremes.max.item() >= num_classes:
        # Raises, naming a bad label.
        check_labels_in_range(labels, num_classes, counted, array_namespace(labels))
    weights = None  # of each example, where not all are 1
    if class_weights is not None:
        check_weights_valid("class_weights", class_weights, array_namespace(class_weights))
        weights = class_weights[safe_labels]
    if given is not None:
        check_weights_valid("weights", given, array_namespace(given))
        given = given.to(logits.dtype).expand(labels.shape)
        weights = given if weights is None else weights * given
    if weights is not None:
        kept = weights != 0
        counted = kept if counted is None else counted & kept
    skip = -100 if ignore_index is None else ignore_index  # -100 is no counted label: it fails the check
    reduction = options["reduction"]
    weighted_mean = reduction == "mean" and counted is not None
    loss = torch.nn.functional.cross_entropy(
        logits,
        labels if weights is None else torch.where(counted, labels, skip),
        weight=class_weights,
        ignore_index=skip,
        label_smoothing=options["label_smoothing"],
        reduction="none" if given is not None else "sum" if weighted_mean else reduction,
    )
    if given is not None:
        loss = loss * given
        if reduction == "none":
            return loss
        loss = loss.sum()
    if not weighted_mean or counted is None:
        return loss
    total = counted.sum() if weights is None else torch.where(counted, weights, 0).sum()
    return loss / total if total.item() else loss  # no weight: the sum is 0, kept in the autograd graph
