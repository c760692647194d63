"""A command whose tool's extra is not installed stops with one line naming the pip command
(exit 1) and leaves no run folder, instead of an ImportError traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared import deps
from tests.helpers import run_cli

# a command of each tool that needs its extra, with stand-ins for the required options
COMMANDS = {
    "vbp": ["collect-stats", "--model", "x", "--data", "builtin:digits"],
    "tomerge": ["generate", "--pipeline", "x", "--prompt", "a cat"],
    "kdic": ["build-student", "--teacher", "x"],
    "scorelidar": ["train-teacher", "--data", "x"],
    "hello": ["build-projector", "--encoder", "timm:x", "--classes", "builtin:digits"],
}


@pytest.mark.parametrize("tool", sorted(COMMANDS))
def test_a_missing_extra_is_named_in_one_line(tool: str, monkeypatch, tmp_path: Path) -> None:
    extra = set(deps.extras(tool))
    monkeypatch.setattr(deps, "is_installed", lambda module: module not in extra)
    out = tmp_path / "run"
    res = run_cli(tool, *COMMANDS[tool], "--out", str(out))
    errors = [line for line in res.stderr.splitlines() if "error" in line.lower()]
    assert res.code == 1 and len(errors) == 1, (res.code, res.stderr)  # no traceback
    assert f"pip install 'efficient-learning-toolkit[{tool}]'" in errors[0]
    assert not out.exists()
