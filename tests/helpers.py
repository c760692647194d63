"""Paths and small helpers shared by the tests."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess as sp
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
KITTI_SCAN = REPO / "data" / "kitti_000123.ply"  # shipped, CC BY-NC-SA 3.0 (data/README.md)
BIN = Path(sys.executable).parent


def tool_path(name: str) -> str:
    """The console script installed beside this interpreter."""
    return str(BIN / name)


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def run_cli(
    tool: str,
    *args: str | os.PathLike[str],
    subprocess: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 600,
) -> CliResult:
    """Run `tool args...` and return its exit code, stdout and stderr.

    In-process by default (the tool's typer app through the same entry code as the console
    script: fast, no interpreter start-up); `subprocess=True` for what needs a real process
    (signals, torchrun, environment variables read at import)."""
    argv = [str(a) for a in args]
    if subprocess:
        res = sp.run(
            [tool_path(tool), *argv],
            capture_output=True,
            text=True,
            env={**os.environ, **env} if env is not None else None,
            cwd=cwd,
            timeout=timeout,
        )
        return CliResult(res.returncode, res.stdout, res.stderr)
    from shared.cli import run_app
    from shared.registry import load_app

    app = load_app(tool)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    old_cwd = Path.cwd()
    old_env = dict(os.environ)
    try:
        if env is not None:
            os.environ.update(env)
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                run_app(app, argv)
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(old_cwd)
        if env is not None:
            os.environ.clear()
            os.environ.update(old_env)
    return CliResult(code, out.getvalue(), err.getvalue())
