"""JAX's steps of the backend seam, chosen once a JAX namespace is seen (so jax is loaded)."""

from __future__ import annotations

import sys

from ._compat import Array
from ._ops import Ops


class JaxOps(Ops):
    """JAX: constants of differentiation by ``lax.stop_gradient``."""

    def constant(self, x: Array) -> Array:
        return sys.modules["jax"].lax.stop_gradient(x)
