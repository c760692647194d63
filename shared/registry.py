"""The tool registry: every tool declares itself with one entry point in the group
`efficient_learning.tools` (pyproject.toml), pointing at a `ToolSpec`. `make demo`, `doctor`,
the tests and `benchmarks/run_all.py` read this registry instead of a hard-coded list."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any

GROUP = "efficient_learning.tools"


@dataclass(frozen=True)
class ToolSpec:
    name: str  # the console command
    package: str  # the import package, e.g. "vbp_cli"
    extra: str  # the pip extra that installs its dependencies
    summary: str  # one line for listings
    app: str  # "module:attribute" of its typer app
    demo: str | None = None  # module run by `make demo` (python -m ...)
    demo_title: str = ""
    benchmarks: tuple[str, ...] = field(default_factory=tuple)  # modules under benchmarks/


def tools() -> dict[str, ToolSpec]:
    """Every registered tool, by name, in a stable order (registration name)."""
    found: dict[str, ToolSpec] = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        spec = ep.load()
        if not isinstance(spec, ToolSpec):
            raise TypeError(f"entry point {ep.name} of {GROUP} is not a ToolSpec")
        found[spec.name] = spec
    return found


def tool(name: str) -> ToolSpec:
    known = tools()
    if name not in known:
        raise KeyError(f"unknown tool {name!r}; registered: {', '.join(known)}")
    return known[name]


def load_app(name: str) -> Any:
    """The typer app of tool `name`."""
    module, attr = tool(name).app.split(":")
    return getattr(importlib.import_module(module), attr)
