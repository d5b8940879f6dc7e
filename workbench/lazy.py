"""Lazy public faces for packages: ``from pkg import name`` imports the submodule that defines ``name`` on first use,
so importing a package (and a light submodule of it, such as its ``analysis`` module) costs nothing.

Where a public name is also the name of the submodule defining it (``circuits.paths.decompose``, ``workbench.harvest``),
the package attribute is the public object, as an eager ``from .decompose import decompose`` in ``__init__`` would
make it, also after the import system has imported the submodule (``sys.modules`` still holds the module).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from collections.abc import Callable
from typing import Any


class _LazyPackage(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        exports = self.__dict__.get("_lazy_exports", {})
        if (isinstance(value, types.ModuleType) and value.__name__ == f"{self.__name__}.{name}"
                and exports.get(name) == value.__name__ and hasattr(value, name)):
            value = getattr(value, name)  # the import system binding a submodule that shares a public name
        super().__setattr__(name, value)


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``(__getattr__, __dir__, __all__)`` for ``package`` (call it from the package's ``__init__``), where
    ``exports`` maps each public name to the module defining it (absolute, or relative to the package when it
    starts with ``.``)."""
    module = sys.modules[package]
    resolved = {name: importlib.util.resolve_name(mod, package) for name, mod in exports.items()}
    module.__dict__["_lazy_exports"] = resolved
    module.__class__ = _LazyPackage

    def __getattr__(name: str) -> Any:
        target = resolved.get(name)
        if target is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(target), name)

    def __dir__() -> list[str]:
        return sorted(set(resolved) | set(module.__dict__))

    return __getattr__, __dir__, sorted(resolved)
