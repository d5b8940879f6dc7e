"""Lazy public faces for packages: ``from pkg import name`` imports the submodule that defines ``name`` on first use,
so importing a package (and a light submodule of it, such as its ``analysis`` module) costs nothing."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package``, where ``exports`` maps each public name to the module
    defining it (absolute, or relative to the package when it starts with ``.``)."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module, package), name)

    def __dir__() -> list[str]:
        return sorted(exports)

    return __getattr__, __dir__, sorted(exports)
