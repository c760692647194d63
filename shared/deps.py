"""Optional dependencies per tool: say which extra to install instead of an ImportError."""

from __future__ import annotations

import importlib.util
from importlib import metadata

from shared.errors import MissingExtraError

DISTRIBUTION = "efficient-learning-toolkit"

# module to import -> distribution name (for versions in `doctor`)
EXTRAS: dict[str, dict[str, str]] = {
    "vbp": {"timm": "timm", "onnx": "onnx", "onnxruntime": "onnxruntime"},
    "tomerge": {
        "diffusers": "diffusers",
        "transformers": "transformers",
        "timm": "timm",
        "torchmetrics": "torchmetrics",
    },
    "kdic": {
        "compressai": "compressai",
        "bjontegaard": "bjontegaard",
        "pytorch_msssim": "pytorch-msssim",
    },
    "scorelidar": {"spconv": "spconv", "diffusers": "diffusers", "scipy": "scipy"},
    "hello": {"open_clip": "open_clip_torch", "timm": "timm"},
}


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
    wanted = modules or tuple(EXTRAS[tool])
    missing = [m for m in wanted if not is_installed(m)]
    if missing:
        raise MissingExtraError(
            f"{tool} needs {', '.join(missing)}: pip install '{DISTRIBUTION}[{tool}]'"
        )


def extra_status(tool: str) -> dict[str, str | None]:
    """Installed version (or None) of each optional dependency of `tool`."""
    out: dict[str, str | None] = {}
    for module, dist in EXTRAS[tool].items():
        out[dist] = version_of(dist) if is_installed(module) else None
    if tool.startswith("scorelidar") and out.get("spconv") is None:
        cuda_build = version_of("spconv-cu120")
        if cuda_build and is_installed("spconv"):
            out["spconv-cu120"] = cuda_build
            out.pop("spconv")
    return out
