"""Optional dependencies per tool: say which extra to install instead of an ImportError.
Each tool declares its extra's modules in its registry entry (`ToolSpec.extras`)."""

from __future__ import annotations

import importlib.util
from importlib import metadata

from shared.errors import MissingExtraError

DISTRIBUTION = "efficient-learning-toolkit"


def extras(tool: str) -> dict[str, str]:
    """The modules of `tool`'s extra -> their distributions (for versions in `doctor`)."""
    from shared.registry import tool as registered

    return registered(tool).extras


def is_installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def version_of(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def require(tool: str, *modules: str) -> None:
    """Fail with one line naming the extra when a module the command needs is missing."""
    wanted = modules or tuple(extras(tool))
    missing = [m for m in wanted if not is_installed(m)]
    if missing:
        raise MissingExtraError(
            f"{tool} needs {', '.join(missing)}: pip install '{DISTRIBUTION}[{tool}]'"
        )


def extra_status(tool: str) -> dict[str, str | None]:
    """Installed version (or None) of each optional dependency of `tool`."""
    out: dict[str, str | None] = {}
    for module, dist in extras(tool).items():
        out[dist] = version_of(dist) if is_installed(module) else None
    if tool.startswith("scorelidar") and out.get("spconv") is None:
        cuda_build = version_of("spconv-cu120")
        if cuda_build and is_installed("spconv"):
            out["spconv-cu120"] = cuda_build
            out.pop("spconv")
    return out
