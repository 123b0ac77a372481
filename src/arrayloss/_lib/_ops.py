"""The backend seam: the few steps that a backend can do faster than the standard calls.

The losses call the standard through ``ops.xp`` and, for the steps below, through the
:class:`Ops` of their namespace (:func:`._backends.ops_for`). :class:`Ops` writes each step with
standard calls only; a subclass for one family of backends overrides a step where it is
measured to be faster (``benchmarks/RESULTS.md``) and gives the same numbers, which
``conformance/test_integrity.py`` checks against array-api-strict (the standard calls,
computed by NumPy). The subclasses: :class:`NumpyOps` here, ``TorchOps`` in
:mod:`._torch`, ``JaxOps`` in :mod:`._jax`, ``DaskOps`` in :mod:`._dask`; :func:`._backends.ops_for`
picks one for a namespace.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from ._compat import Array, device
from ._settings import current

# A loss's passes (arrayloss._autodiff.Rule): forward -> (value, residuals), backward -> gradients.
Forward = Callable[..., tuple[Array, tuple[Array, ...]]]
Backward = Callable[..., tuple[Array | None, ...]]


def block_bounds(count: int, block: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of consecutive blocks of ``block`` rows out of ``count``.

    Stops are clamped to the rows: the standard leaves out-of-bounds slice stops unspecified.
    """
    return [(start, min(start + block, count)) for start in range(0, count, block)]


class Ops:
    """The standard calls, for every namespace."""

    @property
    def views(self) -> bool:
        """Whether slices are views that writes go through, and integer-array assignment writes in place."""
        return False

    @property
    def elementwise_block_bytes(self) -> int:
        """Bytes of a block of an elementwise loss on eager host arrays: each of its steps allocates
        a temporary of that size."""
        return current().block_bytes // 4

    def __init__(self, xp: ModuleType) -> None:
        self.xp = xp

    def is_eager(self, x: Array) -> bool:
        """Whether the values of ``x`` can be read without a device sync or breaking a trace.

        True for eager host arrays (NumPy, array-api-strict, torch CPU tensors outside
        ``torch.compile`` and ``torch.func``); False for device, lazy and traced arrays.
        """
        return type(x).__module__.startswith("array_api_strict")

    def records_gradient(self, values: Iterable[Any]) -> bool:
        """Whether the library's autograd records operations on one of ``values`` (lists searched too)."""
        return False

    def differentiates(self, x: Array) -> bool:
        """Whether the library's autodiff may differentiate the operations on ``x``: records them
        (PyTorch), or traces them, where it cannot tell whether a gradient will be taken (JAX)."""
        return self.records_gradient((x,))

    def takes_analytic_backward(self, rule: Any, call: Any) -> bool:
        """Whether the library's autodiff should take ``rule`` (a loss's
        :class:`~arrayloss._autodiff.Rule`) for the checked ``call``."""
        return False

    def value_with_backward(self, rule: Any, call: Any) -> Array:
        """The value of ``call``, which the library's autodiff differentiates with ``rule``.

        Called where :meth:`takes_analytic_backward` is true; ``rule.passes(call)`` gives its
        forward, backward and fused passes (see :class:`arrayloss._autodiff.Rule`).
        """
        raise NotImplementedError(f"{type(self).__name__} has no autodiff hook")

    def scan_row_blocks(
        self,
        fn: Callable[..., tuple[Any, tuple[Array, ...]]],
        carry: Any,
        rows: tuple[Array, ...],
        block: int | None,
        *,
        reverse: bool = False,
    ) -> tuple[Any, tuple[Array, ...]]:
        """``fn(carry, *blocks) -> (carry, outputs)`` over consecutive blocks of ``block`` rows.

        ``rows`` are arrays with the same rows along their first axis; ``outputs`` is a tuple
        of arrays with one row per row of the blocks. Returns the last carry and each output
        concatenated over the blocks, in the order of the rows. ``block=None`` (or at least
        all rows): one call. ``reverse``: the last block first (a recursion backwards in
        time), without reversing any array. The standard: a Python loop, whose block's
        temporaries are released after each block on eager arrays; ``JaxOps`` loops with
        ``lax.scan`` under a trace, where a Python loop is unrolled and XLA may keep every
        block's temporaries.
        """
        count = rows[0].shape[0]
        if block is None or block >= count:
            return fn(carry, *rows)
        parts = []
        bounds = block_bounds(count, block)
        for start, stop in reversed(bounds) if reverse else bounds:
            carry, outputs = fn(carry, *(a[start:stop, ...] for a in rows))
            parts.append(outputs)
        if reverse:
            parts.reverse()
        return carry, tuple(self.xp.concat(list(part), axis=0) for part in zip(*parts, strict=True))

    def native_cross_entropy(self, logits: Array, call: Any) -> Array | None:
        """The library's own sparse cross entropy of a validated call, where it is measured to be
        faster and computes what arrayloss does; None (the array-API path) otherwise."""
        return None

    def native_ctc_loss(self, call: Any, reduce: Callable[[Array], Array]) -> Array | None:
        """The library's own CTC loss of a validated call (``arrayloss._ctc.CTCCall``), reduced as
        the call asks (by the library, or per-sequence losses by ``reduce``, arrayloss's own
        reduction), where it is measured to be faster and computes what arrayloss does; None (the
        array-API path) otherwise."""
        return None

    def constant(self, x: Array) -> Array:
        """``x``, as a constant for the library's autodiff (its gradient is not taken).

        For values whose gradient cancels, such as the shift of a log-sum-exp: autodiff
        through a row maximum costs a pass over the rows for a zero contribution.
        """
        return x

    def logaddexp(self, a: Array, b: Array) -> Array:
        """``log(exp(a) + exp(b))`` without overflow or underflow: ``max + log1p(exp(min - max))``, and
        ``-inf`` where both are (the standard does not require the library's ``logaddexp`` to be
        stable, and ndonnx's underflows below -104 in float32)."""
        xp = self.xp
        larger, smaller = xp.maximum(a, b), xp.minimum(a, b)
        finite = larger > -math.inf
        gap = smaller - xp.where(finite, larger, xp.zeros_like(larger))  # never -inf - -inf
        return xp.where(finite, larger + xp.log1p(xp.exp(gap)), larger)

    def row_max(self, x: Array) -> Array:
        """``max(x)`` over the last axis, kept."""
        return self.xp.max(x, axis=-1, keepdims=True)

    def row_sum(self, x: Array) -> Array:
        """``sum(x)`` over the last axis, kept."""
        return self.xp.sum(x, axis=-1, keepdims=True)

    def total_sum(self, x: Array) -> Array:
        """``sum(x)`` over all axes."""
        return self.xp.sum(x)

    def all_true(self, x: Array) -> bool:
        """Whether every element of the boolean ``x`` is true (eager arrays only: reads a value)."""
        return bool(self.xp.all(x))

    def all_in_range(self, labels: Array, stop: int, *, start: int = 0) -> bool:
        """Whether every integer of ``labels`` lies in ``[start, stop)`` (eager arrays only: reads values)."""
        return self.all_true((labels >= start) & (labels < stop))

    def device(self, x: Array) -> Any:
        """The device of ``x``; None for a traced array, which has none until it runs."""
        return device(x)

    def row_dot(self, x: Array, y: Array) -> Array:
        """``sum(x * y)`` over the last axis."""
        return self.xp.sum(x * y, axis=-1)

    def exp_of_temporary(self, x: Array) -> Array:
        """``exp(x)`` for an ``x`` that the caller owns and no longer needs."""
        return self.xp.exp(x)

    def subtract_into(self, out: Array, x: Array, y: Array) -> Array:
        """``x - y`` written into the writable ``out`` (of the broadcast shape), returned."""
        out[...] = x
        out -= y
        return out

    def pick(self, z: Array, index: Array) -> Array:
        """``z[..., index]`` along the last axis, for an ``index`` in range of the gather's dtype."""
        xp = self.xp
        if hasattr(xp, "take_along_axis"):
            return xp.take_along_axis(z, index[..., None], axis=-1)[..., 0]
        # Namespaces without a gather (Dask): select with a comparison, never multiply by a one-hot
        # (0 * -inf would be NaN).
        classes = self.class_indices(z, index.dtype)
        zero = xp.asarray(0, dtype=z.dtype, device=self.device(z))
        return xp.sum(xp.where(classes == index[..., None], z, zero), axis=-1)

    def class_indices(self, z: Array, dtype: Any) -> Array:
        """``arange(C)`` in ``dtype`` for the last axis (the classes, ``C``) of ``z``, to compare with
        labels (``classes == labels[..., None]``) and select from ``z``'s rows.

        Blocked like ``z``'s class axis where the library splits arrays into blocks (``DaskOps``):
        no block of the comparison then spans more classes than a block of ``z``.
        """
        return self.xp.arange(z.shape[-1], dtype=dtype, device=self.device(z))

    def has_blocks(self, x: Array) -> bool:
        """Whether the library splits ``x`` into blocks that it runs as separate tasks (Dask).

        Its blocks then bound each task's memory, and a loop over chunks of rows
        (``linear_cross_entropy``) would only add tasks: one call serves.
        """
        return False

    def in_blocks_of(self, x: Array, like: Array) -> Array:
        """``x``, of the shape of ``like``, in ``like``'s blocks where the library splits arrays into
        blocks (Dask): a gradient keeps the blocks of its input, whatever those of the other inputs
        (labels in other blocks of rows would split it finer). The standard: ``x`` itself."""
        return x

    def as_result(self, out: Array, dtype: object) -> Array:
        """``out`` in the result ``dtype``."""
        return out if out.dtype == dtype else self.xp.astype(out, dtype)


class NumpyOps(Ops):
    """NumPy: reductions by the ufuncs (``np.max``'s Python wrapper costs as much again on small
    arrays), ``out=`` where a step would allocate a block, integer-array indexing for gathers."""

    @property
    def views(self) -> bool:
        return True

    @property
    def elementwise_block_bytes(self) -> int:
        # Temporaries above glibc's mmap threshold (128 KiB) are mapped and unmapped at every step,
        # which faults their pages in again: 2-3x the time of the steps (benchmarks/RESULTS.md).
        return min(current().block_bytes, 1 << 16)

    def is_eager(self, x: Array) -> bool:
        return True

    def logaddexp(self, a: Array, b: Array) -> Array:
        return self.xp.logaddexp(a, b)  # NumPy's ufunc is stable: one call

    def row_max(self, x: Array) -> Array:
        return sys.modules["numpy"].maximum.reduce(x, axis=-1, keepdims=True)

    def row_sum(self, x: Array) -> Array:
        return sys.modules["numpy"].add.reduce(x, axis=-1, keepdims=True)

    def total_sum(self, x: Array) -> Array:
        return sys.modules["numpy"].add.reduce(x, axis=None)

    def all_true(self, x: Array) -> bool:
        return bool(sys.modules["numpy"].logical_and.reduce(x, axis=None))

    def row_dot(self, x: Array, y: Array) -> Array:
        return self.xp.vecdot(x, y, axis=-1)  # no product array

    def exp_of_temporary(self, x: Array) -> Array:
        return self.xp.exp(x, out=x)

    def subtract_into(self, out: Array, x: Array, y: Array) -> Array:
        return self.xp.subtract(x, y, out=out)

    def pick(self, z: Array, index: Array) -> Array:
        if z.ndim == 2:
            return z[sys.modules["numpy"].arange(z.shape[0]), index]
        return super().pick(z, index)

    def as_result(self, out: Array, dtype: object) -> Array:
        # NumPy turns 0-d results into scalars; indexing with an Ellipsis makes them arrays again.
        return super().as_result(out, dtype)[...]
