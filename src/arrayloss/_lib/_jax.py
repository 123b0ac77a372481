"""JAX's steps of the backend seam (imported only once a JAX namespace is seen)."""

from __future__ import annotations

import jax

from ._compat import Array
from ._ops import Ops


class JaxOps(Ops):
    """JAX: constants of differentiation by ``lax.stop_gradient``."""

    def constant(self, x: Array) -> Array:
        return jax.lax.stop_gradient(x)
