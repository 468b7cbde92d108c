"""Package attributes imported on first use (PEP 562), so importing a package for one light
module (``traces.errors``, ``simulator.sweep.executors``) does not load NumPy and pandas for the
names the package re-exports. Used by ``traces`` and ``simulator.sweep``."""

from __future__ import annotations

import importlib
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]
                 ) -> tuple[Callable[[str], Any], list[str]]:
    """(``__getattr__``, ``__all__``) for ``package``, whose ``exports`` map a submodule to the
    names it provides."""
    module_of = {name: module for module, names in exports.items() for name in names}
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str):
        try:
            module = module_of[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value          # imported once; later lookups skip __getattr__
        return value

    return __getattr__, sorted(module_of)
