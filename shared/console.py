"""What a command shows: logs and progress on stderr, results on stdout.

One process-wide `Console`, configured by the command's `--quiet`/`--json` flags. Only
rank 0 of a distributed job prints; every rank may log to its own run log.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO, TypeVar

from rich.console import Console as RichConsole
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

T = TypeVar("T")


def _is_main_rank() -> bool:
    """Rank 0 by the launcher's variables: read here rather than through
    shared.distributed, which imports torch and would slow every `--help`."""
    import os

    for var in ("RANK", "SLURM_PROCID"):
        if var in os.environ:
            try:
                return int(os.environ[var]) == 0
            except ValueError:
                return True
    return True


def _plain(value: Any) -> Any:
    """JSON-safe copy: paths to str, tensors/numpy scalars to Python, NaN to None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(obj: Any, indent: int | None = None) -> str:
    return json.dumps(_plain(obj), indent=indent, sort_keys=False)


def format_value(value: Any) -> str:
    if isinstance(value, float):
        if value == 0 or 1e-3 <= abs(value) < 1e6:
            return f"{value:.4g}" if abs(value) < 1 else f"{value:,.4g}"
        return f"{value:.3e}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


class Console:
    def __init__(self, quiet: bool = False, json_mode: bool = False) -> None:
        self.quiet = quiet
        self.json_mode = json_mode
        self.main = _is_main_rank()
        self.err = RichConsole(stderr=True, highlight=False, soft_wrap=True)
        self.out = RichConsole(highlight=False, soft_wrap=True)
        self._log: TextIO | None = None

    # -- logging ---------------------------------------------------------------
    def attach_log(self, path: Path) -> None:
        self.detach_log()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in detach_log)

    def detach_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def _to_log(self, level: str, message: str) -> None:
        if self._log is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            self._log.write(f"{stamp} {level} {message}\n")
            self._log.flush()

    def info(self, message: str) -> None:
        self._to_log("INFO", message)
        if self.main and not self.quiet:
            self.err.print(message, markup=False)

    def warn(self, message: str) -> None:
        self._to_log("WARN", message)
        if self.main:
            self.err.print(f"warning: {message}", style="yellow", markup=False)

    def library_warning(self, message: str, screen: bool = True) -> None:
        """A third-party warning: one line in the log; on screen too unless --quiet or
        `screen` is False."""
        self._to_log("WARN", message)
        if screen and self.main and not self.quiet:
            self.err.print(f"warning: {message}", style="yellow", markup=False)

    def error(self, message: str) -> None:
        self._to_log("ERROR", message)
        print(message, file=sys.stderr, flush=True)

    # -- progress --------------------------------------------------------------
    @property
    def show_progress(self) -> bool:
        return self.main and not self.quiet and self.err.is_terminal

    @contextmanager
    def progress_bar(self, description: str, total: int | None) -> Iterator[ProgressBar]:
        """A bar with live fields (loss, lr) shown beside it; silent when not a terminal."""
        bar = ProgressBar(self, description, total)
        try:
            yield bar
        finally:
            bar.close()

    def progress(
        self, iterable: Iterable[T], description: str = "", total: int | None = None
    ) -> Iterator[T]:
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        with self.progress_bar(description, total) as bar:
            for item in iterable:
                yield item
                bar.advance()

    # -- results ---------------------------------------------------------------
    def table(self, title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
        """A table on stdout (stderr in --json mode, so stdout stays one JSON object)."""
        self._to_log("TABLE", f"{title}: {list(columns)}")
        if not self.main or self.quiet:
            return
        table = Table(title=title, title_justify="left")
        for i, column in enumerate(columns):
            table.add_column(column, justify="left" if i == 0 else "right")
        for row in rows:
            self._to_log("ROW", " | ".join(format_value(v) for v in row))
            table.add_row(*(format_value(v) for v in row))
        (self.err if self.json_mode else self.out).print(table)

    def summary(self, metrics: Mapping[str, Any], title: str = "Summary") -> None:
        """The final metrics: one JSON object on stdout with --json, else a table."""
        if not self.main:
            return
        self._to_log("RESULT", to_json(metrics))
        if self.json_mode:
            sys.stdout.write(to_json(metrics) + "\n")
            sys.stdout.flush()
            return
        flat = [(k, v) for k, v in metrics.items() if not isinstance(v, (Mapping, list))]
        self.table(title, ["metric", "value"], flat)


class ProgressBar:
    """A rich bar on a terminal; elsewhere (Slurm logs, CI) a plain line every
    `LINE_EVERY_S` seconds, so a batch job's log still shows how far it got."""

    LINE_EVERY_S = 30.0

    def __init__(self, console: Console, description: str, total: int | None) -> None:
        self._progress: Progress | None = None
        self._fields = ""
        self._console = console
        self._description = description
        self._total = total
        self._done = 0
        self._start = self._last_line = time.monotonic()
        self._lines = console.main and not console.quiet and not console.show_progress
        if console.show_progress:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[info]}"),
                console=console.err,
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(description, total=total, info="")

    def advance(self, n: int = 1, **fields: Any) -> None:
        self._done += n
        info = "  ".join(f"{k}={format_value(v)}" for k, v in fields.items())
        if info:
            self._fields = info
        if self._progress is not None:
            self._progress.update(self._task, advance=n, info=self._fields)
        elif self._lines and time.monotonic() - self._last_line >= self.LINE_EVERY_S:
            self._last_line = time.monotonic()
            total = f"/{self._total}" if self._total else ""
            elapsed = self._last_line - self._start
            self._console.info(
                f"{self._description}: {self._done}{total} after {elapsed:.0f} s"
                f"  {self._fields}".rstrip()
            )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


_console = Console()


def get_console() -> Console:
    return _console


def configure(quiet: bool = False, json_mode: bool = False) -> Console:
    global _console
    _console.detach_log()
    _console = Console(quiet=quiet, json_mode=json_mode)
    return _console
