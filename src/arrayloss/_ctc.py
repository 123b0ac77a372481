"""Connectionist Temporal Classification: checks, the alpha (forward) recursion, the alpha-beta rule."""

from __future__ import annotations

import math
from collections.abc import Callable
from types import ModuleType
from typing import Any, NamedTuple, cast

from ._autodiff import Rule, compute, differentiable
from ._lib._labels import label_indices
from ._lib._ops import Ops
from ._lib._reduce import example_scale, poison, reduce_losses
from ._lib._softmax import exp_sums
from ._lib._validation import (
    Array,
    ArrayT,
    Reduction,
    as_index,
    check_bool,
    check_floating,
    check_labels_in_range,
    check_reduction,
    compute_dtype,
    ops_of,
    same_shape,
    unknown,
)


class CTCCall(NamedTuple):
    """A checked call of :func:`ctc_loss` (see :class:`~._autodiff.Call`)."""

    ops: Ops
    logits: Array
    labels: Array
    logit_lengths: Array | None
    label_lengths: Array | None
    blank: int
    reduction: Reduction
    zero_infinity: bool
    log_epsilon: float | None = None  # optax's stand-in for log(0) (compat.optax); None: exact

    @property
    def primals(self) -> tuple[Array, ...]:
        return (self.logits,)

    @property
    def constants(self) -> tuple[Any, ...]:
        return ()  # labels and lengths are integers: nothing else is differentiated

    @property
    def one_pass(self) -> bool:
        return False  # the gradient needs a second recursion (beta), run in the backward pass


def _check_lengths(name: str, lengths: Array | None, batch: Any, stop: Any, what: str, ops: Ops) -> None:
    """Check an optional ``[B]`` integer array of lengths, on eager arrays its values in ``[0, stop]``."""
    if lengths is None:
        return
    xp = ops.xp
    if not xp.isdtype(lengths.dtype, "integral"):
        raise TypeError(f"{name} must have an integer dtype, got {lengths.dtype}")
    if not same_shape(tuple(lengths.shape), (batch,)):
        raise ValueError(
            f"{name} must have shape ({batch},), one length per sequence, got {tuple(lengths.shape)}"
        )
    if ops.is_eager(lengths) and not ops.all_in_range(lengths, stop + 1):
        bad = int(xp.max(lengths)) if ops.all_true(lengths >= 0) else int(xp.min(lengths))
        raise ValueError(f"{name} contains {bad}, outside [0, {stop}] (the {what})")


def check_ctc(
    *,
    logits: Array,
    labels: Array,
    logit_lengths: Array | None,
    label_lengths: Array | None,
    blank: int,
    reduction: Reduction,
    zero_infinity: bool,
    xp: ModuleType | None,
) -> CTCCall:
    """Check the arguments of :func:`ctc_loss` once; return the call's record."""
    named = {
        "logits": logits,
        "labels": labels,
        "logit_lengths": logit_lengths,
        "label_lengths": label_lengths,
    }
    ops = ops_of(named, xp, optional=("logit_lengths", "label_lengths"))
    xp = ops.xp
    check_floating("logits", logits, xp)
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape (batch, time, classes), got shape {tuple(logits.shape)}")
    if not xp.isdtype(labels.dtype, "integral"):
        raise TypeError(f"labels must have an integer dtype, got {labels.dtype}")
    batch, frames, classes = logits.shape
    if labels.ndim != 2 or not same_shape(tuple(labels.shape[:1]), (batch,)):
        raise ValueError(
            f"labels must have shape ({batch}, max_label_length), one row per sequence of logits, "
            f"got shape {tuple(labels.shape)}"
        )
    check_reduction(reduction)
    check_bool("zero_infinity", zero_infinity)
    blank = as_index("blank", blank)
    if not 0 <= blank < classes:
        raise ValueError(f"blank is {blank}, outside the range [0, {classes}) of class indices")
    _check_lengths("logit_lengths", logit_lengths, batch, frames, "frames of logits", ops)
    _check_lengths("label_lengths", label_lengths, batch, labels.shape[1], "columns of labels", ops)
    if ops.is_eager(labels):
        used = _label_mask(labels, label_lengths, ops)
        # The used labels lie in [0, C) and are not the blank: one range check where the blank is the
        # first or the last class (PyTorch's and optax's default, TensorFlow's), else a comparison with
        # the blank too. The errors are told apart only where that check fails.
        start = 1 if blank == 0 else 0
        stop = classes - 1 if blank == classes - 1 > 0 else classes
        given = xp.where(used, labels, xp.full_like(labels, start))  # unused: a class, not the blank (C > 1)
        valid = ops.all_in_range(given, stop, start=start)
        if not (valid and (not start <= blank < stop or ops.all_true(given != blank))):
            check_labels_in_range(labels, classes, used, xp)
            if not ops.all_true(~used | (labels != blank)):
                raise ValueError(
                    f"labels contains the blank index {blank} inside a sequence (before its label_length)"
                )
    return CTCCall(ops, logits, labels, logit_lengths, label_lengths, blank, reduction, zero_infinity)


def _label_mask(labels: Array, label_lengths: Array | None, ops: Ops) -> Array:
    """``[B, S]``: whether each label lies before its sequence's label length."""
    xp = ops.xp
    positions = xp.arange(labels.shape[1], device=ops.device(labels))
    if label_lengths is None:
        return xp.ones_like(labels, dtype=xp.bool)
    return positions[None, :] < xp.astype(label_lengths, positions.dtype, copy=False)[:, None]


def _interleave(even: Array, odd: Array, ops: Ops) -> Array:
    """``[..., 2S+1]``: ``even[..., k]`` (``[..., S+1]``) at ``2k``, ``odd[..., k]`` (``[..., S]``) at
    ``2k+1``.

    A stack and a reshape; where the number of rows is unknown (Dask refuses to stack such
    arrays), gathers along the last axis and a selection."""
    xp = ops.xp
    width = odd.shape[-1]
    if width == 0:  # no labels
        return even
    if not any(unknown(d) for d in odd.shape):
        pairs = xp.reshape(xp.stack([even[..., :width], odd], axis=-1), (*odd.shape[:-1], 2 * width))
        return xp.concat([pairs, even[..., width:]], axis=-1)
    columns = xp.arange(2 * width + 1, device=ops.device(odd))
    from_even = xp.take(even, columns // 2, axis=-1)
    from_odd = xp.take(odd, xp.clip((columns - 1) // 2, 0, width - 1), axis=-1)
    return xp.where(columns % 2 == 0, from_even, from_odd)


class Lattice(NamedTuple):
    """The extended label sequence of a checked call, per sequence, with the frames' emissions."""

    states: Array  # [B, W] class index of each state (W = 2S+1, blanks at even states)
    emissions: Array  # [T, B, W] log-probability of each state's class at each frame
    skips: Array  # [B, W] log weight of entering a state from two states back: 0, or -inf where barred
    previous: Array | None  # [B, W] log weight of entering a state from the one before (None: all 0)
    ends: Array  # [B, W] the last two states of each sequence (the last one for label length 0)
    frames: Array  # [T, B] whether each frame lies before its sequence's logit length
    lengths: Array  # [B] the logit lengths
    poisoned: Array | None  # [B] a used label out of range on arrays not checked eagerly


def _frames(call: CTCCall, logits: Array) -> Array:
    """``[T, B]``: whether each frame lies before its sequence's logit length."""
    xp = call.ops.xp
    frames = logits.shape[1]
    times = xp.arange(frames, device=call.ops.device(logits))
    lengths = call.logit_lengths
    if lengths is None:  # every frame, of every sequence (whose number may be unknown)
        return xp.permute_dims(xp.ones_like(logits[:, :, 0], dtype=xp.bool), (1, 0))
    return times[:, None] < xp.astype(lengths, times.dtype)[None, :]


def _log_probs(call: CTCCall, logits: Array) -> Array:
    """``log_softmax`` of the logits in the accumulation dtype; frames past the logit lengths are
    replaced by zeros before any arithmetic (their NaN and inf never reach a result)."""
    ops = call.ops
    xp = ops.xp
    z = xp.astype(logits, compute_dtype(logits.dtype, xp), copy=False)
    z = xp.where(xp.permute_dims(_frames(call, logits), (1, 0))[:, :, None], z, xp.zeros_like(z))
    parts = exp_sums(z, ops)
    return (z - parts.shift) - parts.log_sum


def _emissions(log_probs: Array, states: Array, ops: Ops) -> Array:
    """``[T, B, W]``: the log-probability of each state's class (``states`` ``[B, W]``) at each frame."""
    xp = ops.xp
    batch, frames, _ = log_probs.shape
    if not hasattr(xp, "take_along_axis"):  # Dask: Ops.pick's comparison, broadcast over frames and states
        return xp.permute_dims(ops.pick(log_probs[:, :, None, :], states[:, None, :]), (1, 0, 2))
    if unknown(batch):
        index = states[:, None, :] + xp.zeros_like(log_probs[:, :, :1], dtype=states.dtype)
    else:
        index = xp.broadcast_to(states[:, None, :], (batch, frames, states.shape[1]))
    return xp.permute_dims(xp.take_along_axis(log_probs, index, axis=-1), (1, 0, 2))


def _lattice(call: CTCCall, log_probs: Array, emissions: Array | None = None) -> Lattice:
    """The lattice of a call's labels over its frames; ``emissions``: those of the forward pass, which
    the backward pass does not gather again."""
    ops = call.ops
    xp = ops.xp
    frames, classes = log_probs.shape[1:]
    dev = ops.device(log_probs)
    used = _label_mask(call.labels, call.label_lengths, ops)
    labels = label_indices(call.labels, ops)
    in_range = (labels >= 0) & (labels < classes)
    poisoned = None if ops.is_eager(call.labels) else xp.any(used & ~in_range, axis=1)
    blank = xp.full_like(labels, call.blank)
    labels = xp.where(used & in_range, labels, blank)
    # Shapes built by broadcasting from the labels: the number of sequences may be unknown.
    column = xp.sum(xp.zeros_like(labels), axis=1, keepdims=True)  # [B, 1] of zeros, S may be 0
    blanks = column + xp.full((1, labels.shape[1] + 1), call.blank, dtype=labels.dtype, device=dev)
    states = _interleave(blanks, labels, ops)
    width = states.shape[1]
    # A label state is entered from two states back unless it repeats the previous label.
    differs = xp.zeros_like(labels, dtype=xp.bool)
    if labels.shape[1] > 1:
        nothing = xp.zeros((), dtype=labels.dtype, device=dev)
        previous_label = _shifts(labels, ops, (1,), nothing)[0]
        differs = (labels != previous_label) & (xp.arange(labels.shape[1], device=dev) > 0)
    allowed = _interleave(xp.zeros_like(blanks, dtype=xp.bool), differs, ops)
    zero = xp.zeros_like(states, dtype=log_probs.dtype)
    barred = xp.full_like(zero, -math.inf)
    previous = None
    if call.log_epsilon is not None:  # optax's: a repeat entered from two states back at log_epsilon
        repeats = _interleave(xp.zeros_like(allowed[:, : labels.shape[1] + 1]), ~differs, ops)
        repeats = repeats & (xp.arange(width, device=dev)[None, :] > 1)
        barred = xp.where(repeats, zero + call.log_epsilon, barred)
        # and a blank after a label entered with weight 1 + epsilon
        after_label = (xp.arange(width, device=dev) % 2 == 0) & (xp.arange(width, device=dev) > 0)
        extra = math.log1p(math.exp(call.log_epsilon))
        previous = xp.where(after_label[None, :], zero + extra, zero)
    skips = xp.where(allowed, zero, barred)
    count = xp.sum(xp.astype(used, labels.dtype), axis=1)
    positions = xp.arange(width, dtype=labels.dtype, device=dev)[None, :]
    ends = (positions == 2 * count[:, None]) | (positions == 2 * count[:, None] - 1)

    if emissions is None:
        emissions = _emissions(log_probs, states, ops)
    index_dtype = xp.arange(1, device=dev).dtype
    if call.logit_lengths is None:
        lengths = xp.astype(column[:, 0], index_dtype) + frames
    else:
        lengths = _clamped(xp.astype(call.logit_lengths, index_dtype), frames, ops)
    frame_ok = _frames(call, log_probs)
    return Lattice(states, emissions, skips, previous, ends, frame_ok, lengths, poisoned)


def _clamped(lengths: Array, stop: Any, ops: Ops) -> Array:
    """Integer ``lengths`` clamped to ``[0, stop]``, as unchecked lengths are read (``stop`` may be a
    symbolic size under ``torch.compile``, which ``clip``'s bounds may not be)."""
    xp = ops.xp
    zero = xp.zeros_like(lengths)
    return xp.where(lengths < 0, zero, xp.where(lengths > stop, zero + stop, lengths))


def _log_sum(x: Array, ops: Ops) -> Array:
    """``log(sum(exp(x)))`` over the last axis (dropped), ``-inf`` where every entry is ``-inf``."""
    parts = exp_sums(x, ops)
    return (parts.shift + parts.log_sum)[..., 0]


def _neg_inf(like: Array, ops: Ops) -> Array:
    """``-inf`` in the shape, dtype and device of ``like``."""
    return ops.xp.full_like(like, -math.inf)


def _shifts(x: Array, ops: Ops, by: tuple[int, ...], fill: Array, width: int | None = None) -> list[Array]:
    """``x`` ``[B, V]`` shifted along its columns by each of ``by`` (positive: to the right; ``-2 <=
    by <= 2``) into ``width`` columns (``V`` or ``V + 1``; default ``V``), ``fill`` (``[B, 2]``, or
    0-d) in the columns left empty.

    One concatenation, sliced; where the number of rows is unknown (Dask refuses to
    concatenate or gather such arrays), a comparison of every pair of columns (``[B, width, V]``).
    """
    xp = ops.xp
    batch, given = x.shape
    width = given if width is None else width
    if not unknown(batch):
        gap = fill if fill.ndim == 2 else xp.broadcast_to(fill, (batch, 2))
        padded = xp.concat([gap, x, gap], axis=1)
        return [padded[:, 2 - k : 2 - k + width] for k in by]
    columns = xp.arange(width, device=ops.device(x))
    inputs = xp.arange(given, device=ops.device(x))
    zero = xp.zeros((), dtype=x.dtype, device=ops.device(x))
    empty = fill if fill.ndim == 0 else fill[:, :1]
    out = []
    for k in by:
        source = columns - k
        chosen = source[:, None] == inputs[None, :]  # [width, V]: column s takes column s - k
        taken = xp.sum(xp.where(chosen, x[:, None, :], zero), axis=-1)
        out.append(xp.where((source >= 0) & (source < given), taken, empty))
    return out


def _scan(
    step: Step,
    start: tuple[Array, Array],
    rows: tuple[Array, ...],
    ops: Ops,
    *,
    reverse: bool = False,
) -> tuple[tuple[Array, Array], tuple[Array, Array]]:
    """The time loop: ``ops.scan_row_blocks`` over frames, one at a time; the last state (blank and
    label states) and the states of every frame (``[T, B, S+1]`` and ``[T, B, S]``).

    Where the number of sequences is unknown (Dask refuses to concatenate such arrays),
    each frame's states are put in their place by a selection over all frames (``T`` times
    ``[T, B, W]``: for lazy graphs of unknown shape only).
    """
    if not unknown(start[0].shape[0]):
        return ops.scan_row_blocks(step, start, rows, 1, reverse=reverse)
    xp = ops.xp
    # The frames' count, from a row array that knows it (ndonnx may lose it in the emissions' gather)
    frames = next(a.shape[0] for a in rows if not unknown(a.shape[0]))
    times = xp.arange(frames, device=ops.device(start[0]))[:, None, None]
    zero = xp.zeros((), dtype=start[0].dtype, device=ops.device(start[0]))
    histories = [zero, zero]
    state = start
    for t in reversed(range(frames)) if reverse else range(frames):
        state, outs = step(state, *(a[t : t + 1, ...] for a in rows))
        histories = [h + xp.where(times == t, out, zero) for h, out in zip(histories, outs, strict=True)]
    return state, (histories[0], histories[1])


def _differentiable_log_add(ops: Ops) -> Callable[[Array, Array], Array]:
    """``logaddexp`` whose derivative is 0, not NaN, where both arguments are ``-inf``: for the
    library's autodiff of the recursion (the rule not taken), through unreachable states."""
    xp = ops.xp

    def log_add(a: Array, b: Array) -> Array:
        both = (a == -math.inf) & (b == -math.inf)
        zero = xp.zeros_like(a)
        return xp.where(both, a, ops.logaddexp(xp.where(both, zero, a), xp.where(both, zero, b)))

    return log_add


Pair = tuple[Array, Array]  # blank states [..., S+1] (even states) and label states [..., S] (odd ones)
Step = Callable[..., tuple[Pair, Pair]]


def _halves(x: Array) -> Pair:
    """The blank (even) and label (odd) states of ``x`` ``[..., 2S+1]``."""
    return x[..., 0::2], x[..., 1::2]


def _alpha_step(lattice: Lattice, ops: Ops, differentiated: bool, floor: float) -> tuple[Array, Step]:
    """The forward recursion's state before the first frame ``[B, W]`` and its step
    ``((blank, label), emission_blank, emission_label, valid) -> (states, (blank[None], label[None]))``
    over one frame (held past a sequence's logit length), on the blank and label states apart: a
    blank is entered from itself and the label before it, a label from itself, its blank and (unless
    it repeats) the label before it. ``differentiated``: the library's autodiff may differentiate
    the recursion; ``floor``: the log weight of the states other than the first before the first
    frame (``-inf``; optax's ``log_epsilon``)."""
    xp = ops.xp
    width = lattice.skips.shape[1]
    labels = width // 2
    unreached = _neg_inf(lattice.skips, ops)
    gap = unreached[:, :2] if width > 1 else xp.concat([unreached, unreached], axis=1)
    first = xp.arange(width, device=ops.device(unreached))[None, :] == 0
    if floor != -math.inf:  # optax's stand-in for log(0): every state reached with that weight
        unreached = xp.zeros_like(unreached) + floor
    start = xp.where(first, xp.zeros_like(unreached), unreached)  # before the first frame: in state 0
    log_add = _differentiable_log_add(ops) if differentiated else ops.logaddexp
    after_label = None if lattice.previous is None else _halves(lattice.previous)[0]
    skips = _halves(lattice.skips)[1]
    skipped = skips == 0  # [B, S]: exact CTC (skips 0 or -inf) enters these labels from two states back

    def step(states: Pair, emission_blank: Array, emission_label: Array, valid: Array) -> tuple[Pair, Pair]:
        blank, label = states
        (label_before,) = _shifts(label, ops, (1,), gap, labels + 1)  # [B, S+1]
        if after_label is None:  # a label entered from two states back shares its blank's sum
            into_blank = log_add(blank, label_before)
            entry = xp.where(skipped, into_blank[:, :labels], blank[:, :labels])
        else:  # optax's weights differ on the two ways from the label before
            into_blank = log_add(blank, label_before + after_label)
            entry = log_add(blank[:, :labels], label_before[:, :labels] + skips)
        new_blank = into_blank + emission_blank[0, ...]
        new_label = log_add(label, entry) + emission_label[0, ...]
        kept = valid[0, :, None]
        blank, label = xp.where(kept, new_blank, blank), xp.where(kept, new_label, label)
        return (blank, label), (blank[None, ...], label[None, ...])

    return start, step


def _beta_step(lattice: Lattice, ops: Ops) -> tuple[Array, Step]:
    """The backward recursion's state after the last frame (the end states ``[B, W]``) and its step
    ``((blank, label), emission_blank, emission_label, time) -> (beta + emission, beta[None])`` over
    one frame, on the blank and label states apart (as :func:`_alpha_step`): the states hold
    log beta of frame t+1 plus its emission, the outputs log beta of frame ``time``, the
    log-probability of completing the labels from each state, its own emission excluded."""
    xp = ops.xp
    width = lattice.skips.shape[1]
    labels = width // 2
    unreached = _neg_inf(lattice.skips, ops)
    gap = unreached[:, :2] if width > 1 else xp.concat([unreached, unreached], axis=1)
    end = xp.where(lattice.ends, xp.zeros_like(unreached), unreached)
    end_blank, end_label = _halves(end)
    # The weights of leaving a label for the next blank, and for the next label.
    after_label = None if lattice.previous is None else _halves(lattice.previous)[0][:, 1:]
    (skips,) = _shifts(_halves(lattice.skips)[1], ops, (-1,), gap)
    skipping = skips == 0  # [B, S]: exact CTC leaves these labels for the label after next

    def step(states: Pair, emission_blank: Array, emission_label: Array, time: Array) -> tuple[Pair, Pair]:
        blank, label = states
        (own_label,) = _shifts(label, ops, (0,), gap, labels + 1)  # [B, S+1], -inf for the last blank
        left_blank = ops.logaddexp(blank, own_label)
        if after_label is None:  # leaving for the next label shares the next blank's sum
            onward = xp.where(skipping, left_blank[:, 1:], blank[:, 1:])
        else:  # optax's weights differ on the two ways to the states after
            (next_label,) = _shifts(label, ops, (-1,), gap)
            onward = ops.logaddexp(blank[:, 1:] + after_label, next_label + skips)
        left_label = ops.logaddexp(label, onward)
        alive = (time[0] + 1 < lattice.lengths)[:, None]
        beta_blank = xp.where(alive, left_blank, end_blank)
        beta_label = xp.where(alive, left_label, end_label)
        following = (beta_blank + emission_blank[0, ...], beta_label + emission_label[0, ...])
        return following, (beta_blank[None, ...], beta_label[None, ...])

    return end, step


def _alphas(lattice: Lattice, ops: Ops, differentiated: bool, floor: float) -> tuple[Array, Pair]:
    """The forward recursion: ``log alpha`` at the last frame of each sequence ``[B, W]`` and at
    every frame, blank and label states apart (``[T, B, S+1]``, ``[T, B, S]``; see
    :func:`_alpha_step`)."""
    start, step = _alpha_step(lattice, ops, differentiated, floor)
    emissions = lattice.emissions
    if emissions.shape[0] == 0:
        return start, _halves(emissions)
    rows = (emissions[:, :, :1], emissions[:, :, 1::2], lattice.frames)
    (blank, label), history = _scan(step, _halves(start), rows, ops)
    return _interleave(blank, label, ops), history


def _betas(lattice: Lattice, ops: Ops) -> Pair:
    """The backward recursion: ``log beta`` of the blank and label states ``[T, B, S+1]``,
    ``[T, B, S]`` (see :func:`_beta_step`; ``-inf`` past the end)."""
    end, step = _beta_step(lattice, ops)
    emissions = lattice.emissions
    times = ops.xp.arange(lattice.frames.shape[0], device=ops.device(emissions))  # T known there
    rows = (emissions[:, :, :1], emissions[:, :, 1::2], times)
    return _scan(step, _halves(end), rows, ops, reverse=True)[1]


def _losses(call: CTCCall, log_likelihood: Array) -> Array:
    """Per-sequence losses ``-log p`` (0 for infeasible ones under ``zero_infinity``)."""
    xp = call.ops.xp
    loss = -log_likelihood
    if call.zero_infinity:
        loss = xp.where(loss == math.inf, xp.zeros_like(loss), loss)
    return loss


def _nan_gradient_where_infeasible(log_probs: Array, log_likelihood: Array, ops: Ops) -> Array:
    """``[B]`` zeros whose gradient is NaN on the frames of an infeasible sequence, as the rule's and
    PyTorch's: autodiff of the recursion gives it 0 (no alignment, nothing to differentiate).

    ``sqrt(u) - sqrt(u)`` held constant, where ``u`` is 1 for a feasible sequence and 0 times the sum of
    its finite log-probabilities for an infeasible one: the derivative of ``sqrt`` at 0 is infinite,
    times 0 NaN. Frames past the logit lengths get none of it (``_log_probs`` holds them constant).
    """
    xp = ops.xp
    total = xp.sum(xp.where(xp.isfinite(log_probs), log_probs, xp.zeros_like(log_probs)), axis=(1, 2))
    u = xp.where(log_likelihood > -math.inf, xp.ones_like(total), 0.0 * total)
    root = xp.sqrt(u)
    return root - ops.constant(root)


def _per_label(call: CTCCall, like: Array) -> Array | None:
    """``1 / max(label_length, 1)`` per sequence for ``reduction="mean"`` (PyTorch's), else None;
    unchecked label lengths clamped to the labels' columns."""
    if call.reduction != "mean":
        return None
    xp = call.ops.xp
    width = call.labels.shape[1]
    if call.label_lengths is None:
        return xp.full_like(like, 1.0 / max(width, 1))
    lengths = xp.astype(_clamped(call.label_lengths, width, call.ops), like.dtype)
    return 1.0 / xp.where(lengths > 1, lengths, xp.ones_like(lengths))


def _reduced(call: CTCCall, loss: Array, poisoned: Array | None) -> Array:
    """The call's reduction of the per-sequence losses (``"mean"``: each over its label length)."""
    per_label = _per_label(call, loss)
    scaled = loss if per_label is None else loss * per_label
    return reduce_losses(scaled, None, call.reduction, call.ops, poisoned=poisoned)


def _forward(call: CTCCall, logits: Array) -> tuple[Array, tuple[Array, ...]]:
    ops = call.ops
    log_probs = _log_probs(call, logits)
    lattice = _lattice(call, log_probs)
    # Autodiff of the recursion: where the library records it, or may (traced arrays) unless the
    # rule is attached (JAX's custom VJP).
    differentiated = ops.records_gradient([logits]) or not (
        ops.is_eager(logits) or ops.takes_analytic_backward(RULE, call)
    )
    floor = -math.inf if call.log_epsilon is None else call.log_epsilon
    last, alphas = _alphas(lattice, ops, differentiated, floor)
    log_likelihood = _log_sum(ops.xp.where(lattice.ends, last, _neg_inf(last, ops)), ops)
    loss = _losses(call, log_likelihood)
    if differentiated and ops.differentiates(logits) and not call.zero_infinity:
        loss = loss + _nan_gradient_where_infeasible(log_probs, log_likelihood, ops)
    value = _reduced(call, loss, lattice.poisoned)
    residuals = (log_probs, *alphas, log_likelihood, lattice.emissions)
    return ops.as_result(value, logits.dtype), residuals


def _backward(
    call: CTCCall, primals: tuple[Array, ...], residuals: tuple[Array, ...], cotangent: Array
) -> tuple[Array]:
    (logits,) = primals
    log_probs, alpha_blanks, alpha_labels, log_likelihood, emissions = residuals
    ops = call.ops
    xp = ops.xp
    if logits.shape[1] == 0:  # no frames
        return (xp.zeros_like(logits),)
    lattice = _lattice(call, log_probs, emissions)
    classes = logits.shape[2]
    feasible = log_likelihood > -math.inf
    shift = xp.where(feasible, log_likelihood, xp.zeros_like(log_likelihood))
    # exp(alpha + beta - log p): the posterior of each state at each frame, 0 where it cannot be.
    kept = lattice.frames[:, :, None] & feasible[None, :, None]

    def occupancy(alpha: Array, beta: Array) -> Array:
        log_occupancy = alpha + beta - shift[None, :, None]
        return xp.exp(xp.where(kept, log_occupancy, _neg_inf(log_occupancy, ops)))

    beta_blanks, beta_labels = _betas(lattice, ops)
    classes_of = xp.arange(classes, dtype=lattice.states.dtype, device=ops.device(logits))
    label_classes = _halves(lattice.states)[1]
    one_hot = xp.astype(label_classes[:, :, None] == classes_of, log_probs.dtype)  # [B, S, C]
    labels = occupancy(alpha_labels, beta_labels)  # [T, B, S]
    posterior = xp.matmul(xp.permute_dims(labels, (1, 0, 2)), one_hot)  # [B, T, C]
    blanks = xp.permute_dims(xp.sum(occupancy(alpha_blanks, beta_blanks), axis=-1), (1, 0))  # [B, T]
    nothing = xp.zeros((), dtype=posterior.dtype, device=ops.device(posterior))
    posterior = posterior + xp.where(classes_of == call.blank, blanks[:, :, None], nothing)
    grad = xp.exp(log_probs) - posterior
    if call.zero_infinity:
        keep = xp.permute_dims(lattice.frames, (1, 0))[:, :, None] & feasible[:, None, None]
    else:  # an infeasible sequence's loss is inf: its gradient is NaN, as PyTorch's
        grad = xp.where(feasible[:, None, None], grad, xp.full_like(grad, math.nan))
        keep = xp.permute_dims(lattice.frames, (1, 0))[:, :, None]
    grad = xp.where(keep, grad, xp.zeros_like(grad))
    scale = example_scale(cotangent, None, call.reduction, log_likelihood, grad.dtype, ops)
    per_label = _per_label(call, scale)
    if per_label is not None:
        scale = scale * per_label
    scale = poison(scale, lattice.poisoned, ops)  # a NaN loss, a NaN gradient
    return (xp.astype(grad * scale[:, None, None], logits.dtype, copy=False),)


RULE = Rule(check_ctc, _forward, _backward, custom_vjp=True)


@differentiable(RULE)
def ctc_loss(
    logits: ArrayT,
    labels: Array,
    /,
    *,
    logit_lengths: Array | None = None,
    label_lengths: Array | None = None,
    blank: int = 0,
    reduction: Reduction = "none",
    zero_infinity: bool = False,
    xp: ModuleType | None = None,
) -> ArrayT:
    r"""The Connectionist Temporal Classification loss of unaligned label sequences.

    .. math:: \ell_b = -\log \sum_{\pi \in \mathcal{B}^{-1}(y_b)} \prod_{t=1}^{T_b} p_{t, \pi_t}

    where :math:`p_t = \mathrm{softmax}(\text{logits}_{b, t})`, :math:`T_b` is the
    sequence's logit length and :math:`\mathcal{B}` maps a path of classes to a label
    sequence by merging repeats, then removing blanks. The sum runs over the extended
    label sequence of width :math:`2S+1` (blanks interleaved) with the forward (alpha)
    recursion in log space; the gradient is the forward-backward (alpha-beta) posterior
    of each class, :math:`\partial \ell_b / \partial \text{logits}_{b,t,c} = p_{t,c} -
    \sum_{s : y'_s = c} \alpha_t(s) \beta_t(s) / p(y_b)`.

    Parameters
    ----------
    logits : array, shape ``(B, T, C)``
        Real floating unnormalised scores (log-probabilities give the same result:
        ``log_softmax`` is taken over ``C``); float16 and bfloat16 are accumulated in
        float32. Frames past ``logit_lengths`` are ignored, even where they hold NaN or inf.
    labels : array, shape ``(B, S)``
        Integer label sequences, padded; the entries past ``label_lengths`` are ignored.
        The used entries lie in ``[0, C)`` and are not ``blank`` (checked on eager host
        arrays; elsewhere a label out of range makes its sequence's loss NaN).
    logit_lengths, label_lengths : array, shape ``(B,)``, optional
        Integer lengths of each sequence of logits (at most ``T``) and labels (at most
        ``S``). Default: ``T`` and ``S``.
    blank : int, optional
        The class index of the blank.
    reduction : {"none", "sum", "mean"}, optional
        ``"none"``: the loss of each sequence ``(B,)`` (optax's ``ctc_loss``);
        ``"sum"``; ``"mean"``: PyTorch's convention, the mean over the batch of
        :math:`\ell_b / \max(\text{label\_length}_b, 1)`.
    zero_infinity : bool, optional
        Whether an infeasible sequence (too few frames for its labels and their repeats),
        whose loss is ``inf``, gets a loss of 0 and a gradient of 0. Without it, the
        gradient of such a sequence is NaN on its frames (as PyTorch's).
    xp : namespace, optional
        Force an array namespace; inferred from the arrays when omitted.

    Returns
    -------
    array
        In the namespace, on the device, and with the dtype of ``logits``. Its
        gradient is taken with respect to ``logits``; frames past ``logit_lengths``
        get exactly 0.

    Notes
    -----
    The time loop is sequential: a Python loop on eager arrays, ``lax.scan`` under a
    JAX trace; each step works on ``(B, 2S+1)`` states. The gradient rule serves
    :func:`value_and_grad`, PyTorch autograd and JAX (``jax.custom_vjp``, so ``jax.jvp``
    is not available). PyTorch tensors are handed to ``F.ctc_loss``'s kernels (of the
    ``log_softmax``; half precision in float32), which give the same numbers faster: on
    eager CPU tensors after the checks, under ``torch.compile`` and on GPUs through one
    operator (compiled, no unrolled time loop; no value checked), not under
    ``torch.func`` transforms. PyTorch's ``F.ctc_loss`` takes time-major log-probabilities
    (``arrayloss.compat.torch.ctc_loss``); optax's ``ctc_loss`` is ``reduction="none"``
    with paddings instead of lengths, and gives a large finite loss where this one
    gives ``inf`` (``arrayloss.compat.optax.ctc_loss`` gives optax's).

    References
    ----------
    .. [1] A. Graves, S. Fernández, F. Gomez, J. Schmidhuber, "Connectionist Temporal
           Classification: Labelling Unsegmented Sequence Data with Recurrent Neural
           Networks", ICML 2006.

    Examples
    --------
    >>> import numpy as np
    >>> import arrayloss as al
    >>> logits = np.log(np.asarray([[[0.6, 0.4], [0.3, 0.7]]]))  # 2 frames, blank 0 and class 1

    The paths "1 1", "0 1" and "1 0" give the label ``[1]``: probability
    0.4 * 0.7 + 0.6 * 0.7 + 0.4 * 0.3 = 0.82, and a loss of -log(0.82).

    >>> al.ctc_loss(logits, np.asarray([[1]]))
    array([0.19845094])
    """
    call = check_ctc(
        logits=logits,
        labels=labels,
        logit_lengths=logit_lengths,
        label_lengths=label_lengths,
        blank=blank,
        reduction=reduction,
        zero_infinity=zero_infinity,
        xp=xp,
    )
    native = call.ops.native_ctc_loss(call, lambda losses: _reduced(call, losses, None))
    return cast(ArrayT, compute(RULE, call) if native is None else native)
