"""Submodules imported on first attribute access (PEP 562), for ``arrayloss`` and ``arrayloss.compat``."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection
from types import ModuleType


def lazy_submodules(
    package: str, submodules: Collection[str], public: Collection[str]
) -> tuple[Callable[[str], ModuleType], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package``: ``package.name`` imports the
    submodule ``name`` (one of ``submodules``) on first access, and ``dir(package)`` lists the
    ``public`` names only, not the package's own imports."""

    def __getattr__(name: str) -> ModuleType:
        if name in submodules:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*public, *submodules})

    return __getattr__, __dir__
