"""Fused linear cross entropy: the loss of ``hidden @ weight.T`` without holding all the logits.

The logits of a language model's output layer (``tokens x vocabulary``) are often
the largest array of a training step. :func:`linear_cross_entropy` computes them a
chunk of rows at a time and reduces each chunk to per-example losses with the sparse
cross entropy's per-row math; for a scalar loss the gradients are computed in the same
pass (Liger-Kernel's fused linear cross entropy), otherwise the backward pass
recomputes each chunk's logits (as Apple's Cut Cross-Entropy does), written once
against the array API.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any, NamedTuple, cast

from ._autodiff import Rule, bind, compute, differentiable
from ._lib._blocks import map_row_blocks
from ._lib._ops import Ops
from ._lib._reduce import example_scale, poison, reduce_losses
from ._lib._settings import current
from ._lib._softmax import zero_dropped_rows
from ._lib._validation import (
    Array,
    ArrayT,
    Reduction,
    check_floating,
    compute_dtype,
    ops_of,
    reshape_target,
    size_of,
)
from ._sparse import LabelOptions, check_label_options, gradient_rows_and_losses, losses_and_row_stats

# Rows per chunk of a rank's shard of the classes by default: 32 MiB of float32 logits of a shard of
# 16384 classes (a vocabulary of 128k over 8 ranks).
SHARD_CHUNK_ROWS = 512


class LinearCall(NamedTuple):
    """A checked call of :func:`linear_cross_entropy` (see :class:`~._autodiff.Call`).

    ``dtype`` is the accumulation dtype, ``chunk`` the rows per chunk (None: one chunk, where the
    number of rows is unknown or the library's own blocks are the chunks, see ``Ops.has_blocks``).
    """

    ops: Ops
    hidden: Array
    weight: Array
    bias: Array | None
    options: LabelOptions
    dtype: Any
    chunk: int | None

    @property
    def primals(self) -> tuple[Array, ...]:
        return (self.hidden, self.weight) if self.bias is None else (self.hidden, self.weight, self.bias)

    @property
    def constants(self) -> tuple[Any, ...]:
        return (self.options.weights, self.options.class_weights)

    @property
    def one_pass(self) -> bool:
        # The gradients in the same pass as the value: one product per chunk fewer than recomputing
        # the logits in the backward pass.
        return self.options.reduction != "none"


def check_linear(
    *,
    hidden: Array,
    weight: Array,
    labels: Array,
    bias: Array | None,
    weights: Array | None,
    class_weights: Array | None,
    ignore_index: int | None,
    label_smoothing: float,
    z_loss: float,
    reduction: Reduction,
    chunk_size: int | None,
    softcap: float | None,
    xp: ModuleType | None,
    vocab_shard: bool = False,
) -> LinearCall:
    """Check the arguments of :func:`linear_cross_entropy` once; return the call's record.

    ``vocab_shard``: ``weight`` is one rank's shard of the classes, called ``local_weight``
    (:func:`arrayloss.distributed.vocab_parallel_linear_cross_entropy`); labels are global
    class indices, checked here to be non-negative only.
    """
    name = "local_weight" if vocab_shard else "weight"
    arrays = {
        "hidden": hidden,
        name: weight,
        "labels": labels,
        "bias": bias,
        "weights": weights,
        "class_weights": class_weights,
    }
    ops = ops_of(arrays, xp, optional=("bias", "weights", "class_weights"))
    xp = ops.xp
    check_floating("hidden", hidden, xp)
    check_floating(name, weight, xp)
    if hidden.ndim == 0:
        raise ValueError("hidden must have at least one dimension (the features), got a 0-d array")
    if weight.ndim != 2 or weight.shape[1] != hidden.shape[-1] or weight.shape[0] == 0:
        raise ValueError(
            f"{name} must have shape (classes, {hidden.shape[-1]}) with at least one class to match "
            f"hidden of shape {tuple(hidden.shape)}, got {tuple(weight.shape)}"
        )
    num_classes = weight.shape[0]
    if bias is not None:
        check_floating("bias", bias, xp)
        if tuple(bias.shape) != (num_classes,):
            raise ValueError(f"bias must have shape ({num_classes},), got {tuple(bias.shape)}")
    options = check_label_options(
        labels,
        None if vocab_shard else num_classes,
        tuple(hidden.shape[:-1]),
        ops,
        weights=weights,
        class_weights=class_weights,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        reduction=reduction,
        chunk_size=chunk_size,
        softcap=softcap,
    )
    dtype = compute_dtype(xp.result_type(hidden.dtype, weight.dtype), xp)
    rows = size_of(tuple(labels.shape))
    if rows is None or (chunk_size is None and ops.has_blocks(hidden)):
        # An unknown number of rows, or rows in the library's own blocks (Dask): one call, no loop.
        chunk_size = None
    elif chunk_size is None:  # chunks of equal rows
        if vocab_shard:  # the same on every rank, whose all-reduces pair up: not from its own classes
            most = max(1, min(rows, SHARD_CHUNK_ROWS))
        else:  # logits of at most about linear_chunk_bytes
            row_bytes = num_classes * int(xp.finfo(dtype).bits) // 8
            most = max(1, min(rows, current().linear_chunk_bytes // row_bytes))
        chunk_size = -(-rows // -(-rows // most)) if rows else most  # no short last chunk to handle apart
    return LinearCall(ops, hidden, weight, bias, options, dtype, chunk_size)


class _Rows(NamedTuple):
    """One call's arrays flattened to rows: ``hidden`` ``(R, D)``, ``labels`` ``(R,)``, parameters in
    the accumulation dtype."""

    hidden: Array
    weight: Array
    bias: Array | None
    labels: Array

    def logits(self, hidden_rows: Array, ops: Ops) -> Array:
        xp = ops.xp
        z = xp.matmul(xp.astype(hidden_rows, self.weight.dtype, copy=False), xp.matrix_transpose(self.weight))
        if z.shape[-1] is None:  # a lazy product of rows of unknown number (ndonnx): the classes are known
            z = xp.reshape(z, (-1, self.weight.shape[0]))
        return z if self.bias is None else z + self.bias


def _rows(call: LinearCall, primals: tuple[Array, ...]) -> _Rows:
    xp = call.ops.xp
    hidden, weight = primals[0], primals[1]
    bias = primals[2] if len(primals) > 2 else None
    labels = call.options.labels.safe
    return _Rows(  # rows already: no reshape (Dask cannot reshape rows of unknown number)
        hidden if hidden.ndim == 2 else xp.reshape(hidden, (-1, hidden.shape[-1])),
        xp.astype(weight, call.dtype, copy=False),
        None if bias is None else xp.astype(bias, call.dtype, copy=False),
        labels if labels.ndim == 1 else xp.reshape(labels, (-1,)),
    )


def _rows_as(rows: Array, like: Array, xp: ModuleType) -> Array:
    """``rows`` (flattened to rows, as :func:`_rows` does) in the shape of ``like`` again."""
    if rows.ndim == like.ndim:  # no reshape: Dask cannot reshape rows of unknown number
        return rows
    return xp.reshape(rows, reshape_target(tuple(like.shape)))


def _reduce(call: LinearCall, loss_rows: Array, w: Array | None, primals: tuple[Array, ...]) -> Array:
    """The loss reduced from the per-row losses and the example weights ``w``, in the dtype of
    ``hidden @ weight.T``."""
    options, ops = call.options, call.ops
    xp = ops.xp
    loss = _rows_as(loss_rows, options.raw_labels, xp)
    out = reduce_losses(loss, w, options.reduction, ops, poisoned=options.labels.poisoned)
    return ops.as_result(out, xp.result_type(primals[0].dtype, primals[1].dtype))


def _forward(call: LinearCall, *primals: Array) -> tuple[Array, tuple[Array, ...]]:
    options, ops = call.options, call.ops
    rows = _rows(call, primals)

    def losses(hidden_rows: Array, label_rows: Array) -> Array:
        z = rows.logits(hidden_rows, ops)
        return losses_and_row_stats(
            z,
            label_rows,
            label_smoothing=options.label_smoothing,
            z_loss=options.z_loss,
            ops=ops,
            softcap=options.softcap,
        )[0]

    loss_rows = map_row_blocks(losses, (rows.hidden, rows.labels), call.chunk, ops)
    return _reduce(call, loss_rows, options.example_weights(call.dtype, ops), primals), ()


def add_transposed_product(total: Array, g: Array, h: Array, ops: Ops) -> Array:
    """``total + g.T @ h``, for ``g`` of shape ``(R, C)`` and ``h`` ``(R, D)``.

    On eager host arrays ``total`` is updated in place, a block of about ``block_bytes``
    of its rows at a time: the product of a whole chunk would be a second ``C x D`` array,
    allocated and faulted in for every chunk.
    """
    xp = ops.xp
    if not ops.is_eager(g):
        return total + xp.matmul(xp.matrix_transpose(g), h)
    classes, features = g.shape[1], h.shape[1]
    step = max(1, current().block_bytes // (features * xp.finfo(g.dtype).bits // 8 or 1))
    for first in range(0, classes, step):
        last = min(first + step, classes)
        total[first:last, ...] += xp.matmul(xp.matrix_transpose(g[:, first:last]), h)
    return total


def add_chunk_gradients(
    totals: tuple[Array, Array | None], g: Array, h: Array, weight: Array, ops: Ops
) -> tuple[tuple[Array, Array | None], Array]:
    """The weight's and bias's gradient ``totals`` with a chunk's part added, for the gradient ``g`` of
    its logits ``h @ weight.T (+ bias)``, and the gradient of its hidden rows ``h``."""
    d_weight, d_bias = totals
    d_weight = add_transposed_product(d_weight, g, h, ops)
    if d_bias is not None:
        d_bias = d_bias + ops.xp.sum(g, axis=0)
    return (d_weight, d_bias), ops.xp.matmul(g, weight)


def zero_totals(rows: _Rows, dtype: Any, ops: Ops) -> tuple[Array, Array | None]:
    """Zero totals of the weight's and bias's gradients, in ``dtype`` (in the weight's blocks on Dask,
    of the weight's kind under ``shard_map``)."""
    xp = ops.xp
    return xp.zeros_like(rows.weight, dtype=dtype), None if rows.bias is None else xp.zeros_like(
        rows.bias, dtype=dtype
    )


def _value_and_gradients(
    call: LinearCall, primals: tuple[Array, ...], cotangent: Array | None
) -> tuple[Array, tuple[Array, ...]]:
    """The value, and the gradients of ``sum(cotangent * value)`` for the primals, in one pass.

    Each chunk's logits are computed once and serve the value and the gradients.
    ``cotangent=None`` means ones. The gradients take the primals' shapes and dtypes.
    """
    options, ops = call.options, call.ops
    xp = ops.xp
    rows = _rows(call, primals)
    w = options.example_weights(call.dtype, ops)
    labels = options.raw_labels
    if cotangent is None and options.reduction == "none":
        cotangent = xp.ones_like(labels, dtype=call.dtype)
    elif cotangent is None:
        cotangent = xp.ones((), dtype=call.dtype, device=ops.device(rows.hidden))
    scale = example_scale(cotangent, w, options.reduction, labels, call.dtype, ops)
    scale = poison(scale, options.labels.poisoned, ops)  # a label out of range: NaN gradient
    scale = scale if scale.ndim == 1 else xp.reshape(scale, (-1,))
    device = ops.device(rows.hidden)
    if rows.hidden.shape[0] == 0:  # no rows: zero gradients
        value = _reduce(call, xp.zeros((0,), dtype=call.dtype, device=device), w, primals)
        return value, tuple(xp.zeros_like(a) for a in primals)

    def chunk(
        totals: tuple[Array, Array | None], hidden_rows: Array, label_rows: Array, scale_rows: Array
    ) -> tuple[tuple[Array, Array | None], tuple[Array, Array]]:
        h = xp.astype(hidden_rows, call.dtype, copy=False)
        if w is not None:  # rows of weight 0 count as zeros, whatever they hold: 0 * NaN would be NaN
            h = zero_dropped_rows(h, scale_rows, ops)
        g, loss = gradient_rows_and_losses(
            rows.logits(h, ops),
            label_rows,
            scale_rows,
            label_smoothing=options.label_smoothing,
            z_loss=options.z_loss,
            masked=w is not None,
            ops=ops,
            softcap=options.softcap,
        )
        totals, d_hidden_rows = add_chunk_gradients(totals, g, h, rows.weight, ops)
        return totals, (loss, d_hidden_rows)

    (d_weight, d_bias), (losses, d_hidden) = ops.scan_row_blocks(
        chunk, zero_totals(rows, call.dtype, ops), (rows.hidden, rows.labels, scale), call.chunk
    )
    grads = [_rows_as(d_hidden, primals[0], xp), d_weight]
    if d_bias is not None:
        grads.append(d_bias)
    value = _reduce(call, losses, w, primals)
    return value, tuple(xp.astype(g, a.dtype, copy=False) for g, a in zip(grads, primals, strict=True))


def _backward(
    call: LinearCall, primals: tuple[Array, ...], residuals: tuple[Array, ...], cotangent: Array
) -> tuple[Array, ...]:
    return _value_and_gradients(call, primals, cotangent)[1]


def _fused(call: LinearCall, *primals: Array) -> tuple[Array, tuple[Array, ...]]:
    return _value_and_gradients(call, primals, None)


RULE = Rule(
    check_linear,
    _forward,
    _backward,
    _fused,
    unpack=lambda call, gradients: gradients,
    custom_vjp=True,
)


@differentiable(RULE)
def linear_cross_entropy(
    hidden: ArrayT,
    weight: Array,
    labels: Array,
    /,
    *,
    bias: Array | None = None,
    weights: Array | None = None,
    class_weights: Array | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: Reduction = "none",
    chunk_size: int | None = None,
    softcap: float | None = None,
    xp: ModuleType | None = None,
) -> ArrayT:
    r"""Softmax cross entropy of the logits ``hidden @ weight.T + bias``, computed without holding them.

    The same loss as ``sparse_softmax_cross_entropy(hidden @ weight.T + bias, labels, ...)``
    with the same options, computed ``chunk_size`` rows at a time: the working memory
    is a few ``chunk_size x C`` arrays instead of several ``N x C`` ones. On PyTorch,
    ``loss.backward()`` uses the analytic gradient of
    :func:`linear_cross_entropy_value_and_grad` (chunk by chunk; for a scalar
    ``reduction`` it is computed together with the value, as Liger-Kernel does), so
    the full logits never exist in the backward pass either. On JAX, the same rule is
    attached through ``jax.custom_vjp``, and under ``jax.jit`` the chunks are a
    ``lax.scan``: XLA keeps one chunk of logits alive in the forward and backward passes
    (a scalar ``reduction`` computes the gradients with the value). Gradients with respect
    to ``weights`` and ``class_weights`` are given too (``jax.grad`` of them). Forward-mode
    autodiff (``jax.jvp``, ``jax.jacfwd``) of this loss is not available on JAX: it raises
    JAX's ``TypeError`` for a ``custom_vjp`` function (the other losses support it).

    Parameters
    ----------
    hidden : array, shape ``(..., D)``
        Real floating features of each example.
    weight : array, shape ``(C, D)``
        The output layer: one row per class.
    labels : array of integers, shape ``hidden.shape[:-1]``
        Values in ``[0, C)`` or ``ignore_index``.
    bias : array, shape ``(C,)``, optional
        Added to the logits.
    weights, class_weights, ignore_index, label_smoothing, z_loss, reduction, softcap
        As in :func:`sparse_softmax_cross_entropy`.
    chunk_size : int, optional
        Rows (examples) per chunk. Default: chunks of logits of about 32 MiB; on Dask, the row
        blocks of ``hidden`` (with the class blocks of ``weight``, they bound each task's logits).
    xp : namespace, optional
        Force an array namespace; inferred from the arrays when omitted.

    Returns
    -------
    array
        In the namespace and on the device of the inputs, in the dtype of
        ``hidden @ weight.T`` (half precision is accumulated in float32).

    Raises
    ------
    TypeError, ValueError
        As :func:`sparse_softmax_cross_entropy`, naming the argument; shapes of
        ``hidden``, ``weight`` and ``bias`` that do not match.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> hidden = np.asarray([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    >>> weight = np.asarray([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.5]])
    >>> al.linear_cross_entropy(hidden, weight, np.asarray([0, 1, 2]), chunk_size=2)
    array([0.16984602, 0.68026967, 2.87153903])
    """
    call = check_linear(
        hidden=hidden,
        weight=weight,
        labels=labels,
        bias=bias,
        weights=weights,
        class_weights=class_weights,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        reduction=reduction,
        chunk_size=chunk_size,
        softcap=softcap,
        xp=xp,
    )
    return cast(ArrayT, compute(RULE, call))


def linear_cross_entropy_value_and_grad(
    hidden: Array, weight: Array, labels: Array, /, **options: Any
) -> tuple[Array, tuple[Array, ...]]:
    """:func:`linear_cross_entropy` and its gradients, in one chunked pass.

    Parameters
    ----------
    hidden, weight, labels, **options
        As :func:`linear_cross_entropy`.

    Returns
    -------
    value : array
        What :func:`linear_cross_entropy` returns.
    grads : tuple of arrays
        ``(d_hidden, d_weight)``, plus ``d_bias`` when ``bias`` is given: the
        gradients of ``sum(value)`` (for ``reduction="none"``, the vector-Jacobian
        product with ones), in the shapes and dtypes of those arrays. Each chunk's
        logits exist only while that chunk is processed.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> from arrayloss._linear import linear_cross_entropy_value_and_grad
    >>> hidden = np.asarray([[1.0, 0.0]])
    >>> weight = np.asarray([[0.0, 0.0], [0.0, 0.0]])
    >>> value, (d_hidden, d_weight) = linear_cross_entropy_value_and_grad(hidden, weight, np.asarray([0]))
    >>> value, d_weight
    (array([0.69314718]), array([[-0.5,  0. ],
           [ 0.5,  0. ]]))
    """
    call = check_linear(**bind(linear_cross_entropy, (hidden, weight, labels), options))
    return _value_and_gradients(call, call.primals, None)
