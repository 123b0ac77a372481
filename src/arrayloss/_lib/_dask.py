"""Dask's steps of the backend seam, chosen once a Dask namespace is seen (so dask is loaded).

Dask splits an array into blocks (its *chunks*) and runs one task per block. The losses keep
every task within the blocks of their inputs:

- **Class indices** (``arange(C)``, compared with the labels to pick a label's logit or to build
  the one-hot targets of the gradient) are blocked like the logits' class axis: the standard
  ``arange`` is one block, and its comparison with a block of rows would be a ``rows x C`` task
  per block of rows, whatever the logits' blocks (hundreds of MB spilled to disk on a cluster).
- **Loops over chunks of rows** (``linear_cross_entropy``) are left to Dask: its row blocks are
  the chunks, one call builds one graph over them, where a Python loop over slices that cut
  across the blocks would multiply the tasks.
- **Gradients** come back in the blocks of their inputs (``value_and_grad``).
- **Row maxima** (the shift of every log-sum-exp) are taken block by block with a chunk function
  that keeps the shape of an empty block: Dask's own ``max`` returns a block of the wrong shape for
  a block without elements, which its aggregation then cannot reduce (``zero-size array to
  reduction operation maximum``), so that a block of rows emptied by boolean indexing, or a
  chunking such as ``((3, 0, 5), ...)``, failed at ``compute()``.
"""

from __future__ import annotations

import math
import sys
from typing import Any

from ._compat import Array
from ._ops import Ops


class DaskOps(Ops):
    """Dask: class indices blocked like the logits, no loop over chunks of rows, gradients in the
    blocks of their inputs."""

    def class_indices(self, z: Array, dtype: Any) -> Array:
        classes = z.chunks[-1]
        if any(math.isnan(size) for size in classes):  # unknown blocks: the standard one-block range
            return super().class_indices(z, dtype)
        return sys.modules["dask.array"].arange(z.shape[-1], chunks=(classes,), dtype=dtype)

    def row_max(self, x: Array) -> Array:
        da = sys.modules["dask.array"]
        return da.reduction(
            x, _block_max, _block_max, axis=-1, keepdims=True, dtype=x.dtype, combine=_block_max, meta=x._meta
        )

    def has_blocks(self, x: Array) -> bool:
        return True

    def in_blocks_of(self, x: Array, like: Array) -> Array:
        unknown = any(math.isnan(size) for a in (x, like) for sizes in a.chunks for size in sizes)
        return x if unknown or x.chunks == like.chunks else x.rechunk(like.chunks)


def _block_max(block: Array, axis: tuple[int, ...], keepdims: bool) -> Array:
    """The maximum of one block over its last axis (``axis``), kept, for any block: of an empty block of
    rows an empty column, of a block without classes ``-inf`` (the identity of the maximum)."""
    # NumPy's functions dispatch to the block's library (__array_function__), as Dask's chunk functions do.
    np = sys.modules["numpy"]
    if block.shape[-1] == 0:
        return np.full_like(block, -math.inf, shape=(*block.shape[:-1], 1))
    return np.max(block, axis=axis, keepdims=True)
