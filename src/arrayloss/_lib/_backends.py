"""Which :class:`~._ops.Ops` serves a namespace: the one place that knows every backend family.

A family's module is imported only when its namespace is seen (``import arrayloss`` imports
no array library).
"""

from __future__ import annotations

from types import ModuleType

from ._ops import NumpyOps, Ops


def ops_for(xp: ModuleType) -> Ops:
    """The :class:`Ops` of the namespace ``xp``.

    Known by the module's name, as ``array_api_compat.is_numpy_namespace`` and
    ``is_torch_namespace`` do (the library itself, or array-api-compat's wrapper of it,
    vendored or not), without their cached helpers, which ``torch.compile`` warns about.
    """
    family = xp.__name__.rpartition("array_api_compat.")[2]
    if family == "numpy":
        return NumpyOps(xp)
    if family == "torch":
        from ._torch import TorchOps  # torch is loaded: its namespace was handed in

        return TorchOps(xp)
    return Ops(xp)
