"""Which :class:`~._ops.Ops` serves a namespace: the one place that knows every backend family.

A family's module is imported only when its namespace is seen (``import arrayloss`` imports
no array library).
"""

from __future__ import annotations

import sys
from types import ModuleType

from ._compat import Array, array_namespace, is_array_api_obj
from ._ops import NumpyOps, Ops

_TORCH_MODULE = __name__.rpartition(".")[0] + "._torch"


def _torch() -> ModuleType:
    """:mod:`._torch`, imported on first use (it imports torch, which the caller has loaded).

    A dictionary lookup, as importlib's own first step (66 ns; an import statement takes 218). A
    module that another thread is still importing is in ``sys.modules`` with its spec's
    ``_initializing`` set (importlib's mark); the import statement then waits for it.
    """
    loaded = sys.modules.get(_TORCH_MODULE)
    if loaded is not None and not getattr(loaded.__spec__, "_initializing", False):
        return loaded
    from . import _torch  # torch.compile traces an import statement, not importlib

    return _torch


def is_array(x: object) -> bool:
    """Whether ``x`` is an array of an array-API library (``array_api_compat.is_array_api_obj``)."""
    torch = sys.modules.get("torch")
    return (torch is not None and isinstance(x, torch.Tensor)) or is_array_api_obj(x)


def namespace_of(arrays: list[Array]) -> ModuleType:
    """The array-API namespace of ``arrays`` (``array_api_compat.array_namespace``).

    PyTorch tensors are known by ``isinstance``: array-api-compat's helpers are cached
    with ``functools.lru_cache``, which ``torch.compile`` warns about at every call, and
    the check costs a tenth as much. ``TypeError`` for arrays of several libraries.
    """
    torch = sys.modules.get("torch")
    if arrays and torch is not None and all(isinstance(a, torch.Tensor) for a in arrays):
        namespace: ModuleType = _torch().NAMESPACE
        return namespace
    inferred: ModuleType = array_namespace(*arrays)
    return inferred


def ops_for(xp: ModuleType) -> Ops:
    """The :class:`Ops` of the namespace ``xp``.

    Known by the module's name, as ``array_api_compat.is_numpy_namespace`` and
    ``is_torch_namespace`` do (the library itself, or array-api-compat's wrapper of it,
    vendored or not), without their cached helpers, which ``torch.compile`` warns about.
    """
    family = xp.__name__.rpartition("array_api_compat.")[2]
    if family == "numpy":
        return NumpyOps(xp)
    if family == "jax.numpy":
        from ._jax import JaxOps  # jax is loaded: its namespace was handed in

        return JaxOps(xp)
    if family == "torch":
        ops: Ops = _torch().TorchOps(xp)
        return ops
    if family == "dask.array":
        from ._dask import DaskOps  # dask is loaded: its namespace was handed in

        return DaskOps(xp)
    return Ops(xp)
