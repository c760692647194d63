"""The tool registry: every tool declares itself with one entry point in the group
`efficient_learning.tools` (pyproject.toml), pointing at a `ToolSpec`. `make demo`, `doctor`,
the tests and `benchmarks/run_all.py` read this registry instead of a hard-coded list."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from typing import Any

GROUP = "efficient_learning.tools"


@dataclass(frozen=True)
class ToolSpec:
    """A tool's registry entry. By convention the tool `name` lives in package
    `<name>_cli` (typer app `<name>_cli.cli:app`, demo module `<name>_cli.demo`) and is
    installed by the extra `[<name>]`; only what is not conventional is declared."""

    summary: str  # one line for listings
    demo_title: str = ""  # the heading of its part of `make demo`
    benchmarks: tuple[str, ...] = field(default_factory=tuple)  # modules under benchmarks/
    # its extra's modules -> their distributions (what `require` and `doctor` check)
    extras: dict[str, str] = field(default_factory=dict)
    name: str = ""  # filled from the entry point's name

    @property
    def package(self) -> str:
        return f"{self.name}_cli"

    @property
    def extra(self) -> str:
        return self.name

    @property
    def app(self) -> str:
        return f"{self.package}.cli:app"

    @property
    def demo(self) -> str:
        return f"{self.package}.demo"


def tools() -> dict[str, ToolSpec]:
    """Every registered tool, by name, in a stable order (registration name)."""
    found: dict[str, ToolSpec] = {}
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        spec = ep.load()
        if not isinstance(spec, ToolSpec):
            raise TypeError(f"entry point {ep.name} of {GROUP} is not a ToolSpec")
        found[ep.name] = replace(spec, name=ep.name)
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
