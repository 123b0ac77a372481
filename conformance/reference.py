"""Float64 NumPy references for the conformance suite, written from the definitions.

Independent of arrayloss: every function takes and returns NumPy float64 and spells
out the formula one example (one row of classes) at a time. Slow, plain and meant to
be read next to the documentation, not to be fast.

Conventions shared with arrayloss's documentation (not with its code):

- an example of weight exactly 0 contributes 0, even if its loss is ``inf`` or NaN;
- ``"mean"`` is ``sum(w * loss) / sum(w)``, and 0 when ``sum(w)`` is 0; without any
  weight it is the plain mean (0 for an empty batch).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np

__all__ = [
    "TFA_FORBIDDEN",
    "ctc",
    "dense_ce",
    "kl_divergence",
    "legacy_sequence_loss_by_example",
    "logsumexp",
    "sigmoid_bce",
    "sigmoid_focal",
    "sparse_ce",
    "tfa_flag_combinations",
    "tfa_reduce",
    "tfa_sequence_loss",
]


def _row_logsumexp(row: np.ndarray) -> float:
    """log(sum(exp(row))) of one 1-D row of float64 values."""
    if np.isnan(row).any():
        return math.nan
    if (row == math.inf).any():
        return math.inf
    if (row == -math.inf).all():
        return -math.inf
    largest = float(row.max())
    return largest + math.log(sum(math.exp(v - largest) for v in row.tolist()))


def logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log(sum(exp(x))) along ``axis`` (removed).

    A slice of all ``-inf`` gives ``-inf``, one holding ``+inf`` gives ``+inf``, one holding NaN gives NaN.
    """
    rows = np.moveaxis(np.asarray(x, dtype=np.float64), axis, -1)
    out = np.empty(rows.shape[:-1], dtype=np.float64)
    for index in np.ndindex(out.shape):
        out[index] = _row_logsumexp(rows[index])
    return out


def _shift_by_max(z: np.ndarray) -> tuple[np.ndarray, float]:
    """``(z - m, m)`` with ``m`` the row's maximum (0 if that is not finite).

    Losses are written in the shifted row, so that a huge common offset of the logits
    (1e30) does not round ``log(sum(exp(z - m)))`` away.
    """
    largest = float(z.max())
    m = largest if math.isfinite(largest) else 0.0
    return z - m, m


# The loss of a row holding +inf or NaN is NaN (inf - inf): no warning, the tests check the values.
@np.errstate(invalid="ignore")
def _sparse_example_loss(z: np.ndarray, label: int, label_smoothing: float, z_loss: float) -> float:
    """(1-eps)(lse(z) - z_y) + eps(lse(z) - mean(z)) + lam * lse(z)^2 for one row ``z``."""
    s, m = _shift_by_max(z)
    log_sum = _row_logsumexp(s)  # lse(z) - m
    loss = 0.0 if label_smoothing == 1.0 else (1.0 - label_smoothing) * (log_sum - s[label])  # weight 0: 0
    if label_smoothing:
        loss += label_smoothing * (log_sum - s.sum() / s.size)
    if z_loss:
        loss += z_loss * (log_sum + m) ** 2
    return float(loss)


@np.errstate(invalid="ignore")
def _dense_example_loss(z: np.ndarray, target: np.ndarray, label_smoothing: float) -> float:
    """-sum_c t_c log softmax(z)_c with t = (1-eps) target + eps/C; a zero target term is 0."""
    t = (1.0 - label_smoothing) * target + label_smoothing / z.size
    s, _ = _shift_by_max(z)
    log_probs = s - _row_logsumexp(s)
    return float(-sum(tc * lp for tc, lp in zip(t.tolist(), log_probs.tolist(), strict=True) if tc != 0))


def _reduce(loss: np.ndarray, weights: np.ndarray | None, reduction: str) -> np.ndarray:
    """Weight per-example ``loss`` (weight 0 drops the example) and reduce it."""
    if weights is None:
        weighted = loss
    else:
        weighted = np.where(weights == 0, 0.0, loss * np.where(weights == 0, 1.0, weights))
    if reduction == "none":
        return weighted
    total = float(weighted.sum())
    if reduction == "sum":
        return np.asarray(total)
    if reduction != "mean":
        raise ValueError(f"unknown reduction {reduction!r}")
    denominator = float(loss.size) if weights is None else float(weights.sum())
    return np.asarray(0.0 if denominator == 0 else total / denominator)


def sparse_ce(
    logits: np.ndarray,
    labels: np.ndarray,
    *,
    axis: int = -1,
    weights: np.ndarray | None = None,
    class_weights: np.ndarray | None = None,
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    reduction: str = "none",
    softcap: float | None = None,
) -> np.ndarray:
    """Softmax cross entropy with integer labels; ``logits`` has the classes on ``axis``.

    The weight of example i is ``weights_i * class_weights[y_i] * [y_i != ignore_index]``;
    with ``softcap`` the logits are first replaced by ``softcap * tanh(logits / softcap)``.
    """
    z = np.moveaxis(np.asarray(logits, dtype=np.float64), axis, -1)
    if softcap is not None:
        z = softcap * np.tanh(z / softcap)
    labels = np.asarray(labels)
    assert labels.shape == z.shape[:-1], (labels.shape, z.shape)
    loss = np.zeros(labels.shape, dtype=np.float64)
    example_weight = np.ones(labels.shape, dtype=np.float64)
    if weights is not None:
        example_weight = example_weight * np.broadcast_to(np.asarray(weights, dtype=np.float64), labels.shape)
    for index in np.ndindex(labels.shape):
        label = int(labels[index])
        if ignore_index is not None and label == ignore_index:
            example_weight[index] = 0.0
            continue
        assert 0 <= label < z.shape[-1], f"label {label} out of range"
        if class_weights is not None:
            example_weight[index] *= float(class_weights[label])
        loss[index] = _sparse_example_loss(z[index], label, label_smoothing, z_loss)
    weighted = weights is not None or class_weights is not None or ignore_index is not None
    return _reduce(loss, example_weight if weighted else None, reduction)


def dense_ce(
    logits: np.ndarray,
    targets: np.ndarray,
    *,
    axis: int = -1,
    weights: np.ndarray | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "none",
) -> np.ndarray:
    """Softmax cross entropy with probability ``targets`` (the shape of ``logits``)."""
    z = np.moveaxis(np.asarray(logits, dtype=np.float64), axis, -1)
    t = np.moveaxis(np.asarray(targets, dtype=np.float64), axis, -1)
    loss = np.zeros(z.shape[:-1], dtype=np.float64)
    for index in np.ndindex(loss.shape):
        loss[index] = _dense_example_loss(z[index], t[index], label_smoothing)
    w = None
    if weights is not None:
        w = np.broadcast_to(np.asarray(weights, dtype=np.float64), loss.shape)
    return _reduce(loss, w, reduction)


def _softplus(x: float) -> float:
    """log(1 + e^x), without overflow."""
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _broadcast(values: np.ndarray | None, shape: tuple[int, ...], default: float) -> np.ndarray:
    if values is None:
        return np.full(shape, default)
    return np.broadcast_to(np.asarray(values, dtype=np.float64), shape)


def sigmoid_bce(
    logits: np.ndarray,
    targets: np.ndarray,
    *,
    weights: np.ndarray | None = None,
    pos_weight: np.ndarray | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "none",
) -> np.ndarray:
    """-(pw t log sigmoid(z) + (1 - t) log(1 - sigmoid(z))) per element, t smoothed towards 1/2."""
    z = np.asarray(logits, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64) * (1.0 - label_smoothing) + label_smoothing / 2
    pw = _broadcast(pos_weight, z.shape, 1.0)
    loss = np.zeros(z.shape)
    for i in np.ndindex(z.shape):
        # -log sigmoid(z) = softplus(-z), -log(1 - sigmoid(z)) = softplus(z)
        loss[i] = pw[i] * t[i] * _softplus(-z[i]) + (1.0 - t[i]) * _softplus(z[i])
    return _reduce(loss, None if weights is None else _broadcast(weights, z.shape, 1.0), reduction)


def sigmoid_focal(
    logits: np.ndarray,
    targets: np.ndarray,
    *,
    alpha: float | None = None,
    gamma: float = 2.0,
    weights: np.ndarray | None = None,
    reduction: str = "none",
) -> np.ndarray:
    """alpha_t (1 - p_t)^gamma BCE per element (Lin et al. 2017), p = sigmoid(z)."""
    z = np.asarray(logits, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    bce = sigmoid_bce(z, t)
    loss = np.zeros(z.shape)
    for i in np.ndindex(z.shape):
        p = 1.0 / (1.0 + math.exp(-z[i])) if z[i] >= 0 else math.exp(z[i]) / (1.0 + math.exp(z[i]))
        p_t = p * t[i] + (1.0 - p) * (1.0 - t[i])
        alpha_t = 1.0 if alpha is None else alpha * t[i] + (1.0 - alpha) * (1.0 - t[i])
        loss[i] = alpha_t * (1.0 - p_t) ** gamma * bce[i]
    return _reduce(loss, None if weights is None else _broadcast(weights, z.shape, 1.0), reduction)


def kl_divergence(
    log_predictions: np.ndarray,
    targets: np.ndarray,
    *,
    axis: int = -1,
    log_targets: bool = False,
    weights: np.ndarray | None = None,
    reduction: str = "none",
) -> np.ndarray:
    """sum_c t_c (log t_c - log p_c) per example; a term with t_c = 0 is 0."""
    log_p = np.moveaxis(np.asarray(log_predictions, dtype=np.float64), axis, -1)
    given = np.moveaxis(np.asarray(targets, dtype=np.float64), axis, -1)
    loss = np.zeros(log_p.shape[:-1])
    for index in np.ndindex(loss.shape):
        total = 0.0
        for lp, g in zip(log_p[index].tolist(), given[index].tolist(), strict=True):
            t = math.exp(g) if log_targets else g
            if t != 0:
                total += t * ((g if log_targets else math.log(t)) - lp)
        loss[index] = total
    return _reduce(loss, None if weights is None else _broadcast(weights, loss.shape, 1.0), reduction)


# Pairs of flags that TensorFlow Addons rejects together (the last two: ambiguous order).
TFA_FORBIDDEN = (
    ("average_across_timesteps", "sum_over_timesteps"),
    ("average_across_batch", "sum_over_batch"),
    ("average_across_batch", "sum_over_timesteps"),
    ("sum_over_batch", "average_across_timesteps"),
)


def tfa_flag_combinations(*, allowed: bool) -> list[dict[str, bool]]:
    """Every assignment of the four ``sequence_loss`` flags that TensorFlow Addons accepts (or rejects)."""
    names = ("average_across_timesteps", "average_across_batch", "sum_over_timesteps", "sum_over_batch")
    combos = [dict(zip(names, values, strict=True)) for values in itertools.product([False, True], repeat=4)]
    return [c for c in combos if allowed == (not any(c[a] and c[b] for a, b in TFA_FORBIDDEN))]


def tfa_reduce(
    step_losses: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    average_across_timesteps: bool = True,
    average_across_batch: bool = True,
    sum_over_timesteps: bool = False,
    sum_over_batch: bool = False,
) -> np.ndarray:
    """TensorFlow Addons' reduction of ``[batch, time]`` step losses (``tfa.seq2seq.sequence_loss``).

    ``average_*`` divides the summed weighted losses by the summed weights, ``sum_over_*``
    by the number of non-zero weights, both over the reduced axes; x / 0 is 0
    (``divide_no_nan``). Shapes: both axes reduced -> ``()``, time only -> ``[batch]``,
    batch only -> ``[time]``, neither -> ``[batch, time]``.
    """
    flags = {
        "average_across_timesteps": average_across_timesteps,
        "average_across_batch": average_across_batch,
        "sum_over_timesteps": sum_over_timesteps,
        "sum_over_batch": sum_over_batch,
    }
    for first, second in TFA_FORBIDDEN:
        if flags[first] and flags[second]:
            raise ValueError(f"{first} and {second} cannot both be True")
    losses = np.asarray(step_losses, dtype=np.float64)
    batch, time = losses.shape
    w = np.ones((batch, time)) if weights is None else np.asarray(weights, dtype=np.float64)
    weighted = np.zeros((batch, time))
    for b in range(batch):
        for t in range(time):
            weighted[b, t] = 0.0 if w[b, t] == 0 else losses[b, t] * w[b, t]

    def divide_no_nan(numerator: float, denominator: float) -> float:
        return 0.0 if denominator == 0 else numerator / denominator

    def reduce_cells(cells: list[tuple[int, int]], by_count: bool) -> float:
        total = sum(weighted[b, t] for b, t in cells)
        if by_count:
            return divide_no_nan(total, float(sum(w[b, t] != 0 for b, t in cells)))
        return divide_no_nan(total, sum(w[b, t] for b, t in cells))

    over_time = average_across_timesteps or sum_over_timesteps
    over_batch = average_across_batch or sum_over_batch
    by_count = not (average_across_timesteps or average_across_batch)
    if over_time and over_batch:
        cells = [(b, t) for b in range(batch) for t in range(time)]
        return np.asarray(reduce_cells(cells, by_count))
    if over_time:
        return np.asarray([reduce_cells([(b, t) for t in range(time)], by_count) for b in range(batch)])
    if over_batch:
        return np.asarray([reduce_cells([(b, t) for b in range(batch)], by_count) for t in range(time)])
    return weighted


def tfa_sequence_loss(
    logits: np.ndarray,
    targets: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    average_across_timesteps: bool = True,
    average_across_batch: bool = True,
    sum_over_timesteps: bool = False,
    sum_over_batch: bool = False,
) -> np.ndarray:
    """``tfa.seq2seq.sequence_loss`` of ``[batch, time, classes]`` logits.

    ``targets`` are integer ``[batch, time]`` labels or ``[batch, time, classes]``
    probabilities; ``weights=None`` means all ones. See :func:`tfa_reduce`.
    """
    targets = np.asarray(targets)
    step_losses = dense_ce(logits, targets) if targets.ndim == 3 else sparse_ce(logits, targets)
    return tfa_reduce(
        step_losses,
        weights,
        average_across_timesteps=average_across_timesteps,
        average_across_batch=average_across_batch,
        sum_over_timesteps=sum_over_timesteps,
        sum_over_batch=sum_over_batch,
    )


def legacy_sequence_loss_by_example(
    logits_btc: np.ndarray,
    labels_bt: np.ndarray,
    weights_bt: np.ndarray,
    *,
    average_across_timesteps: bool = True,
) -> np.ndarray:
    """TensorFlow's legacy ``sequence_loss_by_example`` (batch-major): one loss per sequence.

    ``sum_t w_bt * l_bt``, divided by ``sum_t w_bt + 1e-12`` when averaging across timesteps.
    """
    step_losses = sparse_ce(logits_btc, labels_bt)
    w = np.asarray(weights_bt, dtype=np.float64)
    batch, time = step_losses.shape
    out = np.zeros(batch)
    for b in range(batch):
        total = sum(0.0 if w[b, t] == 0 else step_losses[b, t] * w[b, t] for t in range(time))
        if average_across_timesteps:
            total /= sum(w[b, t] for t in range(time)) + 1e-12
        out[b] = total
    return out


def numeric_gradient(
    f: Callable[[np.ndarray], float], x: np.ndarray, step: float = 1e-6, *, relative: bool = False
) -> np.ndarray:
    """Central differences of the scalar ``f`` at the float64 array ``x``.

    Each entry moves by ``step``, or by ``step * max(1, |x_i|)`` when ``relative``.
    """
    grad = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        h = step * max(1.0, abs(x[index])) if relative else step
        up, down = x.copy(), x.copy()
        up[index] += h
        down[index] -= h
        grad[index] = (f(up) - f(down)) / (2 * h)
    return grad


def _collapse(path: tuple[int, ...], blank: int) -> tuple[int, ...]:
    """CTC's many-to-one map of a path of classes: merge repeats, then remove blanks."""
    merged = [c for i, c in enumerate(path) if i == 0 or c != path[i - 1]]
    return tuple(c for c in merged if c != blank)


def ctc(
    logits: np.ndarray,
    labels: np.ndarray,
    logit_lengths: np.ndarray | None = None,
    label_lengths: np.ndarray | None = None,
    blank: int = 0,
    reduction: str = "none",
    zero_infinity: bool = False,
) -> np.ndarray:
    """CTC by brute force: ``-log`` of the summed probability of every path of ``T_b`` classes
    that collapses to the labels (C**T paths: tiny T and C only). ``"mean"``: PyTorch's, the
    batch mean of ``loss_b / max(label_length_b, 1)``."""
    batch, time, classes = logits.shape
    out = np.zeros(batch)
    for b in range(batch):
        frames = time if logit_lengths is None else int(logit_lengths[b])
        length = labels.shape[1] if label_lengths is None else int(label_lengths[b])
        target = tuple(int(c) for c in labels[b, :length])
        log_p = [logits[b, t] - _row_logsumexp(logits[b, t]) for t in range(frames)]
        total = 0.0
        for path in itertools.product(range(classes), repeat=frames):
            if _collapse(path, blank) == target:
                total += math.exp(sum(log_p[t][c] for t, c in enumerate(path)))
        out[b] = -math.log(total) if total > 0 else math.inf
        if zero_infinity and out[b] == math.inf:
            out[b] = 0.0
        if reduction == "mean":
            out[b] /= max(length, 1)
    if reduction == "none":
        return out
    return np.asarray(out.sum() if reduction == "sum" or not batch else out.mean())  # no sequence: 0
