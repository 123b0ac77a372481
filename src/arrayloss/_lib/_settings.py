"""Settings that choose a call's path, scoped to a ``with`` block of one thread.

Every path gives the same loss to rounding; the settings exist so that the conformance
suite can run each path and compare, and so that a benchmark can measure one:

>>> import numpy as np
>>> import arrayloss as al
>>> from arrayloss._lib._settings import settings
>>> with settings(block_bytes=64):  # blocks of two rows of 8 float32 classes
...     al.sparse_softmax_cross_entropy(np.zeros((4, 8), dtype=np.float32), np.zeros(4, dtype=np.int64))
array([2.0794415, 2.0794415, 2.0794415, 2.0794415], dtype=float32)

They live in a ``threading.local``, not a ``contextvars.ContextVar``: ``torch.compile``
traces a thread-local's attributes (and guards on them), but not ``ContextVar.get``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@dataclasses.dataclass(frozen=True)
class Settings:
    """Which path a call takes. The defaults are the measured rules (``benchmarks/RESULTS.md``)."""

    analytic_backward: bool = True
    """PyTorch autograd takes the loss's registered rule (False: it differentiates the composition)."""

    delegate_to_torch: bool = True
    """Small plain calls on PyTorch CPU tensors are handed to ``F.cross_entropy``, eager float32 and
    float64 ``ctc_loss`` calls to ``F.ctc_loss`` (see :mod:`._torch`)."""

    delegate_forward_bytes: int = 32 << 20
    """Largest logits (bytes) handed to PyTorch when autograd does not record them."""

    delegate_gradient_bytes: int = 4 << 20
    """Largest logits (bytes) handed to PyTorch when autograd records them."""

    block_bytes: int = 1 << 22
    """Bytes of one block of rows on eager host arrays: a block stays in the CPU cache through its steps."""

    linear_chunk_bytes: int = 1 << 25
    """Bytes of one chunk of logits of :func:`arrayloss.linear_cross_entropy` without ``chunk_size``."""


DEFAULT = Settings()
_scope = threading.local()


def current() -> Settings:
    """The settings of the innermost :func:`settings` block of this thread, else the defaults."""
    found: Settings = getattr(_scope, "settings", DEFAULT)
    return found


@contextmanager
def settings(**changes: Any) -> Iterator[Settings]:
    """Change some :class:`Settings` inside a ``with`` block (of this thread only); unknown names raise."""
    previous = current()
    _scope.settings = dataclasses.replace(previous, **changes)
    try:
        yield _scope.settings
    finally:
        _scope.settings = previous
