"""TensorFlow's names and keyword conventions, for porting TensorFlow code.

>>> import numpy as np
>>> from arrayloss.compat import tf
>>> tf.sparse_softmax_cross_entropy_with_logits(
...     labels=np.asarray([0]), logits=np.asarray([[1.5, 1.5, 1.5]]))
array([1.09861229])
"""

from __future__ import annotations

from collections.abc import Sequence

from .._lib._validation import Array, ops_of
from .._sequence import LossFunction
from .._sequence import sequence_loss_by_example as _by_example
from .._sparse import sparse_softmax_cross_entropy

__all__ = ["sequence_loss", "sequence_loss_by_example", "sparse_softmax_cross_entropy_with_logits"]


def sparse_softmax_cross_entropy_with_logits(
    *, labels: Array, logits: Array, name: str | None = None
) -> Array:
    """``tf.nn.sparse_softmax_cross_entropy_with_logits``: per-example loss over the last axis.

    Labels outside ``[0, C)`` raise on eager host arrays, as TensorFlow does on CPU. ``name`` (a
    TensorFlow name scope) is accepted and unused, here and in this module's other functions.
    """
    return sparse_softmax_cross_entropy(logits, labels)


def sequence_loss_by_example(
    logits: Sequence[Array] | Array,
    targets: Sequence[Array] | Array,
    weights: Sequence[Array] | Array,
    average_across_timesteps: bool = True,
    softmax_loss_function: LossFunction | None = None,
    name: str | None = None,
) -> Array:
    """``tf.contrib.legacy_seq2seq.sequence_loss_by_example``: one loss per sequence, ``[batch]``."""
    return _by_example(
        logits,
        targets,
        weights,
        average_across_timesteps=average_across_timesteps,
        softmax_loss_function=softmax_loss_function,
    )


def sequence_loss(
    logits: Sequence[Array] | Array,
    targets: Sequence[Array] | Array,
    weights: Sequence[Array] | Array,
    average_across_timesteps: bool = True,
    average_across_batch: bool = True,
    softmax_loss_function: LossFunction | None = None,
    name: str | None = None,
) -> Array:
    """``tf.contrib.legacy_seq2seq.sequence_loss``: the per-sequence losses summed, divided by the batch size.

    Without ``average_across_batch`` the sum is returned undivided.
    """
    per_example = sequence_loss_by_example(
        logits, targets, weights, average_across_timesteps, softmax_loss_function
    )
    ops = ops_of({"loss": per_example}, None)
    xp = ops.xp
    cost = xp.sum(per_example)
    if average_across_batch:
        cost = cost / per_example.shape[0]
    return ops.as_result(cost, per_example.dtype)
