"""Fused linear cross entropy: the loss of ``hidden @ weight.T`` without holding all the logits.

The logits of a language model's output layer (``tokens x vocabulary``) are often
the largest array of a training step. :func:`linear_cross_entropy` computes them a
chunk of rows at a time, reduces each chunk to per-example losses with the same
functions as :func:`~arrayloss.sparse_softmax_cross_entropy`; for a scalar loss the
gradients are computed in the same pass (Liger-Kernel's fused linear cross entropy),
otherwise the backward pass recomputes each chunk's logits (as Apple's Cut
Cross-Entropy does), written once against the array API.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

from array_api_compat import device

from ._autodiff import Linearization, analytic_backward, register_rule
from ._chunking import BLOCK_BYTES, map_row_chunks
from ._cross_entropy import (
    check_sparse_options,
    example_weights,
    label_terms,
    prepare_labels,
)
from ._grad import _bind, example_scale, sparse_rows_and_loss
from ._reduce import as_result, reduce_losses
from ._validation import Array, check_floating, check_labels, compute_dtype, is_eager_host, namespace_of

# Bytes of one chunk of logits when chunk_size is not given. Measured (benchmarks/RESULTS.md), 4096 x
# 1024 x 32000 float32, fwd+bwd, 1 thread: 16 MiB chunks 1.09x the time of materialised logits, 32 MiB
# 1.0x, 64 MiB 1.0x with 30 % more memory; the products of smaller chunks use the cores less well.
CHUNK_BYTES = 1 << 25


def _check(
    hidden: Array, weight: Array, labels: Array, bias: Array | None, xp: ModuleType
) -> tuple[int, Any]:
    """Check shapes and dtypes; return the number of classes and the accumulation dtype."""
    check_floating("hidden", hidden, xp)
    check_floating("weight", weight, xp)
    if hidden.ndim == 0:
        raise ValueError("hidden must have at least one dimension (the features), got a 0-d array")
    if weight.ndim != 2 or weight.shape[1] != hidden.shape[-1] or weight.shape[0] == 0:
        raise ValueError(
            f"weight must have shape (classes, {hidden.shape[-1]}) with at least one class to match "
            f"hidden of shape {tuple(hidden.shape)}, got {tuple(weight.shape)}"
        )
    check_labels(labels, tuple(hidden.shape[:-1]), xp)
    num_classes = weight.shape[0]
    if bias is not None:
        check_floating("bias", bias, xp)
        if tuple(bias.shape) != (num_classes,):
            raise ValueError(f"bias must have shape ({num_classes},), got {tuple(bias.shape)}")
    return num_classes, compute_dtype(xp.result_type(hidden.dtype, weight.dtype), xp)


def _chunk_rows(chunk_size: int | None, rows: int, num_classes: int, dtype: Any, xp: ModuleType) -> int:
    """Rows per chunk: ``chunk_size``, or chunks of logits of about :data:`CHUNK_BYTES`."""
    if chunk_size is not None:
        return chunk_size
    row_bytes = num_classes * int(xp.finfo(dtype).bits) // 8
    return max(1, min(rows, CHUNK_BYTES // row_bytes))


def add_transposed_product(total: Array | None, g: Array, h: Array, xp: ModuleType) -> Array:
    """``total + g.T @ h`` (``total=None``: zeros), for ``g`` of shape ``(R, C)`` and ``h`` ``(R, D)``.

    On eager host arrays ``total`` is updated in place, a block of about
    :data:`~._chunking.BLOCK_BYTES` of its rows at a time: the product of a whole
    chunk would be a second ``C x D`` array, allocated and faulted in for every chunk.
    """
    if not is_eager_host(g):
        part = xp.matmul(xp.matrix_transpose(g), h)
        return part if total is None else total + part
    classes, features = g.shape[1], h.shape[1]
    if total is None:
        total = xp.zeros((classes, features), dtype=g.dtype, device=device(g))
    step = max(1, BLOCK_BYTES // (features * xp.finfo(g.dtype).bits // 8 or 1))
    for first in range(0, classes, step):
        last = min(first + step, classes)
        total[first:last, ...] += xp.matmul(xp.matrix_transpose(g[:, first:last]), h)
    return total


class _Problem:
    """One call, flattened to rows: ``hidden`` ``(R, D)``, labels ``(R,)``, parameters in ``dtype``."""

    def __init__(
        self,
        hidden: Array,
        weight: Array,
        labels: Array,
        bias: Array | None,
        options: dict[str, Any],
    ) -> None:
        xp = namespace_of(
            {
                "hidden": hidden,
                "weight": weight,
                "labels": labels,
                "bias": bias,
                "weights": options["weights"],
                "class_weights": options["class_weights"],
            },
            options["xp"],
            optional=("bias", "weights", "class_weights"),
        )
        num_classes, dtype = _check(hidden, weight, labels, bias, xp)
        ignore_index = check_sparse_options(
            num_classes,
            options["class_weights"],
            options["ignore_index"],
            options["label_smoothing"],
            options["z_loss"],
            options["reduction"],
            options["chunk_size"],
        )
        self.xp, self.dtype, self.shape = xp, dtype, tuple(labels.shape)
        self.out_dtype = xp.result_type(hidden.dtype, weight.dtype)
        self.label_smoothing, self.z_loss = options["label_smoothing"], options["z_loss"]
        self.reduction = options["reduction"]
        rows = math.prod(self.shape)
        self.hidden = xp.reshape(hidden, (rows, hidden.shape[-1]))
        self.weight = xp.astype(weight, dtype, copy=False)
        self.bias = None if bias is None else xp.astype(bias, dtype, copy=False)
        safe_labels, counted, self.poisoned = prepare_labels(labels, num_classes, ignore_index, xp)
        self.labels = xp.reshape(safe_labels, (rows,))
        self.example_weights = example_weights(
            options["weights"], options["class_weights"], labels, counted, dtype, xp
        )
        self.chunk = _chunk_rows(options["chunk_size"], rows, num_classes, dtype, xp)

    def logits(self, hidden_rows: Array) -> Array:
        xp = self.xp
        z = xp.matmul(xp.astype(hidden_rows, self.dtype, copy=False), xp.matrix_transpose(self.weight))
        return z if self.bias is None else z + self.bias

    def terms(self, hidden_rows: Array, label_rows: Array) -> Array:
        z = self.logits(hidden_rows)
        return label_terms(
            z, label_rows, label_smoothing=self.label_smoothing, z_loss=self.z_loss, xp=self.xp
        )

    def reduce(self, loss_rows: Array) -> Array:
        """The weighted and reduced loss from the per-row losses, in the output dtype."""
        xp = self.xp
        loss = xp.reshape(loss_rows, self.shape)
        out = reduce_losses(loss, self.example_weights, self.reduction, xp, poisoned=self.poisoned)
        return as_result(out, self.out_dtype, xp)

    def value(self) -> Array:
        return self.reduce(map_row_chunks(self.terms, (self.hidden, self.labels), self.chunk, self.xp))

    def value_and_gradients(
        self, cotangent: Array | None, like: tuple[Array, ...]
    ) -> tuple[Array, tuple[Array, ...]]:
        """The value, and the gradients of ``sum(cotangent * value)`` for hidden, weight (and bias).

        One pass over the chunks: each chunk's logits are computed once and serve
        the value and the gradients. ``cotangent=None`` means ones. ``like`` holds
        the original arrays, whose shapes and dtypes the gradients take.
        """
        xp = self.xp
        w = self.example_weights
        if cotangent is None:
            shape = self.shape if self.reduction == "none" else ()
            cotangent = xp.ones(shape, dtype=self.dtype, device=device(self.hidden))
        scale = example_scale(cotangent, w, self.reduction, self.shape, self.dtype, xp)
        if self.poisoned is not None:  # a label out of range: NaN loss, NaN gradient
            scale = xp.where(self.poisoned, xp.full_like(scale, math.nan), scale)
        scale = xp.reshape(scale, (-1,))
        losses, d_hidden, d_weight, d_bias = [], [], None, None
        rows = self.hidden.shape[0]
        for start in range(0, rows, self.chunk):
            stop = min(start + self.chunk, rows)
            h = xp.astype(self.hidden[start:stop, ...], self.dtype, copy=False)
            g, loss = sparse_rows_and_loss(
                self.logits(h),
                self.labels[start:stop],
                scale[start:stop],
                label_smoothing=self.label_smoothing,
                z_loss=self.z_loss,
                masked=w is not None,
                xp=xp,
            )
            losses.append(loss)
            d_hidden.append(xp.matmul(g, self.weight))
            d_weight = add_transposed_product(d_weight, g, h, xp)
            if self.bias is not None:
                d_b = xp.sum(g, axis=0)
                d_bias = d_b if d_bias is None else d_bias + d_b
        if d_weight is None:  # no rows: zero gradients
            value = self.reduce(xp.zeros((0,), dtype=self.dtype, device=device(self.hidden)))
            zeros = tuple(xp.zeros_like(a) for a in like)
            return value, zeros
        grads = [xp.reshape(xp.concat(d_hidden, axis=0), tuple(like[0].shape)), d_weight]
        if d_bias is not None:
            grads.append(d_bias)
        value = self.reduce(xp.concat(losses, axis=0))
        return value, tuple(xp.astype(g, a.dtype, copy=False) for g, a in zip(grads, like, strict=True))


def _linear_rule(*args: Any, **kwargs: Any) -> Linearization:
    options = _bind(linear_cross_entropy, args, kwargs)
    hidden, weight, labels, bias = (options.pop(name) for name in ("hidden", "weight", "labels", "bias"))
    primals = (hidden, weight) if bias is None else (hidden, weight, bias)
    scalar = options["reduction"] != "none"

    def problem(primals: tuple[Array, ...]) -> _Problem:
        return _Problem(primals[0], primals[1], labels, primals[2] if bias is not None else None, options)

    def forward(*primals: Array) -> tuple[Array, tuple[Array, ...]]:
        return problem(primals).value(), ()

    def fused(*primals: Array) -> tuple[Array, tuple[Array, ...]]:
        # The gradients in the same pass as the value: one product per chunk fewer than recomputing
        # the logits in the backward pass.
        return problem(primals).value_and_gradients(None, primals)

    def backward(
        primals: tuple[Array, ...], residuals: tuple[Array, ...], cotangent: Array
    ) -> tuple[Array, ...]:
        return problem(primals).value_and_gradients(cotangent, primals)[1]

    def unpack(grads: tuple[Array, ...]) -> tuple[Array, ...]:
        return grads

    constants = (options["weights"], options["class_weights"])
    return Linearization(primals, forward, backward, constants, unpack, fused if scalar else None)


@analytic_backward
def linear_cross_entropy(
    hidden: Array,
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
    reduction: str = "none",
    chunk_size: int | None = None,
    xp: ModuleType | None = None,
) -> Array:
    r"""Softmax cross entropy of the logits ``hidden @ weight.T + bias``, computed without holding them.

    The same loss as ``sparse_softmax_cross_entropy(hidden @ weight.T + bias, labels, ...)``
    with the same options, computed ``chunk_size`` rows at a time: the working memory
    is a few ``chunk_size x C`` arrays instead of several ``N x C`` ones. On PyTorch,
    ``loss.backward()`` uses the analytic gradient of
    :func:`linear_cross_entropy_value_and_grad` (chunk by chunk; for a scalar
    ``reduction`` it is computed together with the value, as Liger-Kernel does), so
    the full logits never exist in the backward pass either. On JAX, autodiff of the
    chunked computation gives the same numbers but keeps the chunks' intermediates.

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
    weights, class_weights, ignore_index, label_smoothing, z_loss, reduction
        As in :func:`sparse_softmax_cross_entropy`.
    chunk_size : int, optional
        Rows (examples) per chunk. Default: chunks of logits of about 32 MiB.
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
    options = {
        "weights": weights,
        "class_weights": class_weights,
        "ignore_index": ignore_index,
        "label_smoothing": label_smoothing,
        "z_loss": z_loss,
        "reduction": reduction,
        "chunk_size": chunk_size,
        "xp": xp,
    }
    return _Problem(hidden, weight, labels, bias, options).value()


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
    bound = _bind(linear_cross_entropy, (hidden, weight, labels), options)
    bias = bound.pop("bias")
    for name in ("hidden", "weight", "labels"):
        bound.pop(name)
    like = (hidden, weight) if bias is None else (hidden, weight, bias)
    return _Problem(hidden, weight, labels, bias, bound).value_and_gradients(None, like)


register_rule(linear_cross_entropy, _linear_rule)
