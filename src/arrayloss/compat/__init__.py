"""Drop-in replacements with the names and conventions of other libraries.

Each module is imported on first access (``arrayloss.compat.tf``), and imports no array library.
"""

from __future__ import annotations

from .._lib._lazy import lazy_submodules

__all__ = ["optax", "tf", "tfa", "torch"]

__getattr__, __dir__ = lazy_submodules(__name__, __all__, __all__)
