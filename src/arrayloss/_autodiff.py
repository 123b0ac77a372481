"""Analytic backward passes, written once in the array API, attached to PyTorch autograd.

Autograd through the plain composition of array-API operations keeps every
intermediate it needs (for a cross entropy: the exponentials of all logits) from
the forward pass until the backward pass, and then builds several logits-sized
gradients. A loss decorated with :func:`analytic_backward` instead computes its
value without recording anything and, in the backward pass, calls the gradient
rule registered for it with :func:`register_rule` (the rules of :mod:`._grad`,
the same ones :func:`arrayloss.value_and_grad` uses), which recomputes what it
needs from the saved inputs. Where a rule offers a ``fused`` pass (a scalar loss on
eager host arrays), the gradient is computed with the value, in the same pass over
the logits, and the backward pass only scales it by the cotangent, in place.

This path is taken only when a PyTorch input requires grad while grad mode is
on, the rule accepts the call, no input other than the rule's ``primals``
requires grad and no primal is batched by ``torch.func.vmap``; everything else
(NumPy, JAX, Dask, gradients with respect to weights or soft targets, a custom
``softmax_loss_function``, ``vmap(grad(loss))``) runs the plain composition, or
PyTorch's own function for the calls :mod:`._native` hands to it. Setting
:data:`ENABLED` to False forces the composition everywhere (the conformance
suite runs both and compares).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple, ParamSpec, TypeVar

from array_api_compat import is_torch_array

from ._validation import Array

P = ParamSpec("P")
R = TypeVar("R")

Forward = Callable[..., tuple[Array, tuple[Array, ...]]]
"""``forward(*primals) -> (value, residuals)``: the value and arrays saved for the backward pass."""

Backward = Callable[[tuple[Array, ...], tuple[Array, ...], Array], tuple[Array | None, ...]]
"""``backward(primals, residuals, cotangent) -> gradients``: one per primal (None: no gradient)."""

ENABLED = True
"""Use the registered analytic backward for PyTorch autograd (False: always the plain composition)."""


class Linearization(NamedTuple):
    """A loss call split into what is differentiated and how.

    ``primals`` are the arrays with a gradient, ``forward`` and ``backward`` as in
    :func:`custom_vjp`; ``constants`` are the other floating inputs, which must not
    require grad for the analytic backward to replace autograd; ``unpack`` maps the
    gradients of ``primals`` to the structure :func:`arrayloss.value_and_grad` returns.
    ``fused``, when given, is ``fused(*primals) -> (value, gradients)``: a 0-d value
    and its gradients, computed together in one pass (see :func:`custom_vjp`).
    ``delegated`` says that the loss computes this call with the array library's own
    differentiable function (:mod:`._native`), which its autograd then differentiates.
    """

    primals: tuple[Array, ...]
    forward: Forward
    backward: Backward
    constants: tuple[Array | None, ...]
    unpack: Callable[[tuple[Array, ...]], Any]
    fused: Forward | None = None
    delegated: bool = False


class NotDifferentiable(TypeError):
    """Raised by a rule for a call it cannot differentiate analytically (e.g. a custom loss function)."""


Rule = Callable[..., Linearization]
"""``rule(*args, **kwargs)`` of a loss: its :class:`Linearization` for that call.

Raises :class:`NotDifferentiable` for a call it does not cover.
"""

_RULES: dict[Callable[..., Any], Rule] = {}


def register_rule(loss: Callable[..., Any], rule: Rule) -> None:
    """Register ``rule`` as the analytic gradient of the public function ``loss``."""
    _RULES[loss] = rule


def rule_of(loss: Callable[..., Any]) -> Rule | None:
    """The rule registered for ``loss``, or None."""
    return _RULES.get(loss)


def registered_names() -> list[str]:
    """Names of the functions with a registered rule, sorted."""
    return sorted(loss.__name__ for loss in _RULES)


def torch_records_gradient(primals: Iterable[Any]) -> bool:
    """Whether PyTorch autograd records operations on one of ``primals`` (grad mode on, requires grad).

    Lists and tuples among ``primals`` (sequences of per-step arrays) are searched too.
    """
    torch = sys.modules.get("torch")
    return torch is not None and torch.is_grad_enabled() and _requires_grad(primals)


def _requires_grad(values: Iterable[Any]) -> bool:
    for value in values:
        if isinstance(value, (list, tuple)):
            if _requires_grad(value):
                return True
        elif getattr(value, "requires_grad", False) is True and is_torch_array(value):
            return True
    return False


def torch_vmapped(primals: Iterable[Array]) -> bool:
    """Whether ``torch.func.vmap`` batches one of ``primals``, at any level of ``torch.func`` transforms.

    A ``torch.autograd.Function`` whose forward closes over other tensors (the labels) cannot be
    vmapped; there autograd differentiates the plain composition. The check reads private
    ``torch._C._functorch`` helpers, hence the guard for other versions (False without them).
    """
    torch = sys.modules["torch"]
    if torch.compiler.is_compiling():  # torch.compile cannot trace the helpers below
        return False
    functorch = getattr(torch._C, "_functorch", None)
    needed = ("is_functorch_wrapped_tensor", "is_batchedtensor", "get_unwrapped")
    if functorch is None or not all(hasattr(functorch, name) for name in needed):
        return False
    for primal in primals:
        while is_torch_array(primal) and functorch.is_functorch_wrapped_tensor(primal):
            if functorch.is_batchedtensor(primal):
                return True
            primal = functorch.get_unwrapped(primal)
    return False


def custom_vjp(
    forward: Forward, backward: Backward, primals: tuple[Array, ...], fused: Forward | None = None
) -> Array:
    """``forward(*primals)[0]``, differentiated by ``backward`` when PyTorch records gradients.

    Parameters
    ----------
    forward : callable
        ``forward(*primals) -> (value, residuals)``: the value and a tuple of arrays
        (possibly empty) that the backward pass needs besides the primals, such as
        a per-row log-sum-exp. Runs without recording gradients.
    backward : callable
        ``backward(primals, residuals, cotangent) -> gradients``: the vector-Jacobian
        product, one gradient (or None) per primal, for a ``cotangent`` of the shape
        and dtype of the value. Written in the array API, it also serves
        :func:`arrayloss.value_and_grad`.
    primals : tuple of arrays
        The differentiated inputs.
    fused : callable, optional
        ``fused(*primals) -> (value, gradients)`` for a 0-d value: when PyTorch records
        gradients it replaces ``forward``, and the first backward pass multiplies the
        saved gradients by the cotangent in place and hands them to autograd, so the
        backward pass reads no logits and allocates nothing. A second backward pass
        through the same graph (``retain_graph=True``) calls ``backward``.

    Returns
    -------
    array
        The value. When a primal is a PyTorch tensor that requires grad and grad mode
        is on, it is the output of a ``torch.autograd.Function`` whose backward is
        ``backward`` (it works under ``torch.compile`` and ``torch.func.grad``, which
        need saved tensors to go through ``ctx.save_for_backward``); otherwise the
        plain value.

    Examples
    --------
    >>> import torch
    >>> def forward(x):
    ...     return torch.sum(x * x), ()
    >>> def backward(primals, residuals, cotangent):
    ...     return (2 * primals[0] * cotangent,)
    >>> x = torch.tensor([1.0, 2.0], requires_grad=True)
    >>> custom_vjp(forward, backward, (x,)).backward()
    >>> x.grad
    tensor([2., 4.])
    """
    if not torch_records_gradient(primals):
        return forward(*primals)[0]
    from ._torch_function import AnalyticBackward  # torch is loaded: a primal is a tensor

    return AnalyticBackward.apply(forward, backward, fused, *primals)[0]  # type: ignore[no-untyped-call]


def analytic_backward(loss: Callable[P, R]) -> Callable[P, R]:
    """Decorate a public loss so PyTorch autograd uses its registered rule (see the module docstring)."""

    @functools.wraps(loss)
    def dispatch(*args: P.args, **kwargs: P.kwargs) -> R:
        rule = _RULES.get(dispatch)
        if ENABLED and rule is not None and torch_records_gradient((*args, *kwargs.values())):
            try:
                linear = rule(*args, **kwargs)
            except NotDifferentiable:  # a call the rule does not cover
                linear = None
            # Otherwise autograd differentiates the composition (or PyTorch's own function).
            analytic = linear is not None and not linear.delegated and not torch_vmapped(linear.primals)
            if linear is not None and analytic and not torch_records_gradient(linear.constants):
                result: R = custom_vjp(linear.forward, linear.backward, linear.primals, linear.fused)
                return result
        return loss(*args, **kwargs)

    return dispatch
