"""JAX's steps of the backend seam, chosen once a JAX namespace is seen (so jax is loaded).

**Constants of differentiation** by ``lax.stop_gradient``.

**Autodiff.** JAX differentiates the composition of a loss, which serves the plain
losses well (XLA fuses it, and forward mode keeps working). A rule that has
``custom_vjp`` (``linear_cross_entropy``'s, ``ctc_loss``'s, the vocab-parallel losses') is
attached through ``jax.custom_vjp`` instead: autodiff of a chunk loop would keep every chunk's logits for
the backward pass, and autodiff of CTC's time loop every step's alphas and masks. The
forward pass of ``linear_cross_entropy`` keeps no logits: for a scalar loss the fused
pass computes the gradients with the value and the backward pass scales them by the
cotangent; otherwise the backward pass recomputes each chunk's logits. Under a trace,
it cannot be known whether the loss's constants (example and class weights) are
differentiated, so they are arguments of the custom VJP too; where JAX differentiates
them (they are *perturbed*), the forward pass is ``jax.vjp`` of the rule's forward with
respect to them (whose residuals are the per-row losses, not logits) and the backward
pass recomputes the primals' gradients. A ``custom_vjp`` has no forward mode:
``jax.jvp`` of such a loss raises JAX's ``TypeError``.

**Loops over row blocks** under a trace are ``lax.scan``: a Python loop is unrolled by
``jax.jit``, and XLA may keep every block's temporaries alive.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from ._compat import Array
from ._ops import Ops
from ._settings import current


def _summed_like(gradient: Array | None, primal: Array) -> Array | None:
    """``gradient`` summed over the mesh axes along which it varies and ``primal`` does not.

    Inside ``shard_map``, an argument replicated over an axis (a weight, with the batch split over
    ``data``) meets per-shard values, and the rule's gradient of it varies over that axis; JAX's
    own autodiff transposes the implicit broadcast into a ``psum``, which a custom VJP must do
    itself (its gradient must have the argument's type).
    """
    if gradient is None:
        return None
    extra = tuple(_varying_axes(gradient) - _varying_axes(primal))
    return sys.modules["jax"].lax.psum(gradient, extra) if extra else gradient


def _varying_axes(x: Array) -> frozenset[Any]:
    """The mesh axes along which ``x`` varies inside ``shard_map`` (none outside it)."""
    aval = sys.modules["jax"].typeof(x)
    axes = getattr(aval, "manual_axis_type", None)  # JAX 0.10; `vma` before
    return frozenset(axes.varying if axes is not None else getattr(aval, "vma", ()))


class JaxOps(Ops):
    """JAX: ``lax.stop_gradient``, ``jax.custom_vjp`` for rules marked ``custom_vjp``, ``lax.scan``."""

    def logaddexp(self, a: Array, b: Array) -> Array:
        return self.xp.logaddexp(a, b)  # stable, with JAX's own derivative where both are -inf

    def takes_analytic_backward(self, rule: Any, call: Any) -> bool:
        return current().analytic_backward and rule.custom_vjp

    def value_with_backward(self, rule: Any, call: Any) -> Array:
        jax = sys.modules["jax"]
        fused = rule.fused is not None and call.one_pass
        # Every array of the record is an argument of the custom VJP, none is closed over: under
        # `shard_map` the backward pass is traced apart from the forward pass, where a closed-over
        # traced array (labels, lengths) would leak. The primals are differentiated; the other arrays
        # (labels, weights, ...) are differentiated by JAX where it perturbs them (weights).
        leaves, tree = jax.tree.flatten(call)
        primal_ids = [id(p) for p in call.primals]
        at = [primal_ids.index(id(x)) if id(x) in primal_ids else None for x in leaves]
        others = [i for i, x in enumerate(leaves) if at[i] is None and isinstance(x, jax.Array)]

        def passes(primals: tuple[Any, ...], constants: tuple[Any, ...] | list[Any]) -> Any:
            given = [x if k is None else primals[k] for x, k in zip(leaves, at, strict=True)]
            for i, x in zip(others, constants, strict=True):
                given[i] = x
            return rule.passes(jax.tree.unflatten(tree, given))

        @jax.custom_vjp  # type: ignore[untyped-decorator]
        def value(primals: tuple[Array, ...], leaves: tuple[Any, ...]) -> Array:
            return passes(primals, leaves)[0](*primals)[0]

        def forward(primals: tuple[Any, ...], leaves: tuple[Any, ...]) -> tuple[Array, Any]:
            # symbolic_zeros: each argument is a CustomVJPPrimal, whose `perturbed` says whether
            # JAX differentiates it.
            p, c = tuple(x.value for x in primals), tuple(x.value for x in leaves)
            if not any(x.perturbed for x in leaves):
                if fused:
                    out, gradients = passes(p, c)[2](*p)
                    return out, (gradients, p, c, (), None)
                out, residuals = passes(p, c)[0](*p)
                return out, ((), p, c, residuals, None)
            # The perturbed constants, None for the others (residuals keep the structure).
            perturbed = tuple(x.value if x.perturbed else None for x in leaves)

            def of_perturbed(*given: Array) -> Any:
                chosen = iter(given)
                leaves = [x if d is None else next(chosen) for x, d in zip(c, perturbed, strict=True)]
                return passes(p, leaves)[0](*p)

            taken = [d for d in perturbed if d is not None]
            out, pullback, residuals = jax.vjp(of_perturbed, *taken, has_aux=True)
            return out, ((), p, c, residuals, (pullback, perturbed))

        def backward(saved: Any, cotangent: Array) -> tuple[Any, Any]:
            gradients, p, c, residuals, of_constants = saved
            if gradients:  # from the fused pass, for a cotangent of 1
                gradients = tuple(g * cotangent.astype(g.dtype) for g in gradients)
            else:
                gradients = passes(p, c)[1](p, residuals, cotangent)
            gradients = tuple(_summed_like(g, x) for g, x in zip(gradients, p, strict=True))
            if of_constants is None:
                return gradients, tuple(None for _ in c)
            pullback, perturbed = of_constants
            given = iter(pullback(cotangent))
            return gradients, tuple(None if d is None else next(given) for d in perturbed)

        value.defvjp(forward, backward, symbolic_zeros=True)
        return value(call.primals, tuple(leaves[i] for i in others))

    def scan_row_blocks(
        self,
        fn: Callable[..., tuple[Any, tuple[Array, ...]]],
        carry: Any,
        rows: tuple[Array, ...],
        block: int | None,
        *,
        reverse: bool = False,
    ) -> tuple[Any, tuple[Array, ...]]:
        jax = sys.modules["jax"]
        count = rows[0].shape[0]
        if block is None or block >= count or not isinstance(rows[0], jax.core.Tracer):
            return super().scan_row_blocks(fn, carry, rows, block, reverse=reverse)
        xp = self.xp
        blocks, full = count // block, count // block * block
        rest: tuple[Array, ...] = ()
        if full != count and reverse:  # the last, partial block first
            carry, rest = fn(carry, *(a[full:, ...] for a in rows))
        stacked = tuple(xp.reshape(a[:full, ...], (blocks, block, *a.shape[1:])) for a in rows)
        carry, outputs = jax.lax.scan(lambda c, b: fn(c, *b), carry, stacked, reverse=reverse)
        parts = tuple(xp.reshape(o, (full, *o.shape[2:])) for o in outputs)
        if full == count:
            return carry, parts
        if not reverse:
            carry, rest = fn(carry, *(a[full:, ...] for a in rows))
        return carry, tuple(xp.concat([a, b], axis=0) for a, b in zip(parts, rest, strict=True))

    def constant(self, x: Array) -> Array:
        return sys.modules["jax"].lax.stop_gradient(x)

    def differentiates(self, x: Array) -> bool:
        return isinstance(x, sys.modules["jax"].core.Tracer)
