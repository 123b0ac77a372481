"""Sigmoid (binary, multi-label) cross entropy and the focal loss: checks, forward pass, gradient rule.

Both losses are elementwise: each logit is an independent binary classifier. Both are
written from one exponential per element, :math:`e = \\exp(-|z|)`, which gives the
softplus terms and both sigmoids without overflow or cancellation at any logit:

.. math:: \\log(1 + e^{z}) = \\max(z, 0) + \\log(1 + e), \\qquad
          \\sigma(z) = \\frac{[z \\ge 0] + [z < 0]\\,e}{1 + e}, \\qquad
          1 - \\sigma(z) = \\frac{[z \\ge 0]\\,e + [z < 0]}{1 + e}
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, NamedTuple, cast

from ._autodiff import Rule, compute, differentiable
from ._lib._blocks import in_row_blocks, map_row_blocks, rows_per_block
from ._lib._labels import check_weights
from ._lib._ops import Ops
from ._lib._reduce import safe_divide
from ._lib._validation import (
    Array,
    ArrayT,
    Reduction,
    as_real,
    broadcast_like,
    check_broadcastable,
    check_floating,
    check_fraction,
    check_reduction,
    compute_dtype,
    in_compute_dtype,
    ops_of,
    same_shape,
    size_of,
)


class BinaryCall(NamedTuple):
    """A checked call of :func:`sigmoid_binary_cross_entropy` or :func:`sigmoid_focal_loss`
    (see :class:`~._autodiff.Call`); ``gamma`` is None for the plain cross entropy."""

    ops: Ops
    logits: Array
    targets: Array
    weights: Array | None
    pos_weight: Array | None
    label_smoothing: float
    alpha: float | None
    gamma: float | None
    reduction: Reduction

    @property
    def primals(self) -> tuple[Array, ...]:
        return (self.logits,)

    @property
    def constants(self) -> tuple[Any, ...]:
        return (self.targets, self.weights, self.pos_weight)

    @property
    def one_pass(self) -> bool:  # the gradient is a few elementwise steps more than the value
        return self.reduction != "none"


def check_binary(
    *,
    logits: Array,
    targets: Array,
    weights: Array | None,
    pos_weight: Array | None = None,
    label_smoothing: float = 0.0,
    alpha: float | None = None,
    gamma: float | None = None,
    reduction: Reduction,
    xp: ModuleType | None,
) -> BinaryCall:
    """Check the arguments of the two losses once; return the call's record."""
    named = {"logits": logits, "targets": targets, "weights": weights, "pos_weight": pos_weight}
    ops = ops_of(named, xp, optional=("weights", "pos_weight"))
    xp = ops.xp
    check_floating("logits", logits, xp)
    check_reduction(reduction)
    check_fraction("label_smoothing", label_smoothing)
    shape = tuple(logits.shape)
    if not same_shape(tuple(targets.shape), shape):
        raise ValueError(
            f"targets has shape {tuple(targets.shape)} but logits has shape {shape}; they must match"
        )
    if not xp.isdtype(targets.dtype, ("real floating", "integral", "bool")):
        raise TypeError(f"targets must have a real floating, integer or boolean dtype, got {targets.dtype}")
    if ops.is_eager(targets) and targets.dtype != xp.bool:
        _check_targets(targets, xp)
    if weights is not None:
        check_weights("weights", weights, shape, "logits", ops)
    if pos_weight is not None:
        check_floating("pos_weight", pos_weight, xp)
        check_broadcastable("pos_weight", pos_weight, shape, "logits")
    if alpha is not None:
        check_fraction("alpha", alpha)
    if gamma is not None and not 0.0 <= as_real("gamma", gamma) < math.inf:
        raise ValueError(f"gamma must be a non-negative finite number, got {gamma!r}")
    return BinaryCall(ops, logits, targets, weights, pos_weight, label_smoothing, alpha, gamma, reduction)


def _check_targets(targets: Array, xp: ModuleType) -> None:
    """Raise ``ValueError`` for targets outside [0, 1] (eager arrays only; two reductions, no
    temporaries). NaN fails too."""
    if size_of(tuple(targets.shape)) == 0 or (bool(xp.min(targets) >= 0) and bool(xp.max(targets) <= 1)):
        return
    if xp.isdtype(targets.dtype, "integral"):
        raise ValueError("targets of an integer dtype must be 0 or 1; it contains other values")
    raise ValueError("targets must be probabilities in [0, 1]; it contains values outside it or NaN")


def _element_terms(
    call: BinaryCall, z: Array, t: Array, w: Array | None, pos_weight: Array | None, *, derivative: bool
) -> tuple[Array, Array | None]:
    """The loss of each element of ``z`` (in its accumulation dtype) before weights, and its derivative
    with respect to ``z`` (None unless asked for).

    ``softplus(z) - t z`` is summed as ``(max(z, 0) - t z) + log(1 + e)``: exact for targets of 0
    and 1 at every logit (no cancellation of a large ``z`` against itself).
    """
    xp = call.ops.xp
    if w is not None:  # an element of weight 0 counts as absent, whatever its logit: no inf - inf, no NaN
        z = xp.where((w == 0) & ~xp.isfinite(z), xp.zeros_like(z), z)
    t = xp.astype(t, z.dtype, copy=False)
    if call.label_smoothing:
        t = t * (1.0 - call.label_smoothing) + call.label_smoothing / 2
    zero = xp.zeros((), dtype=z.dtype, device=call.ops.device(z))
    if call.ops.differentiates(z):
        # max(z, 0) and -|z| selected by one comparison: autodiff (JAX's, PyTorch's) takes both from
        # the same side at z = 0, where they give sigmoid(0) = 1/2 and its derivative 1/4; with max and
        # abs (JAX's abs'(0) = 1), or min and max (their second derivatives), it did not.
        nonnegative = z >= 0
        minus_abs, relu = xp.where(nonnegative, -z, z), xp.where(nonnegative, z, zero)
    else:  # the same values; NumPy's where on random signs is four times as slow as min and max
        minus_abs, relu = xp.minimum(z, -z), xp.maximum(z, zero)
    tail = xp.log1p(xp.exp(minus_abs))
    loss = (relu - t * z) + tail
    minus_log_p = None  # softplus(-z) = -log sigmoid(z)
    if pos_weight is not None:
        extra = (xp.astype(pos_weight, z.dtype, copy=False) - 1.0) * t
        minus_log_p = (relu - z) + tail
        loss = loss + extra * minus_log_p
    if not derivative and call.gamma is None:
        return loss, None
    p = xp.exp(-((relu - z) + tail) if minus_log_p is None else -minus_log_p)
    d_loss = p - t
    if pos_weight is not None:  # (1 - t) p - pw t (1 - p)
        d_loss = d_loss - extra * (1.0 - p)
    if call.gamma is not None:
        q = xp.exp(-(relu + tail))  # 1 - p, without cancellation
        loss, d_loss = _focal(loss, d_loss, p, q, t, call.gamma, xp)
        if call.alpha is not None:
            alpha_t = call.alpha * t + (1.0 - call.alpha) * (1.0 - t)
            loss, d_loss = alpha_t * loss, alpha_t * d_loss
    return loss, d_loss if derivative else None


def _focal(
    ce: Array, d_ce: Array, p: Array, q: Array, t: Array, gamma: float, xp: ModuleType
) -> tuple[Array, Array]:
    r"""The focal loss :math:`m^\gamma\,\ell` and its derivative, from the cross entropy :math:`\ell`.

    :math:`m = 1 - p_t = p(1-t) + qt` (no cancellation: :math:`q = 1 - p` is computed
    directly), :math:`dm/dz = pq(1-2t)`, so

    .. math:: \frac{d}{dz} m^\gamma \ell = m^\gamma \Big(\ell' + \gamma\,\ell\,(1 - 2t)\,\frac{pq}{m}\Big)

    where :math:`pq/m \le 2` is bounded, 0 where :math:`m = 0`: exact for any
    :math:`\gamma \ge 0`, also below 1 where :math:`m^{\gamma-1}` is unbounded.
    """
    if gamma == 0:
        return ce, d_ce
    m = p * (1.0 - t) + q * t
    modulating = m * m if gamma == 2 else m**gamma
    ratio = p * q / xp.where(m > 0, m, xp.ones_like(m))
    return modulating * ce, modulating * (d_ce + (gamma * ce) * (1.0 - 2.0 * t) * ratio)


class _Inputs(NamedTuple):
    """The side inputs of a call broadcast to the logits (views where the library has them), and the
    denominator of the mean."""

    side: tuple[Array, ...]  # targets, then weights and pos_weight where the call has them
    denominator: Array | None  # of the mean


def _inputs(call: BinaryCall, logits: Array) -> _Inputs:
    ops = call.ops
    xp = ops.xp
    dtype = compute_dtype(logits.dtype, xp)
    side = [call.targets]
    denominator = None
    if call.weights is not None:
        w = broadcast_like(xp.astype(call.weights, dtype, copy=False), logits, xp)
        side.append(w)
        if call.reduction == "mean":
            denominator = xp.sum(w)
    elif call.reduction == "mean":
        size = size_of(tuple(logits.shape))
        if size is None:  # an unknown dimension: counted by the array library
            denominator = ops.total_sum(xp.ones_like(logits, dtype=dtype))
        else:
            denominator = xp.asarray(float(size), dtype=dtype, device=ops.device(logits))
    if call.pos_weight is not None:
        side.append(broadcast_like(xp.astype(call.pos_weight, dtype, copy=False), logits, xp))
    return _Inputs(tuple(side), denominator)


def _unpack(call: BinaryCall, side: tuple[Array, ...]) -> tuple[Array, Array | None, Array | None]:
    """Targets, weights and pos_weight out of ``side`` (rows of :attr:`_Inputs.side`)."""
    t, rest = side[0], list(side[1:])
    w = rest.pop(0) if call.weights is not None else None
    pw = rest.pop(0) if call.pos_weight is not None else None
    return t, w, pw


def _in_blocks(z: Array, inputs: _Inputs, ops: Ops) -> tuple[int | None, tuple[Array, ...]]:
    """Rows per block (None: one piece) and the arrays as rows, for :func:`map_row_blocks`."""
    block = rows_per_block(None, z, ops, block_bytes=ops.elementwise_block_bytes)
    arrays = (z, *inputs.side)
    if block is None:
        return None, arrays
    xp = ops.xp
    return block, tuple(xp.reshape(a, (-1, z.shape[-1])) for a in arrays)


def _total(call: BinaryCall, inputs: _Inputs, weighted_sums: Array) -> Array:
    """The scalar loss from the sums of the weighted losses."""
    ops = call.ops
    total = ops.total_sum(weighted_sums)
    if call.reduction == "sum":
        return total
    return safe_divide(total, inputs.denominator, ops)


def _forward(call: BinaryCall, logits: Array) -> tuple[Array, tuple[Array, ...]]:
    ops = call.ops
    xp = ops.xp
    inputs = _inputs(call, logits)

    def weighted_losses(z: Array, *side: Array) -> tuple[Array]:
        t, w, pw = _unpack(call, side)
        loss = _element_terms(call, z, t, w, pw, derivative=False)[0]
        return (loss if w is None else loss * w,)

    if call.reduction == "none":
        loss = in_row_blocks(
            weighted_losses, logits, inputs.side, ops, block_bytes=ops.elementwise_block_bytes
        )[0]
        return xp.astype(loss, logits.dtype, copy=False), ()
    block, arrays = _in_blocks(logits, inputs, ops)

    def row_sums(z: Array, *side: Array) -> Array:
        return xp.sum(weighted_losses(in_compute_dtype(z, xp), *side)[0], axis=-1)

    sums = map_row_blocks(row_sums, arrays, block, ops)
    return ops.as_result(_total(call, inputs, sums), logits.dtype), ()


def _value_and_gradient(
    call: BinaryCall, logits: Array, cotangent: Array | None
) -> tuple[Array | None, Array]:
    """The gradient of ``sum(cotangent * value)`` for the logits, and with ``cotangent=None`` (ones, for
    a scalar reduction) the value computed in the same pass (else None)."""
    ops = call.ops
    xp = ops.xp
    inputs = _inputs(call, logits)
    dtype = compute_dtype(logits.dtype, xp)
    scale = xp.ones((), dtype=dtype, device=ops.device(logits)) if cotangent is None else cotangent
    scale = xp.astype(scale, dtype, copy=False)
    if inputs.denominator is not None:
        scale = safe_divide(scale, inputs.denominator, ops)
    per_element = call.reduction == "none"  # a cotangent of the logits' shape, in blocks with them

    def gradient_rows(z: Array, *rows: Array) -> tuple[Array, ...]:
        factor = rows[-1] if per_element else scale
        t, w, pw = _unpack(call, rows[:-1] if per_element else rows)
        loss, d_loss = _element_terms(call, z, t, w, pw, derivative=True)
        grad = (factor if w is None else factor * w) * d_loss
        if cotangent is not None:
            return (grad,)
        return grad, xp.sum(loss if w is None else loss * w, axis=-1)

    side = (*inputs.side, scale) if per_element else inputs.side
    grad, *sums = in_row_blocks(gradient_rows, logits, side, ops, block_bytes=ops.elementwise_block_bytes)
    value = ops.as_result(_total(call, inputs, sums[0]), logits.dtype) if sums else None
    return value, xp.astype(grad, logits.dtype, copy=False)


def _backward(
    call: BinaryCall, primals: tuple[Array, ...], residuals: tuple[Array, ...], cotangent: Array
) -> tuple[Array]:
    return (_value_and_gradient(call, primals[0], cotangent)[1],)


def _fused(call: BinaryCall, logits: Array) -> tuple[Array, tuple[Array]]:
    value, grad = _value_and_gradient(call, logits, None)
    assert value is not None  # a scalar reduction
    return value, (grad,)


RULE = Rule(check_binary, _forward, _backward, _fused)  # both losses: check_binary takes either's options


@differentiable(RULE)
def sigmoid_binary_cross_entropy(
    logits: ArrayT,
    targets: Array,
    /,
    *,
    weights: Array | None = None,
    pos_weight: Array | None = None,
    label_smoothing: float = 0.0,
    reduction: Reduction = "none",
    xp: ModuleType | None = None,
) -> ArrayT:
    r"""Sigmoid cross entropy of each logit against a binary (or soft) target: multi-label loss.

    .. math:: \ell = -\big(w_+\, t \log \sigma(z) + (1 - t) \log(1 - \sigma(z))\big),
              \qquad t \leftarrow (1 - \varepsilon)\,t + \varepsilon / 2

    computed as :math:`w_+ t\,\operatorname{softplus}(-z) + (1-t)\operatorname{softplus}(z)`:
    no logarithm of 0 and no overflow at any logit (also :math:`|z| = 10^4` in float32).

    Parameters
    ----------
    logits : array
        Real floating logits, any shape; float16 and bfloat16 are accumulated in float32.
    targets : array
        The shape of ``logits``: probabilities in [0, 1] (real floating), or 0/1
        (integer or boolean). Checked on eager host arrays.
    weights : array, optional
        Non-negative weights of the elements, broadcastable to ``logits``. An element
        of weight 0 counts as absent, even where its logit is not finite.
    pos_weight : array, optional
        :math:`w_+`, the weight of the positive term, broadcastable to ``logits``
        (PyTorch's ``pos_weight``: one per class for a ``(..., C)`` multi-label
        problem).
    label_smoothing : float in [0, 1], optional
        :math:`\varepsilon` above (Keras' ``label_smoothing``).
    reduction : {"none", "sum", "mean"}, optional
        ``"none"`` keeps the shape of ``logits``; ``"mean"`` is ``sum(weights * loss) /
        sum(weights)`` over the elements (0 when the weights sum to 0), the plain mean
        without weights.
    xp : namespace, optional
        Force an array namespace; inferred from the arrays when omitted.

    Returns
    -------
    array
        In the namespace, on the device, and with the dtype of ``logits``.

    Notes
    -----
    PyTorch's ``F.binary_cross_entropy_with_logits`` with ``weight=`` divides its mean
    by the number of elements, not by the sum of the weights; optax's
    ``sigmoid_binary_cross_entropy`` is ``reduction="none"`` without weights.

    References
    ----------
    .. [1] PyTorch, ``torch.nn.BCEWithLogitsLoss``.
    .. [2] optax, ``optax.losses.sigmoid_binary_cross_entropy``.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> logits = np.asarray([[2.0, -1.0], [0.0, 1e4]])
    >>> targets = np.asarray([[1.0, 0.0], [1.0, 0.0]])
    >>> al.sigmoid_binary_cross_entropy(logits, targets)
    array([[1.26928011e-01, 3.13261688e-01],
           [6.93147181e-01, 1.00000000e+04]])
    """
    call = check_binary(
        logits=logits,
        targets=targets,
        weights=weights,
        pos_weight=pos_weight,
        label_smoothing=label_smoothing,
        reduction=reduction,
        xp=xp,
    )
    return cast(ArrayT, compute(RULE, call))


@differentiable(RULE)
def sigmoid_focal_loss(
    logits: ArrayT,
    targets: Array,
    /,
    *,
    alpha: float | None = None,
    gamma: float = 2.0,
    weights: Array | None = None,
    reduction: Reduction = "none",
    xp: ModuleType | None = None,
) -> ArrayT:
    r"""The focal loss of Lin et al.: the sigmoid cross entropy, down-weighted where it is small.

    .. math:: \ell = \alpha_t\,(1 - p_t)^\gamma\,\mathrm{BCE}(z, t), \qquad
              p_t = p\,t + (1 - p)(1 - t), \quad \alpha_t = \alpha t + (1 - \alpha)(1 - t)

    with :math:`p = \sigma(z)` and :math:`\alpha_t = 1` when ``alpha`` is None, as
    optax's ``sigmoid_focal_loss`` and torchvision's ``sigmoid_focal_loss``. The
    gradient is exact for every :math:`\gamma \ge 0`, also :math:`\gamma < 1` where
    :math:`p_t \to 1` (no NaN).

    Parameters
    ----------
    logits, targets, weights, reduction, xp
        As in :func:`sigmoid_binary_cross_entropy`.
    alpha : float in [0, 1], optional
        The weight of the positive class; None: no class weighting.
    gamma : float, optional
        The focusing exponent, non-negative. 0 gives the (alpha-weighted) sigmoid
        cross entropy.

    Returns
    -------
    array
        In the namespace, on the device, and with the dtype of ``logits``.

    References
    ----------
    .. [1] T.-Y. Lin, P. Goyal, R. Girshick, K. He, P. Dollár, "Focal Loss for Dense
           Object Detection", ICCV 2017. https://arxiv.org/abs/1708.02002

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> logits = np.asarray([3.0, -1.0, 0.0])
    >>> targets = np.asarray([1.0, 1.0, 0.0])
    >>> al.sigmoid_focal_loss(logits, targets, alpha=0.25, gamma=2.0)
    array([2.73208311e-05, 1.75467076e-01, 1.29965096e-01])
    """
    call = check_binary(
        logits=logits,
        targets=targets,
        weights=weights,
        alpha=alpha,
        gamma=gamma,
        reduction=reduction,
        xp=xp,
    )
    return cast(ArrayT, compute(RULE, call))
