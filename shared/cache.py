"""The one cache folder of the toolkit: $TOOLKIT_CACHE, else ~/.cache/efficient-learning-toolkit."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """The cache folder (or a subfolder of it, not created here)."""
    root = os.environ.get("TOOLKIT_CACHE") or Path.home() / ".cache" / "efficient-learning-toolkit"
    return Path(root).joinpath(*parts)
