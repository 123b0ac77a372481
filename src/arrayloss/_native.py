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

Only options that PyTorch computes as arrayloss does are delegated: ``ignore_index``
and ``label_smoothing``. Not ``class_weights`` (a class of weight 0 with a logit of
``-inf`` or NaN gives PyTorch ``0 * inf = NaN``, where arrayloss drops the example; and
PyTorch weights each class of the smoothing term), per-example ``weights``, ``z_loss``
or ``chunk_size``. Logits are 2-D float32/float64 CPU tensors outside ``torch.compile``
and ``torch.func``, labels int64. The labels are checked first, so an out-of-range label
(even PyTorch's ``-100``) raises the same ``ValueError`` as on the array-API path, and a
mean over no example (all ignored) is 0, where PyTorch's is NaN. The conformance suite
runs every torch test with the delegation on and off (:data:`ENABLED`) and compares
both with the float64 reference.
"""

from __future__ import annotations

import sys
from typing import Any

from array_api_compat import array_namespace, is_torch_array

from ._autodiff import torch_records_gradient
from ._validation import REDUCTIONS, Array, check_labels_in_range, is_eager_host

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
        options["weights"] is None
        and options["class_weights"] is None
        and not options["z_loss"]
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
    limit = GRADIENT_BYTES if torch_records_gradient((logits,)) else FORWARD_BYTES
    return logits.numel() * logits.element_size() <= limit and is_eager_host(logits)


def _int64_or_none(ignore_index: Any) -> bool:
    """Whether ``ignore_index`` is None or an int that PyTorch takes as one (not a bool)."""
    if ignore_index is None:
        return True
    return type(ignore_index) is int and -(2**63) <= ignore_index < 2**63


def torch_cross_entropy(logits: Array, labels: Array, options: dict[str, Any]) -> Array:
    """``F.cross_entropy`` for a call that :func:`torch_delegates`, after checking the labels' range.

    Labels equal to ``ignore_index`` are left out of the check and of the mean, which is
    0 when every example is ignored (PyTorch divides 0 by 0 there).
    """
    torch = sys.modules["torch"]
    num_classes = logits.shape[1]
    ignore_index, reduction = options["ignore_index"], options["reduction"]
    counted = None if ignore_index is None else labels != ignore_index
    extremes = torch.aminmax(labels if counted is None else torch.where(counted, labels, 0))
    if extremes.min.item() < 0 or extremes.max.item() >= num_classes:
        # Raises, naming a bad label.
        check_labels_in_range(labels, num_classes, counted, array_namespace(labels))
    loss = torch.nn.functional.cross_entropy(
        logits,
        labels,
        ignore_index=-100 if ignore_index is None else ignore_index,  # -100 itself fails the check
        label_smoothing=options["label_smoothing"],
        reduction="sum" if counted is not None and reduction == "mean" else reduction,
    )
    if counted is None or reduction != "mean":
        return loss
    count = int(counted.sum())
    return loss / count if count else loss  # all ignored: the sum is 0, kept in the autograd graph
