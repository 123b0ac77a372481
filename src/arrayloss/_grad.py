"""Analytic gradients of every loss, written once in the array API.

Each public loss has a *rule* (registered in :mod:`._autodiff`'s table with
:func:`~._autodiff.register_rule`) that splits one call into the differentiated
arrays, a forward pass (the loss itself) and a backward pass (the vector-Jacobian
product, ``softmax - target`` scaled by the weights and the reduction). The same
rule serves :func:`value_and_grad` on libraries without autodiff (NumPy, CuPy,
Dask, array-api-strict) and PyTorch autograd (:func:`~._autodiff.analytic_backward`).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from types import ModuleType
from typing import Any

from array_api_compat import device, is_numpy_array, is_torch_array

from ._autodiff import Linearization, NotDifferentiable, register_rule, registered_names, rule_of
from ._chunking import rows_per_chunk, scratch_block
from ._cross_entropy import (
    checked_dense_logits,
    checked_sparse_logits,
    dense_block_terms,
    example_weights,
    label_indices,
    prepare_labels,
    softmax_cross_entropy,
    sparse_loss_and_row_stats,
    sparse_softmax_cross_entropy,
    terms_from_row_stats,
)
from ._native import torch_delegates
from ._reduce import apply_weights, as_result, reduce_losses, safe_divide
from ._sequence import (
    SEQUENCE_FLAGS,
    _stacked,
    _step_weights,
    check_step_logits,
    checked_flags,
    reduce_steps,
    sequence_loss,
    sequence_loss_by_example,
    step_scale,
)
from ._special import difference, exp_of_temporary, exp_sums, shifted_log_sum
from ._validation import (
    Array,
    check_labels,
    class_axis_last,
    compute_dtype,
    in_compute_dtype,
    is_eager_host,
    namespace_of,
    normalize_axis,
)


@functools.cache
def _parameters(loss: Callable[..., Any]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The names of the positional-only parameters of ``loss`` and its keyword-only defaults."""
    parameters = inspect.signature(loss).parameters.values()
    positional = tuple(p.name for p in parameters if p.kind is p.POSITIONAL_ONLY)
    defaults = {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}
    return positional, defaults


def _bind(loss: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every argument of a call to ``loss`` by name, defaults included."""
    positional, defaults = _parameters(loss)
    if len(args) == len(positional) and kwargs.keys() <= defaults.keys():  # a few us, not inspect's 25
        return {**dict(zip(positional, args, strict=True)), **defaults, **kwargs}
    bound = inspect.signature(loss).bind(*args, **kwargs)  # the general case, and a call's TypeError
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
    row_gradient: Callable[..., tuple[Array, ...]],
    z: Array,
    per_row: tuple[Array, ...],
    xp: ModuleType,
    *,
    chunk_size: int | None = None,
    scratch: bool = False,
) -> tuple[Array, ...]:
    """``row_gradient(z, *per_row)``, computed in blocks of rows on eager host arrays.

    ``row_gradient`` maps rows of ``z`` (classes last) and of the ``per_row`` arrays
    (the leading shape of ``z``, maybe with trailing axes of their own) to a tuple:
    gradient rows of ``z``'s shape and dtype, then any number of arrays of one value
    per row (such as the rows' losses), which are concatenated. The blocks follow the
    rule of :func:`~arrayloss._chunking.rows_per_chunk` (``chunk_size`` if given): a
    block stays in the CPU cache through the several elementwise steps of the
    gradient, and each finished block is written into the gradient, so that no other
    logits-sized array is ever alive (eager host arrays are writable). Other arrays
    get one call. With ``scratch``, blocks of eager host arrays are passed a writable
    ``scratch=`` array of the block's size, which ``row_gradient`` may overwrite and
    return its gradient rows in (see :func:`~._special.exp_sums`): the block's own
    rows of the gradient on NumPy and PyTorch, one shared array elsewhere.
    """
    chunk = rows_per_chunk(chunk_size, z, xp)
    if chunk is None:
        return row_gradient(z, *per_row)
    lead = tuple(z.shape[:-1])
    rows = tuple(xp.reshape(a, (-1, *a.shape[len(lead) :])) for a in (z, *per_row))
    count = rows[0].shape[0]
    grad = xp.empty(rows[0].shape, dtype=z.dtype, device=device(z))
    # NumPy and PyTorch slices are views: there a block is computed in the gradient's own rows (a
    # measured speed-up: one copy of every block fewer). Other writable arrays share one scratch block.
    in_place = scratch and (is_numpy_array(grad) or is_torch_array(grad))
    shared = None
    if scratch and is_eager_host(z) and not in_place:
        shared = scratch_block(rows[0], chunk, xp)
    values: list[list[Array]] = []
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)  # the standard leaves out-of-bounds slice stops unspecified
        block = grad[start:stop, ...] if in_place else shared
        work = {} if block is None else {"scratch": block}
        grad_rows, *row_values = row_gradient(*(a[start:stop, ...] for a in rows), **work)
        if not (in_place and grad_rows is block):  # not already written in place
            grad[start:stop, ...] = grad_rows
        values.append(row_values)
    per_value = (xp.reshape(xp.concat(parts, axis=0), lead) for parts in zip(*values, strict=True))
    return (xp.reshape(grad, tuple(z.shape)), *per_value)


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

    def rows(
        z: Array, safe_labels: Array, scale: Array, *stats: Array, scratch: Array | None = None
    ) -> tuple[Array]:
        return (_sparse_rows(z, safe_labels, scale, stats, label_smoothing, z_loss, masked, xp, scratch),)

    return in_row_blocks(rows, z, (safe_labels, scale, *(row_stats or ())), xp, scratch=True)[0]


def _sparse_rows(
    z: Array,
    safe_labels: Array,
    scale: Array,
    row_stats: tuple[Array, ...],
    label_smoothing: float,
    z_loss: float,
    masked: bool,
    xp: ModuleType,
    scratch: Array | None,
) -> Array:
    softmax, lse = _softmax_and_lse(z, scale, row_stats, masked, xp, scratch)
    coefficient = scale[..., None]
    if z_loss:
        coefficient = coefficient * (1.0 + 2.0 * z_loss * lse)
    softmax *= coefficient  # our temporary: in place where the library allows it
    return _subtract_targets(softmax, safe_labels, scale, label_smoothing, xp)


def sparse_rows_and_loss(
    z: Array,
    safe_labels: Array,
    scale: Array,
    *,
    label_smoothing: float,
    z_loss: float,
    masked: bool,
    xp: ModuleType,
    scratch: Array | None = None,
) -> tuple[Array, Array]:
    """The gradient rows of :func:`sparse_logits_vjp` and the rows' losses, from one exponential of ``z``.

    ``z`` are rows of logits (classes last, accumulation dtype); the losses are
    :func:`~._cross_entropy.label_terms`, unweighted. With ``masked``, rows of scale 0
    are computed from zero logits: their gradient is 0 and their loss finite, for
    the caller to weight by 0. The gradient rows may be written into ``scratch``
    (see :func:`~._special.exp_sums`).
    """
    eager = is_eager_host(z)
    if masked and not eager:  # values are not read: rows of scale 0 are zeroed
        z = _zero_dropped_rows(z, scale, xp)
    shift, exps, total, log_sum = exp_sums(z, xp, scratch=scratch)
    # Eager arrays: rows of scale 0 whose logits are not finite (their log_sum is not) are computed
    # again from zeros; other rows of scale 0 get exactly 0 anyway (finite exps times 0).
    if masked and eager and _unsafe_dropped_rows(log_sum[..., 0], scale, xp):
        z = _zero_dropped_rows(z, scale, xp)
        shift, exps, total, log_sum = exp_sums(z, xp, scratch=scratch)
    loss = terms_from_row_stats(
        z, safe_labels, shift, log_sum, label_smoothing=label_smoothing, z_loss=z_loss, xp=xp
    )
    coefficient = scale[..., None] / total  # softmax = exps / total
    if z_loss:
        coefficient = coefficient * (1.0 + 2.0 * z_loss * (shift + log_sum))
    # In place where the library allows it: one block-sized temporary fewer per block, which keeps
    # glibc from returning the freed blocks to the system and faulting them in again for the next.
    exps *= coefficient
    return _subtract_targets(exps, safe_labels, scale, label_smoothing, xp), loss


def _subtract_targets(
    grad: Array, safe_labels: Array, scale: Array, label_smoothing: float, xp: ModuleType
) -> Array:
    """``grad`` minus the smoothed one-hot targets of ``safe_labels`` times ``scale`` (one per row).

    ``grad`` is a temporary of the caller: on NumPy and PyTorch rows (2-d), its label
    entries are assigned by index (a measured speed-up, see ``benchmarks/RESULTS.md``:
    the comparison with every class costs a pass over the block); the standard path
    compares with every class. Both compute ``grad - target`` in the same order: the
    same numbers.
    """
    num_classes = grad.shape[-1]
    uniform = scale * (label_smoothing / num_classes)
    at_label = scale * (1.0 - label_smoothing) + uniform
    index = label_indices(safe_labels, xp)
    if grad.ndim == 2 and (is_numpy_array(grad) or is_torch_array(grad)):
        at_labels = xp.take_along_axis(grad, index[:, None], axis=-1)[:, 0] - at_label
        if label_smoothing:
            grad -= uniform[:, None]
        grad[xp.arange(grad.shape[0], dtype=index.dtype, device=device(grad)), index] = at_labels
        return grad
    classes = xp.arange(num_classes, dtype=index.dtype, device=device(grad))
    return grad - xp.where(classes == index[..., None], at_label[..., None], uniform[..., None])


def _softmax_and_lse(
    z: Array,
    scale: Array,
    row_stats: tuple[Array, ...],
    masked: bool,
    xp: ModuleType,
    scratch: Array | None = None,
) -> tuple[Array, Array]:
    """Softmax over the last axis and the log-sum-exp (kept axis) of the rows ``z``.

    The softmax is ``exp((z - shift) - log_sum)``, accurate for huge logits too, from the
    rows' ``row_stats = (shift, log_sum)`` (leading shape of ``z``), or from
    :func:`~._special.shifted_log_sum` when ``row_stats`` is empty. With ``masked``, the
    rows of ``scale`` 0 are computed from zeros (finite, never NaN from ``inf - inf``);
    on eager host arrays only when one of them is not finite (its log-sum-exp shows
    it), which spares a block-sized temporary. The softmax is a temporary of the
    caller, computed in ``scratch`` if given (see :func:`~._special.exp_sums`).
    """
    if row_stats:
        shift, log_sum = row_stats[0][..., None], row_stats[1][..., None]
    else:
        shift, log_sum = shifted_log_sum(z, xp, scratch=scratch)
    lse = shift + log_sum
    if masked and _unsafe_dropped_rows(lse[..., 0], scale, xp):
        z, shift, log_sum = (_zero_dropped_rows(a, scale, xp) for a in (z, shift, log_sum))
        lse = shift + log_sum
    shifted = difference(z, shift, xp, scratch=scratch)
    shifted -= log_sum  # as (z - shift) - log_sum, in place
    return exp_of_temporary(shifted, xp), lse


def _unsafe_dropped_rows(finite_if_safe: Array, scale: Array, xp: ModuleType) -> bool:
    """Whether the rows of ``scale`` 0 must be zeroed before their gradient is taken.

    On eager host arrays: where one of them has a ``finite_if_safe`` value (its
    log-sum-exp) that is not finite. Always on other arrays, whose values are not read.
    """
    if not is_eager_host(scale):
        return True
    return bool(xp.any((scale == 0) & ~xp.isfinite(finite_if_safe)))


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

    def rows(z: Array, targets: Array, scale: Array, scratch: Array | None = None) -> tuple[Array]:
        return (_dense_rows(z, targets, scale, label_smoothing, masked, xp, scratch),)

    return in_row_blocks(rows, z, (targets, scale), xp, scratch=True)[0]


def _dense_rows(
    z: Array,
    targets: Array,
    scale: Array,
    label_smoothing: float,
    masked: bool,
    xp: ModuleType,
    scratch: Array | None,
) -> Array:
    coefficient = scale[..., None]
    mass = (1.0 - label_smoothing) * xp.sum(targets, axis=-1, keepdims=True) + label_smoothing
    grad = _softmax_and_lse(z, scale, (), masked, xp, scratch)[0]  # our temporary: updated in place
    grad *= coefficient * mass
    return _subtract_dense_targets(grad, targets, coefficient, label_smoothing)


def _subtract_dense_targets(grad: Array, targets: Array, coefficient: Array, label_smoothing: float) -> Array:
    """``grad`` (a temporary, changed in place) minus the smoothed ``targets`` times ``coefficient``."""
    grad -= targets * (coefficient * (1.0 - label_smoothing))
    if label_smoothing:
        grad -= coefficient * (label_smoothing / grad.shape[-1])
    return grad


def dense_rows_and_loss(
    z: Array,
    targets: Array,
    scale: Array,
    *,
    label_smoothing: float,
    masked: bool,
    xp: ModuleType,
    scratch: Array | None = None,
) -> tuple[Array, Array]:
    """The gradient rows of :func:`dense_logits_vjp` and the rows' losses, from one exponential of ``z``.

    Eager host arrays (:func:`~._cross_entropy.dense_block_terms`); ``masked`` and ``scratch``
    as in :func:`sparse_rows_and_loss`.
    """
    terms = dense_block_terms(z, targets, label_smoothing=label_smoothing, xp=xp, scratch=scratch)
    if masked and _unsafe_dropped_rows(terms.log_sum[..., 0], scale, xp):
        zeroed = _zero_dropped_rows(z, scale, xp)
        terms = dense_block_terms(zeroed, targets, label_smoothing=label_smoothing, xp=xp, scratch=scratch)
    coefficient = scale[..., None]
    grad = terms.exps  # softmax = exps / total
    grad *= coefficient * (terms.mass[..., None] / terms.total)
    return _subtract_dense_targets(grad, targets, coefficient, label_smoothing), terms.loss


def _as_input(grad: Array, like: Array, axis: int, xp: ModuleType) -> Array:
    """A classes-last gradient back in the layout (class ``axis``) and dtype of the input ``like``."""
    grad = grad if axis == like.ndim - 1 else xp.moveaxis(grad, -1, axis)
    return xp.astype(grad, like.dtype, copy=False)


def _only(grads: tuple[Array, ...]) -> Array:
    return grads[0]


def _sparse_scale(
    labels: Array, cotangent: Array, z: Array, options: dict[str, Any], xp: ModuleType
) -> tuple[Array, Array | None, Array, Array | None]:
    """``(safe_labels, weights, scale, poisoned)`` for the gradient of a sparse cross entropy.

    ``weights`` are the combined example weights, ``scale`` as :func:`example_scale`,
    ``poisoned`` as :func:`~._cross_entropy.prepare_labels`: such a label (out of range,
    on arrays not checked eagerly) gets a NaN scale, so a NaN gradient. ``z`` are the
    classes-last logits in the accumulation dtype.
    """
    ignore_index = options["ignore_index"]
    safe_labels, counted, poisoned = prepare_labels(labels, z.shape[-1], ignore_index, xp)
    w = example_weights(options["weights"], options["class_weights"], labels, counted, z.dtype, xp)
    scale = example_scale(cotangent, w, options["reduction"], tuple(labels.shape), z.dtype, xp)
    if poisoned is not None:
        scale = xp.where(poisoned, xp.full_like(scale, math.nan), scale)
    return safe_labels, w, scale, poisoned


def gradient_and_losses(
    z: Array,
    safe_labels: Array,
    scale: Array,
    *,
    label_smoothing: float,
    z_loss: float,
    masked: bool,
    xp: ModuleType,
    chunk_size: int | None,
) -> tuple[Array, Array]:
    """The gradient of :func:`sparse_logits_vjp` and the rows' unweighted losses, block by block.

    Each block of rows of ``z`` is exponentiated once (:func:`sparse_rows_and_loss`),
    in the gradient's own rows where the library allows it (:func:`in_row_blocks`).
    """

    def rows(z: Array, safe_labels: Array, scale: Array, scratch: Array | None = None) -> tuple[Array, Array]:
        return sparse_rows_and_loss(
            z,
            safe_labels,
            scale,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            masked=masked,
            xp=xp,
            scratch=scratch,
        )

    grad, loss = in_row_blocks(rows, z, (safe_labels, scale), xp, chunk_size=chunk_size, scratch=True)
    return grad, loss


def sparse_value_and_grad(logits: Array, labels: Array, **options: Any) -> tuple[Array, Array]:
    """:func:`sparse_softmax_cross_entropy` and its gradient with respect to ``logits``, in one pass.

    ``options`` are every keyword of :func:`sparse_softmax_cross_entropy`. The gradient
    is that of ``sum(value)``. Each block of rows is exponentiated once, for its loss
    and its gradient (:func:`in_row_blocks`; blocks of ``chunk_size`` rows if given).
    """
    xp, axis, z, ignore_index = checked_sparse_logits(logits, labels, **options)
    options = options | {"ignore_index": ignore_index}
    shape = () if options["reduction"] != "none" else tuple(labels.shape)
    ones = xp.ones(shape, dtype=z.dtype, device=device(z))
    safe_labels, w, scale, poisoned = _sparse_scale(labels, ones, z, options, xp)
    grad, loss = gradient_and_losses(
        z,
        safe_labels,
        scale,
        label_smoothing=options["label_smoothing"],
        z_loss=options["z_loss"],
        masked=w is not None,
        xp=xp,
        chunk_size=options["chunk_size"],
    )
    value = reduce_losses(loss, w, options["reduction"], xp, poisoned=poisoned)
    return as_result(value, logits.dtype, xp), _as_input(grad, logits, axis, xp)


def _sparse_rule(*args: Any, **kwargs: Any) -> Linearization:
    options = _bind(sparse_softmax_cross_entropy, args, kwargs)
    logits, labels = options.pop("logits"), options.pop("labels")

    def forward(logits: Array) -> tuple[Array, tuple[Array, ...]]:
        return sparse_loss_and_row_stats(logits, labels, **options)

    def fused(logits: Array) -> tuple[Array, tuple[Array, ...]]:
        value, grad = sparse_value_and_grad(logits, labels, **options)
        return value, (grad,)

    def backward(primals: tuple[Array, ...], residuals: tuple[Array, ...], cotangent: Array) -> tuple[Array]:
        (x,) = primals
        xp = namespace_of({"logits": x}, options["xp"])
        axis = normalize_axis(options["axis"], x.ndim)
        z = in_compute_dtype(class_axis_last(x, axis, xp), xp)
        safe_labels, w, scale, _ = _sparse_scale(labels, cotangent, z, options, xp)
        grad = sparse_logits_vjp(
            z,
            safe_labels,
            scale,
            label_smoothing=options["label_smoothing"],
            z_loss=options["z_loss"],
            masked=w is not None,
            xp=xp,
            row_stats=(residuals[0], residuals[1]) if residuals else None,
        )
        return (_as_input(grad, x, axis, xp),)

    # The gradient in the forward pass, scaled by the cotangent later: one pass over the logits
    # fewer, on eager host arrays (measured, benchmarks/RESULTS.md); elsewhere a compiler fuses.
    one_pass = options["reduction"] != "none" and is_eager_host(logits)
    return Linearization(
        (logits,),
        forward,
        backward,
        (options["weights"], options["class_weights"]),
        _only,
        fused if one_pass else None,
        delegated=torch_delegates(logits, labels, options),
    )


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

    def fused(logits: Array) -> tuple[Array, tuple[Array, ...]]:
        value, grad = _dense_value_and_grad(logits, targets, options)
        return value, (grad,)

    # As for the sparse cross entropy: the gradient in the forward pass, for a scalar loss on eager
    # host arrays.
    one_pass = options["reduction"] != "none" and is_eager_host(logits)
    return Linearization((logits,), forward, backward, (weights, targets), _only, fused if one_pass else None)


def _dense_value_and_grad(logits: Array, targets: Array, options: dict[str, Any]) -> tuple[Array, Array]:
    """A scalar :func:`softmax_cross_entropy` and its gradient, from one exponential of each block."""
    xp, axis, z, t, w = checked_dense_logits(logits, targets, **options)
    ones = xp.ones((), dtype=z.dtype, device=device(z))
    scale = example_scale(ones, w, options["reduction"], tuple(z.shape[:-1]), z.dtype, xp)

    def rows(z: Array, t: Array, scale: Array, scratch: Array | None = None) -> tuple[Array, Array]:
        return dense_rows_and_loss(
            z,
            t,
            scale,
            label_smoothing=options["label_smoothing"],
            masked=w is not None,
            xp=xp,
            scratch=scratch,
        )

    grad, loss = in_row_blocks(rows, z, (t, scale), xp, scratch=True)
    value = reduce_losses(loss, w, options["reduction"], xp)
    return as_result(value, logits.dtype, xp), _as_input(grad, logits, axis, xp)


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
    # Checked here: the one-pass gradient below replaces the forward pass that would check them.
    flags = checked_flags(**{name: options[name] for name in SEQUENCE_FLAGS})
    arrays = {"logits": logits, "targets": targets, "weights": weights}
    namespace_of(arrays, options["xp"], optional=("weights",))

    def forward(logits: Array) -> tuple[Array, tuple[Array, ...]]:
        return sequence_loss(logits, targets, weights, **options), ()

    def backward(primals: tuple[Array, ...], residuals: tuple[Array, ...], cotangent: Array) -> tuple[Array]:
        (x,) = primals
        xp = namespace_of({"logits": x}, options["xp"])
        w = _step_weights(weights, tuple(x.shape[:2]), compute_dtype(x.dtype, xp), xp, x)
        return (_step_vjp(x, targets, step_scale(cotangent, w, flags, xp), xp),)

    def fused(logits: Array) -> tuple[Array, tuple[Array, ...]]:
        value, grad = _sequence_value_and_grad(logits, targets, weights, flags, options["xp"])
        return value, (grad,)

    # As for the sparse cross entropy: the gradient in the forward pass, for a scalar loss with
    # integer targets on eager host arrays.
    over_time = flags["average_across_timesteps"] or flags["sum_over_timesteps"]
    scalar = over_time and (flags["average_across_batch"] or flags["sum_over_batch"])
    one_pass = scalar and targets.ndim == 2 and is_eager_host(logits)
    return Linearization((logits,), forward, backward, (weights, targets), _only, fused if one_pass else None)


def _sequence_value_and_grad(
    logits: Array, targets: Array, weights: Array | None, flags: dict[str, bool], xp: ModuleType | None
) -> tuple[Array, Array]:
    """A scalar :func:`sequence_loss` of integer ``targets`` and its gradient, from one exponential."""
    xp = namespace_of({"logits": logits, "targets": targets, "weights": weights}, xp, optional=("weights",))
    check_step_logits(logits, xp)
    check_labels(targets, tuple(logits.shape[:2]), xp, "targets")
    z = in_compute_dtype(logits, xp)
    w = _step_weights(weights, tuple(targets.shape), z.dtype, xp, logits)
    scale = step_scale(xp.ones((), dtype=z.dtype, device=device(z)), w, flags, xp)
    # Eager arrays only (the rule's condition): the targets' values were checked, none is poisoned.
    safe_labels, _, _ = prepare_labels(targets, z.shape[-1], None, xp, "targets")
    grad, losses = gradient_and_losses(
        z, safe_labels, scale, label_smoothing=0.0, z_loss=0.0, masked=True, xp=xp, chunk_size=None
    )
    value = as_result(reduce_steps(losses, w, flags, xp), logits.dtype, xp)
    return value, xp.astype(grad, logits.dtype, copy=False)


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
        if linear.fused is not None:
            value, grads = linear.fused(*linear.primals)
        else:
            value, residuals = linear.forward(*linear.primals)
            xp = namespace_of({"value": value}, None)
            grads = linear.backward(linear.primals, residuals, xp.ones_like(value))
        return value, linear.unpack(grads)

    return loss_value_and_grad
