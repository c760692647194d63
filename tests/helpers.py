"""Paths and small helpers shared by the tests."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
BIN = Path(sys.executable).parent


def tool_path(name: str) -> str:
    """The console script installed beside this interpreter."""
    return str(BIN / name)
