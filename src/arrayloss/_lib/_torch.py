"""Everything specific to PyTorch: its backend ops, the autograd hook for the rules, the hand-off
to ``F.cross_entropy``.

Imported only once a torch namespace is seen (:func:`._backends.ops_for`), so
``import arrayloss`` imports no torch.

**Ops.** Eager host tensors (CPU, outside ``torch.compile`` and ``torch.func``) can be
read; the exponential and the subtraction of a block of rows run in place (``exp_``,
``out=``), which spares a block-sized allocation per block.

**Autograd.** :class:`AnalyticBackward` is the ``torch.autograd.Function`` through
which a loss's rule (:class:`arrayloss._autodiff.Rule`) replaces autograd's
differentiation of the composition. It works under ``torch.compile`` and
``torch.func.grad`` (saved tensors go through ``ctx.save_for_backward``); calls whose
primals ``torch.func.vmap`` batches take the composition (a Function whose forward
closes over the labels cannot be vmapped).

**Delegation.** ``torch.nn.functional.cross_entropy`` is one C++ call with a fused
per-row kernel. The array-API path is about 25 calls: for small logits their overhead
dominates, and up to some tens of MiB PyTorch's kernel, which reads each row once from
the L1 cache, also beats the cache-blocked passes. Above that, its logits-sized outputs
are fresh allocations whose pages the kernel faults in, and the array-API path is
faster. The rule, measured with ``benchmarks/crossover.py``: logits of at most
``delegate_forward_bytes`` go to PyTorch without gradients, at most
``delegate_gradient_bytes`` when autograd records them (:mod:`._lib._settings`). Only
options that PyTorch computes as arrayloss does are handed over: ``ignore_index``,
``label_smoothing``, ``class_weights`` of the logits' dtype without smoothing (PyTorch
weights each class of the smoothing term), and per-example ``weights`` (one per example
or one for all), which multiply PyTorch's per-example losses; not ``z_loss`` or
``chunk_size``. The call was checked before (labels in range, weights non-negative), so
the errors are arrayloss's. Examples of weight 0 are handed over as ignored, as arrayloss
drops them (PyTorch would compute ``0 * inf = NaN`` for a logit of ``-inf``), and a mean
over no weight is 0, where PyTorch's is NaN.

``ctc_loss`` on eager CPU tensors goes to ``F.ctc_loss`` of the ``log_softmax`` (in float32 for
float16 and bfloat16, as PyTorch's autocast runs it; :func:`ctc_loss`): one C++ kernel per
recursion, where the array-API time loop is about ten small calls per frame
(``benchmarks/RESULTS.md``); its numbers are the recursion's to rounding
(``conformance/test_ctc.py`` runs both paths). PyTorch's CTC
gradient, which is already the logits' gradient, reaches them without the ``log_softmax``
backward (:func:`ctc_loss`).
"""

from __future__ import annotations

import functools
import importlib
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ._compat import Array, array_namespace
from ._ops import Backward, Forward, Ops
from ._settings import current

# array-api-compat's torch namespace, of the copy array_namespace comes from (maybe a host's vendored one).
NAMESPACE = importlib.import_module(array_namespace.__module__.partition(".common")[0] + ".torch")


class TorchOps(Ops):
    """PyTorch: in-place steps on our temporaries, the autograd hook, the probes of its transforms."""

    @property
    def views(self) -> bool:
        # Not while torch.compile traces: it turns writes through views into copies, and fuses the
        # standard formulation (a comparison with every class) into one kernel instead.
        return not torch.compiler.is_compiling()

    def is_eager(self, x: Array) -> bool:
        return _is_eager(x)

    def records_gradient(self, values: Iterable[Any]) -> bool:
        return torch.is_grad_enabled() and _requires_grad(values)

    def takes_analytic_backward(self, rule: Any, call: Any) -> bool:
        return (
            current().analytic_backward
            and self.records_gradient(call.primals)
            and not self.records_gradient(call.constants)
            and not _vmapped(call.primals)
        )

    def value_with_backward(self, rule: Any, call: Any) -> Array:
        forward, backward, fused = rule.passes(call)
        return AnalyticBackward.apply(forward, backward, fused, *call.primals)[0]  # type: ignore[no-untyped-call]

    def native_cross_entropy(self, logits: Array, call: Any) -> Array | None:
        return cross_entropy(logits, call) if delegates(logits, call) else None

    def native_ctc_loss(self, call: Any, reduce: Callable[[Array], Array]) -> Array | None:
        return ctc_loss(call, reduce) if ctc_delegates(call) else None

    def constant(self, x: Array) -> Array:
        return x.detach()

    def all_true(self, x: Array) -> bool:
        return bool(torch.all(x))  # without array-api-compat's wrapper, most of the cost on small arrays

    def all_in_range(self, labels: Array, stop: int, *, start: int = 0) -> bool:
        if labels.numel() == 0:
            return True
        low, high = torch.aminmax(labels)  # one pass, two values read: not three comparisons and a sum
        return bool(low.item() >= start and high.item() < stop)

    def device(self, x: Array) -> Any:
        return x.device

    def logaddexp(self, a: Array, b: Array) -> Array:
        return torch.logaddexp(a, b)  # stable: one call

    def exp_of_temporary(self, x: Array) -> Array:
        return x.exp_()

    def subtract_into(self, out: Array, x: Array, y: Array) -> Array:
        return torch.sub(x, y, out=out)


def _is_eager(x: torch.Tensor) -> bool:
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    return not _transformed(x)


def _transformed(x: torch.Tensor) -> bool:
    """Whether ``torch.func`` wraps ``x`` (outside ``torch.compile``); the check is not public API,
    hence the guard for other versions."""
    wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return wrapped is not None and bool(wrapped(x))


def _requires_grad(values: Iterable[Any]) -> bool:
    for value in values:
        if isinstance(value, (list, tuple)):
            if _requires_grad(value):
                return True
        elif isinstance(value, torch.Tensor) and value.requires_grad:
            return True
    return False


def _vmapped(primals: Iterable[Array]) -> bool:
    """Whether ``torch.func.vmap`` batches one of ``primals``, at any level of ``torch.func`` transforms.

    Reads private ``torch._C._functorch`` helpers, hence the guard for other versions
    (False without them).
    """
    if torch.compiler.is_compiling():  # torch.compile cannot trace the helpers below
        return False
    functorch = getattr(torch._C, "_functorch", None)
    needed = ("is_functorch_wrapped_tensor", "is_batchedtensor", "get_unwrapped")
    if functorch is None or not all(hasattr(functorch, name) for name in needed):
        return False
    for primal in primals:
        while isinstance(primal, torch.Tensor) and functorch.is_functorch_wrapped_tensor(primal):
            if functorch.is_batchedtensor(primal):
                return True
            primal = functorch.get_unwrapped(primal)
    return False


class AnalyticBackward(torch.autograd.Function):
    """Value from ``forward`` (or ``fused``), gradient from ``backward`` (or the fused gradients).

    Residuals (or fused gradients) are extra, non-differentiable outputs.
    ``setup_context`` saves the primals and residuals with ``ctx.save_for_backward``,
    as ``torch.func`` transforms require; fused gradients are kept on ``ctx`` and
    released by the first backward pass, which scales them by the cotangent in place
    and hands them to autograd without a copy. A second backward pass through the same
    graph (``retain_graph=True``) calls ``backward``.
    """

    @staticmethod
    def forward(
        forward: Forward, backward: Backward, fused: Forward | None, *primals: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        value, saved = (forward if fused is None else fused)(*primals)
        return (value, *saved)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        _, backward, fused, *primals = inputs
        ctx.rule_backward = backward
        ctx.num_primals = len(primals)
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)  # no zero gradients for those outputs (logits-sized when fused)
        # Fused gradients stay outside the saved tensors: the backward pass changes them in place.
        ctx.fused_gradients = output[1:] if fused is not None else ()
        ctx.save_for_backward(*primals, *(output[1:] if fused is None else ()))

    @staticmethod
    def backward(ctx: Any, cotangent: torch.Tensor, *_: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        saved = ctx.saved_tensors
        primals, residuals = tuple(saved[: ctx.num_primals]), tuple(saved[ctx.num_primals :])
        gradients, ctx.fused_gradients = ctx.fused_gradients, ()
        if gradients:  # ours: scaled in place and handed over without a copy (a second pass recomputes)
            if not (_is_eager(cotangent) and bool(cotangent == 1)):  # read only where it costs no sync
                for gradient in gradients:
                    gradient *= cotangent
            return (None, None, None, *gradients)
        return (None, None, None, *ctx.rule_backward(primals, residuals, cotangent))


def delegates(logits: Array, call: Any) -> bool:
    """Whether :func:`cross_entropy` computes this checked call (``arrayloss._sparse.SparseCall``)."""
    settings, options = current(), call.options
    if not settings.delegate_to_torch or options.z_loss or options.chunk_size is not None or options.softcap:
        return False
    if logits.ndim != 2 or call.axis != 1 or logits.dtype not in (torch.float32, torch.float64):
        return False
    labels = options.labels.safe
    if options.raw_labels.dtype != torch.int64 or labels.shape[0] == 0:
        return False  # an empty batch: the array-API path's mean of 0, not PyTorch's NaN
    if options.ignore_index is not None and not -(2**63) <= options.ignore_index < 2**63:
        return False
    if options.label_smoothing == 1.0:  # PyTorch keeps the label's term of weight 0: 0 * inf = NaN
        return False
    class_weights, weights = options.class_weights, options.weights
    if class_weights is not None and (class_weights.dtype != logits.dtype or options.label_smoothing):
        return False
    if weights is not None and tuple(weights.shape) not in ((), (1,), tuple(labels.shape)):
        return False
    gradient = call.ops.records_gradient((logits,))
    limit = settings.delegate_gradient_bytes if gradient else settings.delegate_forward_bytes
    small: bool = logits.numel() * logits.element_size() <= limit
    return small and call.ops.is_eager(logits)


def cross_entropy(logits: Array, call: Any) -> Array:
    """``F.cross_entropy`` for a call that :func:`delegates`.

    Examples that are ignored or of weight 0 (their class's, or their own) are handed to
    PyTorch as ignored, and where one holds NaN or inf their logits as constants of autograd
    (PyTorch's ``log_softmax`` backward would give them NaN); per-example weights multiply
    PyTorch's losses of each example, and a mean is their sum over the summed weights, 0 where
    they sum to 0 (PyTorch: 0 / 0).
    """
    options = call.options
    labels, counted = options.raw_labels, options.labels.counted
    class_weights, given = options.class_weights, options.weights
    weights = None  # of each example, where not all are 1
    if class_weights is not None:
        weights = class_weights[options.labels.safe]
    if given is not None:
        given = given.to(logits.dtype).expand(labels.shape)
        weights = given if weights is None else weights * given
    skip = -100 if options.ignore_index is None else options.ignore_index  # -100 is no counted label: checked
    handed = labels
    if weights is not None:
        kept = weights != 0
        counted = kept if counted is None else counted & kept
        handed = torch.where(counted, labels, skip)
    if counted is not None and logits.requires_grad and not torch.isfinite(logits.detach()[~counted].sum()):
        # A left-out row holds NaN or inf (their sum shows it, 10x faster than isfinite of each): the
        # selection, as costly as PyTorch's loss of small logits, only then.
        logits = torch.where(counted[:, None], logits, logits.detach())
    reduction = options.reduction
    weighted_mean = reduction == "mean" and counted is not None
    loss = torch.nn.functional.cross_entropy(
        logits,
        handed,
        weight=class_weights,
        ignore_index=skip,
        label_smoothing=options.label_smoothing,
        reduction="none" if given is not None else "sum" if weighted_mean else reduction,
    )
    if given is not None:
        loss = loss * given
        if reduction == "none":
            return loss
        loss = loss.sum()
    if not weighted_mean or counted is None:
        return loss
    total = counted.sum() if weights is None else torch.where(counted, weights, 0).sum()
    return loss / total if total.item() else loss  # no weight: the sum is 0, kept in the autograd graph


_HALF = (torch.float16, torch.bfloat16)  # handed to F.ctc_loss in float32, as PyTorch's autocast does


def ctc_delegates(call: Any) -> bool:
    """Whether :func:`ctc_loss` computes this checked call (``arrayloss._ctc.CTCCall``): CPU or CUDA
    tensors (the devices of PyTorch's CTC kernels) of a floating dtype, at least one sequence and
    one frame, arrayloss's exact recursion, not transformed by ``torch.func`` (whose calls take the
    recursion and its autograd Function)."""
    logits = call.logits
    if not current().delegate_to_torch or logits.dtype not in (*_HALF, torch.float32, torch.float64):
        return False
    if logits.device.type not in ("cpu", "cuda"):
        return False
    if logits.shape[0] == 0 or logits.shape[1] == 0 or call.log_epsilon is not None:
        return False  # an empty batch: the array-API path's mean of 0, not PyTorch's NaN
    return torch.compiler.is_compiling() or not (_transformed(logits) or _transformed(call.labels))


def ctc_loss(call: Any, reduce: Callable[[Array], Array]) -> Array:
    """``F.ctc_loss`` of the log-softmax of a call that :func:`ctc_delegates`, with the call's
    reduction, in the logits' dtype (computed in float32 for half precision).

    Eager CPU tensors, whose labels and lengths were checked, go to ``F.ctc_loss`` here, which
    reduces them (its ``"mean"`` and ``"sum"`` are arrayloss's). Where
    autograd records the logits' gradient and PyTorch's CTC gradient is that of the logits
    (:func:`ctc_gradient_is_logits_gradient`), it reaches them as it is, with no ``log_softmax``
    backward (:class:`LogSoftmaxPassingGradient`); frames past the logit lengths, which PyTorch
    neither reads nor differentiates, may hold anything. Otherwise autograd differentiates the
    log-softmax, whose backward would turn NaN or inf in those frames into a NaN gradient
    (:func:`_finite_past_lengths`). Logits of ``-inf`` get a gradient of 0
    (:func:`_zero_gradient_where_barred`). Labels past the label lengths are passed as they are:
    PyTorch reads the first ``label_length`` labels of a row only (``test_ctc.py``'s
    ``test_torch_autograd_ignores_masked_garbage`` holds it to that).

    Other tensors (under ``torch.compile``, on a GPU) go to the operator ``ctc_losses``
    (:func:`_ctc_operators`), which runs ``F.ctc_loss``'s kernels at run time:
    ``torch.compile`` captures one node instead of unrolling the time loop (``F.ctc_loss``
    itself breaks the graph: its outputs' shapes depend on the label lengths' values), and
    arrayloss checks no value (PyTorch's kernels copy the lengths to the host, as
    ``F.ctc_loss`` does on a GPU); ``reduce``, arrayloss's reduction, reduces its per-sequence
    losses.
    """
    labels = call.labels
    logits = call.logits.float() if call.logits.dtype in _HALF else call.logits  # float32 accumulation
    batch, frames, _ = logits.shape
    if call.logit_lengths is None:
        input_lengths = torch.full((batch,), frames, dtype=torch.int64, device=logits.device)
    else:
        input_lengths = call.logit_lengths.to(torch.int64)
    if call.label_lengths is None:
        target_lengths = torch.full((batch,), labels.shape[1], dtype=torch.int64, device=labels.device)
    else:
        target_lengths = call.label_lengths.to(torch.int64)
    if labels.dtype not in (torch.int32, torch.int64):  # the label dtypes of PyTorch's CTC kernels
        labels = labels.to(torch.int64)
    if not (call.ops.is_eager(call.logits) and call.ops.is_eager(call.labels)):
        # Unchecked lengths are clamped, as the recursion reads them, not left to PyTorch's errors.
        input_lengths = input_lengths.clamp(0, frames)
        target_lengths = target_lengths.clamp(0, labels.shape[1])
        losses = _CTC_LOSSES(logits, labels, input_lengths, target_lengths, call.blank, call.zero_infinity)[0]
        return reduce(losses).to(call.logits.dtype)
    recorded = call.ops.records_gradient((logits,))
    if recorded and ctc_gradient_is_logits_gradient():
        log_probs = LogSoftmaxPassingGradient.apply(logits)  # type: ignore[no-untyped-call]
    else:
        if recorded and call.logit_lengths is not None:
            logits = _finite_past_lengths(logits, input_lengths)
        log_probs = torch.log_softmax(logits, dim=-1)
    if recorded:
        _zero_gradient_where_barred(log_probs)
    loss = torch.nn.functional.ctc_loss(
        log_probs.transpose(0, 1),
        labels,
        input_lengths,
        target_lengths,
        blank=call.blank,
        reduction=call.reduction,
        zero_infinity=call.zero_infinity,
    )
    return loss.to(call.logits.dtype)


def _ctc_operators() -> Any:
    """The operator ``ctc_losses(logits, labels, input_lengths, target_lengths, blank,
    zero_infinity)`` (per-sequence losses, then what its gradient, ``ctc_gradient``, reads
    again: PyTorch's negative log-likelihoods, alphas and log-probabilities), registered with
    ``torch.library`` when this module is imported (not while ``torch.compile`` traces a call),
    in a namespace named after this module (a vendored copy of arrayloss registers its own).

    They run eagerly, also inside a compiled graph, on the labels and lengths unchecked: a
    used label out of range is replaced by the blank before PyTorch reads it and makes its
    sequence's loss NaN, as on the recursion's traced path (whose gradient is that of the
    labels with the blank); frames past the logit lengths are zeroed where the ``log_softmax``
    backward reads them, and logits of ``-inf`` get a gradient of 0. They call ``F.ctc_loss``'s
    own operators, ``aten::_ctc_loss`` and ``aten::_ctc_loss_backward`` (autograd is off inside
    an operator), whose alphas are kept for the backward pass in ``(B, T, 2S+1)`` (their width,
    ``2 max(target_lengths) + 1``, is read on the host, as ``F.ctc_loss`` reads the lengths); the
    gradient ends with the ``log_softmax`` backward (which leaves PyTorch's gradient unchanged
    where it is already the logits', see :func:`ctc_gradient_is_logits_gradient`).
    """
    namespace = __name__.replace(".", "_")
    arguments = "Tensor logits, Tensor labels, Tensor input_lengths, Tensor target_lengths, int blank, "
    arguments += "bool zero_infinity"
    losses_op = torch.library.custom_op(
        f"{namespace}::ctc_losses",
        _unchecked_ctc,
        mutates_args=(),
        schema=f"({arguments}) -> (Tensor, Tensor, Tensor, Tensor)",
    )
    gradient_op = torch.library.custom_op(
        f"{namespace}::ctc_gradient",
        _unchecked_ctc_gradient,
        mutates_args=(),
        schema=f"({arguments}, Tensor likelihood, Tensor alphas, Tensor log_probs, Tensor cotangent) "
        "-> Tensor",
    )

    @losses_op.register_fake
    def _(logits: torch.Tensor, labels: torch.Tensor, *rest: Any) -> tuple[torch.Tensor, ...]:
        batch, frames, _ = logits.shape
        alphas = logits.new_empty((batch, frames, 2 * labels.shape[1] + 1))
        return logits.new_empty((batch,)), logits.new_empty((batch,)), alphas, torch.empty_like(logits)

    gradient_op.register_fake(lambda logits, *rest: torch.empty_like(logits))

    def keep(ctx: Any, inputs: tuple[Any, ...], output: tuple[torch.Tensor, ...]) -> None:
        ctx.save_for_backward(*inputs[:4], *output[1:])
        ctx.options = inputs[4:]

    def backward(ctx: Any, cotangent: torch.Tensor, *unused: Any) -> tuple[torch.Tensor | None, ...]:
        logits, *targets, likelihood, alphas, log_probs = ctx.saved_tensors
        gradient = gradient_op(logits, *targets, *ctx.options, likelihood, alphas, log_probs, cotangent)
        return (gradient, None, None, None, None, None)

    losses_op.register_autograd(backward, setup_context=keep)
    return losses_op


def _in_range_or_blank(labels: torch.Tensor, classes: int, blank: int) -> torch.Tensor:
    """``labels`` with the blank in place of those outside ``[0, classes)``, which PyTorch's CTC
    kernels would read out of bounds."""
    return torch.where((labels >= 0) & (labels < classes), labels, blank)


def _unchecked_ctc(logits: torch.Tensor, *targets: Any) -> tuple[torch.Tensor, ...]:
    """``ctc_losses``: the per-sequence losses (NaN where a used label is out of range; 0 where
    infinite under ``zero_infinity``), and for the gradient PyTorch's negative log-likelihoods,
    alphas and log-probabilities."""
    labels, input_lengths, target_lengths, blank, zero_infinity = targets
    frames, classes = logits.shape[1:]
    read = torch.arange(frames, device=logits.device)[None, :] < input_lengths[:, None]
    if not ctc_gradient_is_logits_gradient(logits.device.type):  # the log_softmax backward reads
        logits = torch.where(read[:, :, None], logits, 0.0)  # every frame
    log_probs = torch.log_softmax(logits, dim=-1)
    safe_labels = _in_range_or_blank(labels, classes, blank)
    likelihood, alphas = torch.ops.aten._ctc_loss.Tensor(
        log_probs.transpose(0, 1), safe_labels, input_lengths, target_lengths, blank, zero_infinity
    )
    losses = torch.where(likelihood == math.inf, 0.0, likelihood) if zero_infinity else likelihood
    # The alphas in (B, T, 2S+1), -inf where PyTorch leaves them unwritten (past each sequence's
    # frames and states): the operator's outputs are the same from run to run (torch.library.opcheck).
    states = torch.arange(2 * labels.shape[1] + 1, device=alphas.device)
    written = (states[None, None, :] <= 2 * target_lengths[:, None, None]) & read[:, :, None]
    padding = states.shape[0] - alphas.shape[2]
    alphas = torch.nn.functional.pad(alphas, (0, padding)) if padding else alphas
    alphas = torch.where(written, alphas, -math.inf)
    return (
        torch.where(_poisoned(labels, classes, target_lengths), math.nan, losses),
        likelihood,
        alphas,
        log_probs,
    )


def _poisoned(labels: torch.Tensor, classes: int, target_lengths: torch.Tensor) -> torch.Tensor:
    """``[B]``: whether a sequence uses a label out of range: its loss and its gradient are NaN."""
    used = torch.arange(labels.shape[1], device=labels.device) < target_lengths[:, None]
    return (used & ((labels < 0) | (labels >= classes))).any(dim=1)


def _unchecked_ctc_gradient(logits: torch.Tensor, *arguments: Any) -> torch.Tensor:
    """``ctc_gradient``: the logits' gradient of the losses of :func:`_unchecked_ctc` times the
    cotangent, from what it kept."""
    *targets, likelihood, alphas, log_probs, cotangent = arguments
    labels, input_lengths, target_lengths, blank, zero_infinity = targets
    classes = logits.shape[2]
    width = 2 * int(target_lengths.max()) + 1  # the alphas' own (one sequence at least)
    log_probs = log_probs.transpose(0, 1)
    gradient: torch.Tensor = torch.ops.aten._ctc_loss_backward.Tensor(
        cotangent.to(log_probs.dtype),
        log_probs,
        _in_range_or_blank(labels, classes, blank),
        input_lengths,
        target_lengths,
        likelihood,
        alphas[:, :, :width],
        blank,
        zero_infinity,
    )
    barred = _barred(log_probs)
    if barred is not None:
        gradient = torch.where(barred, 0.0, gradient)
    if not ctc_gradient_is_logits_gradient(logits.device.type):  # the log_softmax backward
        gradient = gradient - log_probs.exp() * gradient.sum(dim=-1, keepdim=True)
    gradient = torch.where(_poisoned(labels, classes, target_lengths)[None, :, None], math.nan, gradient)
    return gradient.transpose(0, 1).to(logits.dtype).contiguous()  # the layout the fake declares


_CTC_LOSSES = _ctc_operators()


def _zero_gradient_where_barred(log_probs: torch.Tensor) -> None:
    """Give the log-probabilities of ``-inf`` a gradient of 0 (:func:`_barred`) through a hook, where
    there are some."""
    barred = _barred(log_probs.detach())
    if barred is not None:
        log_probs.register_hook(lambda gradient: torch.where(barred, 0.0, gradient))  # type: ignore[no-untyped-call]


def _barred(log_probs: torch.Tensor) -> torch.Tensor | None:
    """Where the log-probabilities are ``-inf`` (classes the logits rule out), whose gradient PyTorch's
    CTC kernels give as ``exp(-inf + inf)``, NaN, and the array-API rule as 0 (the ``log_softmax``
    backward would spread that NaN over the frame); None where the minimum is finite (one
    reduction, 5 us at 16x200x32, where a comparison of every entry takes 60-90)."""
    if bool(torch.amin(log_probs) > -math.inf):
        return None
    return log_probs == -math.inf  # -inf, or NaN in frames past the lengths (which matches nothing)


def _finite_past_lengths(logits: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """``logits`` ``[B, T, C]`` with zeros in the frames past ``lengths`` where one of them holds NaN
    or inf (the sum of each sequence's masked frames tells: it reads those frames only, and
    replaces them needlessly only where the sum overflows)."""
    frames = logits.shape[1]
    values = logits.detach()  # no autograd record of the check
    tails = [values[b, n:].sum() for b, n in enumerate(lengths.tolist()) if n < frames]
    if not tails or bool(torch.isfinite(torch.stack(tails)).all()):
        return logits
    past = torch.arange(frames, device=logits.device) >= lengths[:, None]
    return torch.where(past[:, :, None], 0.0, logits)


@functools.cache
def ctc_gradient_is_logits_gradient(device: str = "cpu") -> bool:
    """Whether the installed PyTorch's CTC kernels on ``device`` (a device type) return, as the
    gradient of their log-probabilities, the gradient of the logits they are the ``log_softmax``
    of: ``softmax - posterior``, whose sum over the classes of a frame is 0 (so the
    ``log_softmax`` backward leaves it unchanged), not the log-probabilities' own ``-posterior``
    (pytorch/pytorch#52241, #181534). Measured once per device type on a frame of two classes,
    with ``F.ctc_loss``'s operators (no autograd: it also runs inside an operator), as the
    answer is the installed library's, not the call's."""
    log_probs = torch.log_softmax(torch.zeros((1, 1, 2), dtype=torch.float64, device=device), -1)
    one = torch.ones((1,), dtype=torch.int64, device=device)
    likelihood, alphas = torch.ops.aten._ctc_loss.Tensor(log_probs, one[:, None], one, one, 0, False)
    gradient = torch.ops.aten._ctc_loss_backward.Tensor(
        torch.ones_like(likelihood), log_probs, one[:, None], one, one, likelihood, alphas, 0, False
    )
    return bool(abs(float(gradient.sum())) < 1e-6)  # the logits': 0; the log-probabilities': -1


class LogSoftmaxPassingGradient(torch.autograd.Function):
    """``log_softmax`` over the last axis whose backward passes the gradient on unchanged: for
    PyTorch's CTC gradient, which is already that of the logits. Measured fwd+bwd against
    autograd's ``log_softmax`` and against the logits minus their detached log-sum-exp: 24.3,
    31.9 and 26.7 ms at 8x100x5000 (one thread), the same within 3 % at 16x200x32."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits, dim=-1)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, gradient: torch.Tensor) -> torch.Tensor:
        return gradient
