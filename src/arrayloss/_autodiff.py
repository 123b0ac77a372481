"""Analytic gradients: each loss's rule, its registration, and :func:`value_and_grad`.

A loss module writes its gradient *rule* next to its forward pass (a :class:`Rule`)
and registers it with :func:`differentiable` at the definition of its public
function. A rule works on the loss's *call*, the record that the loss's ``check``
returns after validating the arguments once (a :class:`Call`). The same rule serves

- :func:`value_and_grad`, the gradient on libraries without autodiff (NumPy, CuPy,
  Dask, array-api-strict), and on any other;
- the library's autodiff, through the backend seam (``Ops.value_with_backward``):
  PyTorch autograd calls the rule's backward instead of differentiating the
  composition, which would keep every intermediate of the forward pass (for a cross
  entropy, the exponentials of all logits) and then build several logits-sized
  gradients. Where the rule has a ``fused`` pass and the call allows it (a scalar loss
  on eager host arrays; for :func:`~arrayloss.linear_cross_entropy` on any arrays),
  the gradient is computed with the value, in the same pass over the logits, and the
  backward pass only scales it by the cotangent. JAX takes, through ``jax.custom_vjp``,
  only the rules marked ``custom_vjp`` (:func:`~arrayloss.linear_cross_entropy`'s,
  whose chunk loop JAX's autodiff would differentiate keeping every chunk's logits, and
  :func:`~arrayloss.ctc_loss`'s, whose gradient is the alpha-beta recursion); it
  differentiates the composition of the other losses, which XLA fuses as fast and which
  keeps forward mode (``jax.jvp``) working (see :mod:`._lib._jax`).

The composition is differentiated instead where the backend has no hook, where the
setting ``analytic_backward`` is off (:mod:`._lib._settings`), on PyTorch where an input
other than the primals requires grad (gradients with respect to weights or soft
targets) or a primal is batched by ``torch.func.vmap``, and for a call the rule does not
cover (a custom ``softmax_loss_function``). JAX cannot tell under a trace which inputs
are differentiated: its custom VJP takes the constants as arguments and gives them
their gradients too.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, ParamSpec, Protocol, TypeVar

from ._lib._ops import Backward, Forward, Ops
from ._lib._validation import Array

F = TypeVar("F", bound=Callable[..., Any])
P = ParamSpec("P")


class Call(Protocol):
    """What a loss's ``check`` returns: the validated arguments of one call, and these four."""

    @property
    def ops(self) -> Ops: ...  # the backend seam of the call's namespace

    @property
    def primals(self) -> tuple[Array, ...]: ...  # the differentiated arrays

    @property
    def constants(self) -> tuple[Any, ...]: ...  # other floating inputs: no analytic rule if they need grad

    @property
    def one_pass(self) -> bool: ...  # the rule's fused pass applies to this call


class Rule(NamedTuple):
    """The analytic gradient of a loss, in terms of its validated :class:`Call`.

    ``check(**arguments) -> call`` validates the arguments of the public function (by
    name, defaults included). ``forward(call, *primals) -> (value, residuals)`` computes
    the value and the arrays the backward pass needs besides the primals (possibly none).
    ``backward(call, primals, residuals, cotangent) -> gradients``, one per primal, is
    the vector-Jacobian product for a ``cotangent`` of the value's shape and dtype.
    ``fused(call, *primals) -> (value, gradients)`` computes a 0-d value and its
    gradients together, where ``call.one_pass``. ``unpack(call, gradients)`` gives the
    structure that :func:`value_and_grad` returns. ``covers(call)`` is None, or why the
    rule cannot differentiate this call. ``custom_vjp``: JAX takes the rule too, through
    ``jax.custom_vjp``, with every array of the call as an argument (it differentiates the
    forward pass with respect to the constants where it perturbs them; see
    :mod:`._lib._jax`); other rules leave JAX its autodiff of the composition.
    """

    check: Callable[..., Any]
    forward: Forward
    backward: Backward
    fused: Forward | None = None
    unpack: Callable[[Any, tuple[Array, ...]], Any] = lambda call, gradients: gradients[0]
    covers: Callable[[Any], str | None] = lambda call: None
    custom_vjp: bool = False

    def passes(self, call: Call) -> tuple[Forward, Backward, Forward | None]:
        """``forward``, ``backward`` and (where ``call.one_pass``) ``fused``, bound to ``call``."""
        fused = functools.partial(self.fused, call) if self.fused is not None and call.one_pass else None
        return functools.partial(self.forward, call), functools.partial(self.backward, call), fused


_RULES: dict[Callable[..., Any], Rule] = {}


def differentiable(rule: Rule) -> Callable[[F], F]:
    """Register ``rule`` as the analytic gradient of the decorated public loss (returned unchanged)."""

    def register(loss: F) -> F:
        _RULES[loss] = rule
        return loss

    return register


def rule_of(loss: Callable[..., Any]) -> Rule | None:
    """The rule registered for ``loss``, or None."""
    return _RULES.get(loss)


def compute(rule: Rule, call: Call) -> Array:
    """The value of a validated ``call``; with the rule's backward where the library records gradients."""
    ops = call.ops
    if rule.covers(call) is None and ops.takes_analytic_backward(rule, call):
        return ops.value_with_backward(rule, call)
    return rule.forward(call, *call.primals)[0]


@functools.cache
def _parameters(loss: Callable[..., Any]) -> tuple[tuple[str, ...], dict[str, Any]]:
    """The names of the positional parameters of ``loss`` and its keyword-only defaults."""
    parameters = inspect.signature(loss).parameters.values()
    positional = tuple(p.name for p in parameters if p.kind is p.POSITIONAL_ONLY)
    defaults = {p.name: p.default for p in parameters if p.kind is p.KEYWORD_ONLY}
    return positional, defaults


def bind(loss: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Every argument of a call to ``loss`` by name, defaults included."""
    positional, defaults = _parameters(loss)
    if len(args) == len(positional) and kwargs.keys() <= defaults.keys():  # fast: no Signature.bind
        return {**dict(zip(positional, args, strict=True)), **defaults, **kwargs}
    bound = inspect.signature(loss).bind(*args, **kwargs)  # the general case, and a call's TypeError
    bound.apply_defaults()
    return dict(bound.arguments)


def value_and_grad(loss: Callable[P, Array], /) -> Callable[P, tuple[Array, Any]]:
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
        :func:`linear_cross_entropy`, :func:`ctc_loss`, and
        :func:`arrayloss.distributed.vocab_parallel_cross_entropy` and
        :func:`arrayloss.distributed.vocab_parallel_linear_cross_entropy` (a loss module adds one
        with :func:`~arrayloss._autodiff.differentiable`).

    Returns
    -------
    callable
        ``f(*arrays, **options) -> (value, grad)`` taking the arguments of ``loss``.
        ``value`` is what ``loss`` returns; ``grad`` is the gradient of
        ``sum(value)`` (for ``reduction="none"``, the vector-Jacobian product with
        ones) with respect to the first argument, in its shape, dtype, namespace and
        device: for :func:`sequence_loss_by_example` with a list of per-step logits,
        a list of per-step gradients; for :func:`linear_cross_entropy` (and the vocab-parallel
        linear loss), the tuple ``(d_hidden, d_weight)`` (and ``d_bias`` with a bias). Half precision is
        computed in float32. Lazy arrays (Dask) stay lazy. An example whose label is
        out of range on arrays that are not checked eagerly has a NaN loss and a NaN
        gradient row; an example of weight 0 has a gradient of exactly 0.

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
    rule = _RULES.get(loss)
    if rule is None:
        name = getattr(loss, "__name__", repr(loss))
        supported = ", ".join(sorted(f.__name__ for f in _RULES))
        raise TypeError(f"value_and_grad has no analytic gradient for {name}; it supports {supported}")

    def loss_value_and_grad(*arrays: P.args, **options: P.kwargs) -> tuple[Array, Any]:
        call = rule.check(**bind(loss, arrays, options))
        refusal = rule.covers(call)
        if refusal is not None:
            raise TypeError(refusal)
        if rule.fused is not None and call.one_pass:
            value, grads = rule.fused(call, *call.primals)
        else:
            value, residuals = rule.forward(call, *call.primals)
            grads = rule.backward(call, call.primals, residuals, call.ops.xp.ones_like(value))
        grads = tuple(
            g if g is None else call.ops.in_blocks_of(g, p) for g, p in zip(grads, call.primals, strict=True)
        )
        return value, rule.unpack(call, grads)

    return loss_value_and_grad
