"""Drop-in replacements with the names and conventions of other libraries.

Each module is imported on first access (``arrayloss.compat.tf``), and imports no array library.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["optax", "tf", "tfa", "torch"]


def __getattr__(name: str) -> ModuleType:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
