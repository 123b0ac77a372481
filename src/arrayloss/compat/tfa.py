"""TensorFlow Addons' names and conventions, for porting ``tfa.seq2seq`` code.

>>> import numpy as np
>>> from arrayloss.compat import tfa
>>> tfa.sequence_loss(np.zeros((1, 2, 4)), np.zeros((1, 2), dtype=np.int64), np.ones((1, 2)))
array(1.38629436)
"""

from __future__ import annotations

from .._lib._validation import Array
from .._sequence import LossFunction
from .._sequence import sequence_loss as _sequence_loss

__all__ = ["sequence_loss"]


def sequence_loss(
    logits: Array,
    targets: Array,
    weights: Array,
    average_across_timesteps: bool = True,
    average_across_batch: bool = True,
    sum_over_timesteps: bool = False,
    sum_over_batch: bool = False,
    softmax_loss_function: LossFunction | None = None,
    name: str | None = None,
) -> Array:
    """``tfa.seq2seq.sequence_loss``, with its positional flags; ``name`` (a TensorFlow name scope) is
    accepted and unused. See :func:`arrayloss.sequence_loss` (the same loss, options keyword-only)."""
    return _sequence_loss(
        logits,
        targets,
        weights,
        average_across_timesteps=average_across_timesteps,
        average_across_batch=average_across_batch,
        sum_over_timesteps=sum_over_timesteps,
        sum_over_batch=sum_over_batch,
        softmax_loss_function=softmax_loss_function,
    )
