"""Analytic gradients of every loss, written once in the array API.

Each public loss has a *rule* (registered in :mod:`._autodiff`'s table with
:func:`~._autodiff.register_rule`) that splits one call into the differentiated
arrays, a forward pass (the loss itself) and a backward pass (the vector-Jacobian
product, ``softmax - target`` scaled by the weights and the reduction). The same
rule serves :func:`value_and_grad` on libraries without autodiff (NumPy, CuPy,
Dask, array-api-strict) and PyTorch autograd (:func:`~._autodiff.analytic_backward`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

from array_api_compat import device

from ._autodiff import Linearization, NotDifferentiable, register_rule, registered_names, rule_of
from ._chunking import rows_per_chunk
from ._cross_entropy import (
    example_weights,
    label_indices,
    prepare_labels,
    softmax_cross_entropy,
    sparse_loss_and_row_stats,
    sparse_softmax_cross_entropy,
)
from ._reduce import apply_weights, safe_divide
from ._sequence import _stacked, _step_weights, sequence_loss, sequence_loss_by_example, tfa_denominator
from ._special import shifted_log_sum
from ._validation import Array, class_axis_last, compute_dtype, namespace_of, normalize_axis


def _bind(loss: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every argument of a call to ``loss`` by name, defaults included."""
    bound = inspect.signature(loss).bind(*args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def example_scale(
    cotangent: Array,
    weights: Array | None,
    reduction: str,
    shape: tuple[int, ...],
    dtype: Any,
    xp: ModuleType,
) -> Array:
    """The factor of each example's loss gradient: ``d(reduced loss) / d(loss_i)`` times the cotangent.

    ``weights`` are the combined example weights (None: all ones); an example of
    weight 0 gets exactly 0. Shape ``shape`` (the per-example losses), in ``dtype``.
    """
    scale = xp.astype(cotangent, dtype)
    if reduction == "mean":
        if weights is None:
            scale = scale / float(max(math.prod(shape), 1))
        else:
            scale = safe_divide(scale, xp.sum(weights), xp)
    return apply_weights(xp.broadcast_to(scale, shape), weights, xp)


def in_row_blocks(
    row_gradient: Callable[..., Array], z: Array, per_row: tuple[Array, ...], xp: ModuleType
) -> Array:
    """``row_gradient(z, *per_row)``, computed in blocks of rows on eager host arrays.

    ``row_gradient`` maps rows of ``z`` (classes last) and of the ``per_row`` arrays
    (the leading shape of ``z``, maybe with trailing axes of their own) to gradient
    rows of ``z``'s shape and dtype. The blocks follow the forward pass's rule
    (:func:`~arrayloss._chunking.rows_per_chunk`): a block stays in the CPU cache
    through the several elementwise steps of the gradient, and each finished block
    is written into the gradient, so that no other logits-sized array is ever
    alive (eager host arrays are writable). Other arrays get one call.
    """
    chunk = rows_per_chunk(None, z, xp, backward=True)
    if chunk is None:
        return row_gradient(z, *per_row)
    lead = z.ndim - 1
    rows = tuple(xp.reshape(a, (-1, *a.shape[lead:])) for a in (z, *per_row))
    count = rows[0].shape[0]
    grad = xp.empty(rows[0].shape, dtype=z.dtype, device=device(z))
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)  # the standard leaves out-of-bounds slice stops unspecified
        grad[start:stop, ...] = row_gradient(*(a[start:stop, ...] for a in rows))
    return xp.reshape(grad, tuple(z.shape))


def sparse_logits_vjp(
    z: Array,
    safe_labels: Array,
    scale: Array,
    *,
    label_smoothing: float,
    z_loss: float,
    masked: bool,
    xp: ModuleType,
    row_stats: tuple[Array, Array] | None = None,
) -> Array:
    r"""Gradient of :math:`\sum_i s_i \ell_i` with respect to ``z`` (classes last, accumulation dtype).

    .. math::

        \frac{\partial \ell}{\partial z} = (1 + 2\lambda \operatorname{lse}(z))\,\operatorname{softmax}(z)
            - (1-\varepsilon)\,\mathrm{onehot}(y) - \varepsilon / C

    ``scale`` holds :math:`s_i` (see :func:`example_scale`). With ``masked``, rows of
    scale 0 are exactly 0 even where their logits are not finite. ``row_stats`` are
    the rows' ``(shift, log_sum)`` from the forward pass (the leading shape of ``z``;
    see :func:`~._cross_entropy.label_terms_and_row_stats`), which spare the reduction
    of every row; None computes them. Computed in blocks of rows (:func:`in_row_blocks`).
    """

    def rows(z: Array, safe_labels: Array, scale: Array, *stats: Array) -> Array:
        return _sparse_rows(z, safe_labels, scale, stats, label_smoothing, z_loss, masked, xp)

    return in_row_blocks(rows, z, (safe_labels, scale, *(row_stats or ())), xp)


def _sparse_rows(
    z: Array,
    safe_labels: Array,
    scale: Array,
    row_stats: tuple[Array, ...],
    label_smoothing: float,
    z_loss: float,
    masked: bool,
    xp: ModuleType,
) -> Array:
    num_classes = z.shape[-1]
    softmax, lse = _softmax_and_lse(z, scale, row_stats, masked, xp)
    coefficient = scale[..., None]
    if z_loss:
        coefficient = coefficient * (1.0 + 2.0 * z_loss * lse)
    grad = softmax * coefficient
    uniform = scale * (label_smoothing / num_classes)
    at_label = scale * (1.0 - label_smoothing) + uniform
    index = label_indices(safe_labels, xp)
    classes = xp.arange(num_classes, dtype=index.dtype, device=device(z))
    return grad - xp.where(classes == index[..., None], at_label[..., None], uniform[..., None])


def _softmax_and_lse(
    z: Array, scale: Array, row_stats: tuple[Array, ...], masked: bool, xp: ModuleType
) -> tuple[Array, Array]:
    """Softmax over the last axis and the log-sum-exp (kept axis) of the rows ``z``.

    The softmax is ``exp((z - shift) - log_sum)``, accurate for huge logits too, from the
    rows' ``row_stats = (shift, log_sum)`` (leading shape of ``z``), or from
    :func:`~._special.shifted_log_sum` when ``row_stats`` is empty. With ``masked``, the
    rows of ``scale`` 0 are computed from zeros (finite, never NaN from ``inf - inf``).
    """
    if not row_stats:
        z = _zero_dropped_rows(z, scale, xp) if masked else z
        shift, log_sum = shifted_log_sum(z, xp)
    else:
        shift, log_sum = row_stats[0][..., None], row_stats[1][..., None]
        if masked:
            z, shift, log_sum = (_zero_dropped_rows(a, scale, xp) for a in (z, shift, log_sum))
    return xp.exp((z - shift) - log_sum), shift + log_sum


def _zero_dropped_rows(z: Array, scale: Array, xp: ModuleType) -> Array:
    """``z`` (rows, or one column per row) with the rows of scale 0 set to 0: their gradient is then 0."""
    return xp.where(scale[..., None] == 0, xp.zeros_like(z), z)


def dense_logits_vjp(
    z: Array, targets: Array, scale: Array, *, label_smoothing: float, masked: bool, xp: ModuleType
) -> Array:
    r"""Gradient of :math:`\sum_i s_i \ell_i` for dense ``targets`` with respect to ``z``.

    .. math:: \frac{\partial \ell}{\partial z} = \operatorname{softmax}(z) \sum_c t_c - t,
              \qquad t = (1-\varepsilon)\,\mathrm{targets} + \varepsilon / C

    With ``masked``, rows of scale 0 are exactly 0 even where their logits are not finite.
    Computed in blocks of rows (:func:`in_row_blocks`).
    """

    def rows(z: Array, targets: Array, scale: Array) -> Array:
        return _dense_rows(z, targets, scale, label_smoothing, masked, xp)

    return in_row_blocks(rows, z, (targets, scale), xp)


def _dense_rows(
    z: Array, targets: Array, scale: Array, label_smoothing: float, masked: bool, xp: ModuleType
) -> Array:
    num_classes = z.shape[-1]
    coefficient = scale[..., None]
    mass = (1.0 - label_smoothing) * xp.sum(targets, axis=-1, keepdims=True) + label_smoothing
    grad = _softmax_and_lse(z, scale, (), masked, xp)[0] * (coefficient * mass)
    grad = grad - targets * (coefficient * (1.0 - label_smoothing))
    if label_smoothing:
        grad = grad - coefficient * (label_smoothing / num_classes)
    return grad


def _as_input(grad: Array, like: Array, axis: int, xp: ModuleType) -> Array:
    """A classes-last gradient back in the layout (class ``axis``) and dtype of the input ``like``."""
    grad = grad if axis == like.ndim - 1 else xp.moveaxis(grad, -1, axis)
    return xp.astype(grad, like.dtype, copy=False)


def _only(grads: tuple[Array, ...]) -> Array:
    return grads[0]


def _sparse_rule(*args: Any, **kwargs: Any) -> Linearization:
    options = _bind(sparse_softmax_cross_entropy, args, kwargs)
    logits, labels = options.pop("logits"), options.pop("labels")
    weights, class_weights = options["weights"], options["class_weights"]

    def forward(logits: Array) -> tuple[Array, tuple[Array, ...]]:
        return sparse_loss_and_row_stats(logits, labels, **options)

    def backward(primals: tuple[Array, ...], residuals: tuple[Array, ...], cotangent: Array) -> tuple[Array]:
        (x,) = primals
        xp = namespace_of({"logits": x}, options["xp"])
        axis = normalize_axis(options["axis"], x.ndim)
        dtype = compute_dtype(x.dtype, xp)
        z = xp.astype(class_axis_last(x, axis, xp), dtype, copy=False)
        safe_labels, counted, poisoned = prepare_labels(labels, z.shape[-1], options["ignore_index"], xp)
        w = example_weights(weights, class_weights, labels, counted, dtype, xp)
        scale = example_scale(cotangent, w, options["reduction"], tuple(labels.shape), dtype, xp)
        if poisoned is not None:  # a label out of range: NaN loss, NaN gradient
            scale = xp.where(poisoned, xp.full_like(scale, math.nan), scale)
        grad = sparse_logits_vjp(
            z,
            safe_labels,
            scale,
            label_smoothing=options["label_smoothing"],
            z_loss=options["z_loss"],
            masked=w is not None,
            xp=xp,
            row_stats=(residuals[0], residuals[1]),
        )
        return (_as_input(grad, x, axis, xp),)

    return Linearization((logits,), forward, backward, (weights, class_weights), _only)


def _dense_rule(*args: Any, **kwargs: Any) -> Linearization:
    options = _bind(softmax_cross_entropy, args, kwargs)
    logits, targets = options.pop("logits"), options.pop("targets")
    weights = options["weights"]

    def forward(logits: Array) -> tuple[Array, tuple[Array, ...]]:
        return softmax_cross_entropy(logits, targets, **options), ()

    def backward(primals: tuple[Array, ...], residuals: tuple[Array, ...], cotangent: Array) -> tuple[Array]:
        (x,) = primals
        xp = namespace_of({"logits": x}, options["xp"])
        axis = normalize_axis(options["axis"], x.ndim)
        dtype = compute_dtype(x.dtype, xp)
        z = xp.astype(class_axis_last(x, axis, xp), dtype, copy=False)
        t = xp.astype(class_axis_last(targets, axis, xp), dtype, copy=False)
        shape = tuple(z.shape[:-1])
        w = None if weights is None else xp.broadcast_to(xp.astype(weights, dtype), shape)
        scale = example_scale(cotangent, w, options["reduction"], shape, dtype, xp)
        grad = dense_logits_vjp(
            z, t, scale, label_smoothing=options["label_smoothing"], masked=w is not None, xp=xp
        )
        return (_as_input(grad, x, axis, xp),)

    return Linearization((logits,), forward, backward, (weights, targets), _only)


def _step_vjp(logits: Array, targets: Array, scale: Array, xp: ModuleType) -> Array:
    """Gradient w.r.t. ``[batch, time, classes]`` logits of the steps' losses weighted by ``scale``."""
    z = xp.astype(logits, scale.dtype, copy=False)
    if targets.ndim == 3:
        grad = dense_logits_vjp(
            z, xp.astype(targets, scale.dtype), scale, label_smoothing=0.0, masked=True, xp=xp
        )
    else:
        safe_labels, _, poisoned = prepare_labels(targets, z.shape[-1], None, xp, "targets")
        if poisoned is not None:
            scale = xp.where(poisoned, xp.full_like(scale, math.nan), scale)
        grad = sparse_logits_vjp(z, safe_labels, scale, label_smoothing=0.0, z_loss=0.0, masked=True, xp=xp)
    return xp.astype(grad, logits.dtype, copy=False)


def _no_custom_loss(options: dict[str, Any]) -> None:
    if options["softmax_loss_function"] is not None:
        raise NotDifferentiable(
            "value_and_grad cannot differentiate a custom softmax_loss_function analytically; "
            "call the loss with arrays of a library with autodiff (PyTorch, JAX) instead"
        )


def _sequence_rule(*args: Any, **kwargs: Any) -> Linearization:
    options = _bind(sequence_loss, args, kwargs)
    logits, targets, weights = options.pop("logits"), options.pop("targets"), options.pop("weights")
    _no_custom_loss(options)
    flags = {name: options[name] for name in ("average_across_timesteps", "average_across_batch")}
    flags |= {name: options[name] for name in ("sum_over_timesteps", "sum_over_batch")}

    def forward(logits: Array) -> tuple[Array, tuple[Array, ...]]:
        return sequence_loss(logits, targets, weights, **options), ()

    def backward(primals: tuple[Array, ...], residuals: tuple[Array, ...], cotangent: Array) -> tuple[Array]:
        (x,) = primals
        xp = namespace_of({"logits": x}, options["xp"])
        dtype = compute_dtype(x.dtype, xp)
        shape = tuple(x.shape[:2])
        w = _step_weights(weights, shape, dtype, xp, x)
        scale = xp.astype(cotangent, dtype)
        axes, denominator = tfa_denominator(w, xp=xp, **flags)
        if axes:
            scale = safe_divide(scale, denominator, xp)
            for axis in axes:
                scale = xp.expand_dims(scale, axis=axis)
        scale = apply_weights(xp.broadcast_to(scale, shape), w, xp)
        return (_step_vjp(x, targets, scale, xp),)

    return Linearization((logits,), forward, backward, (weights, targets), _only)


def _by_example_rule(*args: Any, **kwargs: Any) -> Linearization:
    options = _bind(sequence_loss_by_example, args, kwargs)
    _no_custom_loss(options)
    steps = isinstance(options["logits"], (list, tuple))
    logits, targets, weights, xp = _stacked(
        options.pop("logits"), options.pop("targets"), options.pop("weights"), options["xp"]
    )

    def forward(logits: Array) -> tuple[Array, tuple[Array, ...]]:
        return sequence_loss_by_example(logits, targets, weights, **options), ()

    def backward(primals: tuple[Array, ...], residuals: tuple[Array, ...], cotangent: Array) -> tuple[Array]:
        (x,) = primals
        dtype = compute_dtype(x.dtype, xp)
        w = _step_weights(weights, tuple(x.shape[:2]), dtype, xp, x)
        scale = xp.astype(cotangent, dtype)
        if options["average_across_timesteps"]:
            scale = scale / (xp.sum(w, axis=1) + 1e-12)
        scale = apply_weights(xp.broadcast_to(scale[:, None], tuple(w.shape)), w, xp)
        return (_step_vjp(x, targets, scale, xp),)

    def unpack(grads: tuple[Array, ...]) -> Array | list[Array]:
        return [grads[0][:, t, ...] for t in range(grads[0].shape[1])] if steps else grads[0]

    return Linearization((logits,), forward, backward, (weights, targets), unpack)


register_rule(sparse_softmax_cross_entropy, _sparse_rule)
register_rule(softmax_cross_entropy, _dense_rule)
register_rule(sequence_loss, _sequence_rule)
register_rule(sequence_loss_by_example, _by_example_rule)


def value_and_grad(loss: Callable[..., Array], /) -> Callable[..., tuple[Array, Any]]:
    """A function computing a loss and its analytic gradient with respect to the logits.

    Meant for array libraries without automatic differentiation (NumPy, CuPy, Dask,
    array-api-strict); on PyTorch and JAX arrays it gives the same numbers as their
    autodiff. The gradient is written in the array API (``softmax - target``, scaled
    by the weights and the reduction), not a numerical difference.

    Parameters
    ----------
    loss : callable
        One of :func:`sparse_softmax_cross_entropy`, :func:`softmax_cross_entropy`,
        :func:`sequence_loss`, :func:`sequence_loss_by_example`,
        :func:`linear_cross_entropy` (a module adds one with
        :func:`~arrayloss._autodiff.register_rule`).

    Returns
    -------
    callable
        ``f(*arrays, **options) -> (value, grad)`` taking the arguments of ``loss``.
        ``value`` is what ``loss`` returns; ``grad`` is the gradient of
        ``sum(value)`` (for ``reduction="none"``, the vector-Jacobian product with
        ones) with respect to the first argument, in its shape, dtype, namespace and
        device: for :func:`sequence_loss_by_example` with a list of per-step logits,
        a list of per-step gradients; for :func:`linear_cross_entropy`, the tuple
        ``(d_hidden, d_weight)`` (and ``d_bias`` with a bias). Half precision is computed in float32. Lazy
        arrays (Dask) stay lazy. An example whose label is out of range on arrays
        that are not checked eagerly has a NaN loss and a NaN gradient row; an
        example of weight 0 has a gradient of exactly 0.

    Raises
    ------
    TypeError
        ``loss`` has no analytic gradient (e.g. :func:`logsumexp`), or the call
        uses a custom ``softmax_loss_function``.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> f = al.value_and_grad(al.sparse_softmax_cross_entropy)
    >>> value, grad = f(np.asarray([[0.0, 0.0], [0.0, 0.0]]), np.asarray([0, 1]), reduction="mean")
    >>> print(np.round(value, 6))
    0.693147
    >>> grad
    array([[-0.25,  0.25],
           [ 0.25, -0.25]])
    """
    rule = rule_of(loss)
    if rule is None:
        name = getattr(loss, "__name__", repr(loss))
        raise TypeError(
            f"value_and_grad has no analytic gradient for {name}; it supports {', '.join(registered_names())}"
        )

    def loss_value_and_grad(*arrays: Any, **options: Any) -> tuple[Array, Any]:
        linear = rule(*arrays, **options)
        value, residuals = linear.forward(*linear.primals)
        xp = namespace_of({"value": value}, None)
        grads = linear.backward(linear.primals, residuals, xp.ones_like(value))
        return value, linear.unpack(grads)

    return loss_value_and_grad
