"""Lazy package exports: `import tool_cli` (and so `tool --help`) must not import torch."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """A module-level `__getattr__` that imports `exports[name]` ("module:attribute") on
    first use: `__getattr__ = lazy_exports(__name__, {"prune": "vbp_cli.prune:prune_model"})`."""

    def __getattr__(name: str) -> Any:  # noqa: N807 (the module hook's name)
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, attr = exports[name].split(":")
        return getattr(importlib.import_module(module), attr)

    return __getattr__
