"""Blocks of rows: compute a per-row function over blocks of rows of a ``[..., C]`` array.

One implementation serves two purposes:

- **speed** on eager host arrays (NumPy, array-api-strict, torch on CPU): a block of
  logits small enough to stay in the CPU cache is read from memory once, while its
  maximum, exponential sum and label logit are computed (a plain ``log_softmax``
  streams the whole array through memory several times and writes a copy of it);
- **memory**: with ``chunk_size=`` (rows per block) the working memory of a loss is a
  few ``chunk_size x C`` arrays instead of several logits-sized ones.

The rule: ``chunk_size=None`` picks blocks of about ``block_bytes``
(:mod:`._settings`) on eager host arrays with more than one such block of rows, and
the plain one-shot path everywhere else. Lazy and traced arrays (JAX, Dask,
``torch.compile``) and device arrays (CUDA) get the plain path: their compilers and
kernels fuse the reduction already, and a Python loop would only add graph nodes or
kernel launches. An explicit ``chunk_size`` is honoured on every backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ._ops import Ops, block_bounds
from ._settings import current
from ._validation import Array, compute_dtype, in_compute_dtype, size_of


def rows_per_block(
    chunk_size: int | None, z: Array, ops: Ops, *, block_bytes: int | None = None
) -> int | None:
    """Rows per block for the ``[..., C]`` array ``z``, or ``None`` for the plain one-shot path.

    An explicit ``chunk_size`` is returned as is, where the number of rows is known (a
    loop over blocks needs it; an unknown dimension gives the one-shot path). Otherwise
    eager host arrays get
    blocks of about ``block_bytes`` when there is more than one such block, except
    tensors that autograd records: the backward pass of every slice would build a zero
    gradient of the whole array (quadratic time and memory). ``block_bytes`` replaces the
    setting of that name (elementwise losses: ``Ops.elementwise_block_bytes``).
    """
    size = size_of(tuple(z.shape))
    if chunk_size is not None or size is None:
        return None if size is None else chunk_size
    block_bytes = current().block_bytes if block_bytes is None else block_bytes
    if size <= block_bytes // 8:  # one block even of float64: skip the checks below
        return None
    if z.ndim < 2 or not ops.is_eager(z) or ops.records_gradient((z,)):
        return None
    row_bytes = z.shape[-1] * ops.xp.finfo(compute_dtype(z.dtype, ops.xp)).bits // 8  # a block computed
    block = max(1, block_bytes // max(1, row_bytes))
    return block if block < math.prod(z.shape[:-1]) else None


def scratch_block(rows: Array, block: int | None, ops: Ops) -> Array:
    """A writable array for one block of the 2-d ``rows``, ``block`` rows (all of them for None), in
    their accumulation dtype.

    Shared by every block of a call, so that a loop over blocks allocates no block-sized
    array per block (see :func:`~._softmax.exp_sums`).
    """
    count = rows.shape[0]
    shape = (count if block is None else min(block, count), rows.shape[-1])
    return ops.xp.empty(shape, dtype=compute_dtype(rows.dtype, ops.xp), device=ops.device(rows))


def map_row_blocks(fn: Callable[..., Array], rows: tuple[Array, ...], block: int | None, ops: Ops) -> Array:
    """``fn(*rows)`` computed ``block`` rows at a time and concatenated along the first axis.

    Every array of ``rows`` has the rows as its first axis and ``fn`` returns one
    value per row. With ``block=None`` (or a single block) ``fn`` is called once. The
    loop is :meth:`~._ops.Ops.scan_row_blocks`.
    """
    return ops.scan_row_blocks(lambda carry, *blocks: (carry, (fn(*blocks),)), None, rows, block)[1][0]


def in_row_blocks(
    row_gradient: Callable[..., tuple[Array, ...]],
    z: Array,
    per_row: tuple[Array, ...],
    ops: Ops,
    *,
    chunk_size: int | None = None,
    scratch: bool = False,
    block_bytes: int | None = None,
) -> tuple[Array, ...]:
    """``row_gradient(z, *per_row)``, computed in blocks of rows on eager host arrays.

    ``row_gradient`` maps rows of ``z`` (classes last, given in the accumulation dtype of
    ``z``, block by block: half precision is converted one cached block at a time) and of
    the ``per_row`` arrays
    (the leading shape of ``z``, maybe with trailing axes of their own) to a tuple:
    gradient rows of ``z``'s shape in the accumulation dtype, then any number of arrays of
    one value per row (such as the rows' losses), which are concatenated. The gradient
    comes back in ``z``'s own dtype when computed in blocks, else in the accumulation
    dtype. The blocks follow :func:`rows_per_block` (``chunk_size`` if given): a block stays in the CPU cache
    through the several elementwise steps of the gradient, and each finished block is
    written into the gradient, so that no other logits-sized array is ever alive
    (eager host arrays are writable). Other arrays get one call. With ``scratch``,
    blocks of eager host arrays are passed a writable ``scratch=`` array of the block's
    size, which ``row_gradient`` may overwrite and return its gradient rows in (see
    :func:`~._softmax.exp_sums`): the block's own rows of the gradient where slices are
    views (``Ops.views``), one shared array elsewhere.
    """
    block = rows_per_block(chunk_size, z, ops, block_bytes=block_bytes)
    xp = ops.xp
    if block is None:
        return row_gradient(in_compute_dtype(z, xp), *per_row)
    lead = tuple(z.shape[:-1])
    rows = tuple(xp.reshape(a, (-1, *a.shape[len(lead) :])) for a in (z, *per_row))
    count = rows[0].shape[0]
    grad = xp.empty(rows[0].shape, dtype=z.dtype, device=ops.device(z))
    # A block computed in the gradient's own rows (one copy fewer), unless they hold half precision.
    in_place = scratch and ops.views and grad.dtype == compute_dtype(grad.dtype, xp)
    shared = None
    if scratch and ops.is_eager(z) and not in_place:
        shared = scratch_block(rows[0], block, ops)
    values: list[list[Array]] = []
    for start, stop in block_bounds(count, block):
        target = grad[start:stop, ...] if in_place else shared
        work = {} if target is None else {"scratch": target}
        z_rows, *rest = (a[start:stop, ...] for a in rows)
        grad_rows, *row_values = row_gradient(in_compute_dtype(z_rows, xp), *rest, **work)
        if not (in_place and grad_rows is target):  # not already written in place
            grad[start:stop, ...] = grad_rows
        values.append(row_values)
    per_value = (xp.reshape(xp.concat(parts, axis=0), lead) for parts in zip(*values, strict=True))
    return (xp.reshape(grad, tuple(z.shape)), *per_value)
