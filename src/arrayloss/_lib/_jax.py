"""JAX's steps of the backend seam, chosen once a JAX namespace is seen (so jax is loaded).

**Constants of differentiation** by ``lax.stop_gradient``.

**Autodiff.** JAX differentiates the composition of a loss, which serves the plain
losses well (XLA fuses it, and forward mode keeps working). A rule that has
``with_constants`` (``linear_cross_entropy``'s, ``ctc_loss``'s) is attached through
``jax.custom_vjp`` instead: autodiff of a chunk loop would keep every chunk's logits for
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


class JaxOps(Ops):
    """JAX: ``lax.stop_gradient``, ``jax.custom_vjp`` for rules with ``with_constants``, ``lax.scan``."""

    def logaddexp(self, a: Array, b: Array) -> Array:
        return self.xp.logaddexp(a, b)  # stable, with JAX's own derivative where both are -inf

    def takes_analytic_backward(self, rule: Any, call: Any) -> bool:
        return current().analytic_backward and rule.with_constants is not None

    def value_with_backward(self, rule: Any, call: Any) -> Array:
        jax = sys.modules["jax"]
        fused = rule.fused is not None and call.one_pass
        constants, tree = jax.tree.flatten(call.constants)  # arrays; the Nones of absent ones are no leaves

        def passes(leaves: tuple[Any, ...] | list[Any]) -> Any:
            return rule.passes(rule.with_constants(call, jax.tree.unflatten(tree, leaves)))

        @jax.custom_vjp  # type: ignore[untyped-decorator]
        def value(primals: tuple[Array, ...], leaves: tuple[Any, ...]) -> Array:
            return passes(leaves)[0](*primals)[0]

        def forward(primals: tuple[Any, ...], leaves: tuple[Any, ...]) -> tuple[Array, Any]:
            # symbolic_zeros: each argument is a CustomVJPPrimal, whose `perturbed` says whether
            # JAX differentiates it.
            p, c = tuple(x.value for x in primals), tuple(x.value for x in leaves)
            if not any(x.perturbed for x in leaves):
                if fused:
                    out, gradients = passes(c)[2](*p)
                    return out, (gradients, p, c, (), None)
                out, residuals = passes(c)[0](*p)
                return out, ((), p, c, residuals, None)
            # The perturbed constants, None for the others (residuals keep the structure).
            perturbed = tuple(x.value if x.perturbed else None for x in leaves)

            def of_perturbed(*given: Array) -> Any:
                chosen = iter(given)
                leaves = [x if d is None else next(chosen) for x, d in zip(c, perturbed, strict=True)]
                return passes(leaves)[0](*p)

            taken = [d for d in perturbed if d is not None]
            out, pullback, residuals = jax.vjp(of_perturbed, *taken, has_aux=True)
            return out, ((), p, c, residuals, (pullback, perturbed))

        def backward(saved: Any, cotangent: Array) -> tuple[Any, Any]:
            gradients, p, c, residuals, of_constants = saved
            if gradients:  # from the fused pass, for a cotangent of 1
                gradients = tuple(g * cotangent.astype(g.dtype) for g in gradients)
            else:
                gradients = passes(c)[1](p, residuals, cotangent)
            if of_constants is None:
                return gradients, tuple(None for _ in c)
            pullback, perturbed = of_constants
            given = iter(pullback(cotangent))
            return gradients, tuple(None if d is None else next(given) for d in perturbed)

        value.defvjp(forward, backward, symbolic_zeros=True)
        return value(call.primals, tuple(constants))

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
