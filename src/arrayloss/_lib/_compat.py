"""The one place that imports ``array_api_compat``, so that arrayloss can be vendored.

A host package that vendors arrayloss together with its own copy of ``array_api_compat``
(as SciPy and scikit-learn vendor array-API packages) places a module named
``_array_api_compat_vendor`` beside the vendored ``arrayloss`` package, re-exporting its
copy's names; arrayloss then uses that copy and never imports a top-level
``array_api_compat``. Installed normally, there is no such module (the relative import
reaches above the top-level package) and the installed ``array_api_compat`` is used.
This is array-api-extra's convention (``array_api_extra/_lib/_compat.py``).
"""

from __future__ import annotations

from typing import Any, TypeVar

Array = Any
"""An array of any array-API library (the standard has no common type to name)."""

ArrayT = TypeVar("ArrayT")
"""The caller's array type, in a public function's signature: the result has the type of the first array
argument (a loss of NumPy arrays types as a NumPy array; with NumPy's shape-typed arrays, as one of the
input's shape type, which a reduction does not keep)."""

try:
    from ..._array_api_compat_vendor import (  # type: ignore[import-not-found]
        array_namespace,
        device,
        is_array_api_obj,
        is_numpy_array,
        is_numpy_namespace,
        is_torch_array,
        is_torch_namespace,
    )
except ImportError:
    from array_api_compat import (
        array_namespace,
        device,
        is_array_api_obj,
        is_numpy_array,
        is_numpy_namespace,
        is_torch_array,
        is_torch_namespace,
    )

__all__ = [
    "Array",
    "ArrayT",
    "array_namespace",
    "device",
    "is_array_api_obj",
    "is_numpy_array",
    "is_numpy_namespace",
    "is_torch_array",
    "is_torch_namespace",
]
