"""Row chunking: compute a per-row function over blocks of rows and concatenate the results.

One implementation serves two purposes:

- **speed** on eager host arrays (NumPy, array-api-strict, torch on CPU): a block of
  logits small enough to stay in the CPU cache is read from memory once, while its
  maximum, exponential sum and label logit are computed (a plain ``log_softmax``
  streams the whole array through memory several times and writes a copy of it);
- **memory**: with ``chunk_size=`` the working memory of the forward pass is a few
  ``chunk_size x C`` arrays instead of several logits-sized ones.

The rule (measured with ``python -m arrayloss bench``, see ``benchmarks/RESULTS.md``):
``chunk_size=None`` picks blocks of about :data:`BLOCK_BYTES` on eager host arrays
with more than one such block of rows, and the plain one-shot path everywhere else.
Lazy and traced arrays (JAX, Dask, ``torch.compile``) and device arrays (CUDA) get
the plain path: their compilers and kernels fuse the reduction already, and a Python
loop would only add graph nodes or kernel launches. An explicit ``chunk_size`` is
honoured on every backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType

from array_api_compat import device

from ._autodiff import torch_records_gradient
from ._validation import Array, is_eager_host

# Bytes of one block of logits on the automatic path, measured on a 2-core host (benchmarks/RESULTS.md).
# A block stays in the L3 cache through its max, exp and sum and the gradient's steps: 4 MiB beat
# 256 KiB-1 MiB (fewer calls per row) and 8 MiB, in the forward pass and in the gradient.
BLOCK_BYTES = 1 << 22


def check_chunk_size(chunk_size: int | None) -> None:
    """Raise ``TypeError``/``ValueError`` naming ``chunk_size`` unless it is ``None`` or a positive int."""
    if chunk_size is None:
        return
    if not isinstance(chunk_size, int) or isinstance(chunk_size, bool):
        raise TypeError(f"chunk_size must be an int or None, got {type(chunk_size).__name__}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of rows, got {chunk_size}")


def rows_per_chunk(chunk_size: int | None, z: Array, xp: ModuleType) -> int | None:
    """Rows per chunk for the ``[..., C]`` array ``z``, or ``None`` for the plain one-shot path.

    An explicit ``chunk_size`` is returned as is. Otherwise eager host arrays get
    blocks of about :data:`BLOCK_BYTES` when there is more than one such block,
    except tensors that PyTorch autograd records: the backward pass of every slice
    would build a zero gradient of the whole array (quadratic time and memory).
    """
    if chunk_size is not None:
        return chunk_size
    if math.prod(z.shape) <= BLOCK_BYTES // 8:  # one block even of float64: skip the checks below
        return None
    if z.ndim < 2 or not is_eager_host(z) or torch_records_gradient((z,)):
        return None
    row_bytes = z.shape[-1] * xp.finfo(z.dtype).bits // 8
    block = max(1, BLOCK_BYTES // max(1, row_bytes))
    return block if block < math.prod(z.shape[:-1]) else None


def scratch_block(rows: Array, chunk: int | None, xp: ModuleType) -> Array:
    """A writable array for one block of the 2-d ``rows``: ``chunk`` rows (all of them for None).

    Shared by every block of a call, so that a loop over blocks allocates no block-sized
    array per block (see :func:`~._special.exp_sums`).
    """
    count = rows.shape[0]
    shape = (count if chunk is None else min(chunk, count), rows.shape[-1])
    return xp.empty(shape, dtype=rows.dtype, device=device(rows))


def map_row_chunks(
    fn: Callable[..., Array], rows: tuple[Array, ...], chunk: int | None, xp: ModuleType
) -> Array:
    """``fn(*rows)`` computed ``chunk`` rows at a time and concatenated along the first axis.

    Every array of ``rows`` has the rows as its first axis and ``fn`` returns one
    value per row. With ``chunk=None`` (or a single chunk) ``fn`` is called once.
    """
    count = rows[0].shape[0]
    if chunk is None or chunk >= count:
        return fn(*rows)
    # Stops clamped to the rows: the standard leaves out-of-bounds slice stops unspecified.
    parts = [
        fn(*(a[start : min(start + chunk, count), ...] for a in rows)) for start in range(0, count, chunk)
    ]
    return xp.concat(parts, axis=0)
