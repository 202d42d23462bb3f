"""Package exports imported on first use (PEP 562), shared by ``circuits``, ``probe`` and ``detectors``.

``import circuits`` (and the CLI) then starts without loading torch or transformers until a name that
needs them is used.
"""

from __future__ import annotations

import sys
import types
from importlib import import_module
from typing import Any, Callable


def lazy_exports(package: str, exports: dict[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose public ``name`` lives in module ``exports[name]``."""
    module = sys.modules[package]

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(exports[name]), name)
        setattr(module, name, value)
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(module)) | set(exports))

    class _Package(types.ModuleType):
        """When a submodule shares its name with an export (``circuits.capture`` and the function
        ``capture``), the import system binds the submodule on the package once it loads; keep the export,
        as an eager ``from circuits.capture import capture`` would."""

        def __setattr__(self, name: str, value: Any) -> None:
            if isinstance(value, types.ModuleType) and exports.get(name) == value.__name__:
                value = getattr(value, name)
            super().__setattr__(name, value)

    module.__class__ = _Package
    return __getattr__, __dir__
