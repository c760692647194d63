"""What every tool's command line shares: the app, common options, exit codes, `doctor`.

Exit codes: 0 success, 1 failure, 2 bad input (one line naming the file or flag),
75 preempted after saving state (rerun with --resume).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer

from shared import __version__
from shared.config import config_callback, resolved_options
from shared.console import Console, configure, get_console
from shared.errors import InputError, ToolkitError

# -- common options (typer Annotated aliases, so every command spells them the same) ------
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        is_eager=True,
        callback=config_callback,
        help="YAML file supplying any option of this command (keys = option names); "
        "flags given on the command line win.",
    ),
]
DeviceOpt = Annotated[
    str,
    typer.Option(
        "--device",
        help="auto | cpu | cuda | cuda:N | mps. auto: the launcher's local GPU under "
        "torchrun/srun, else the CUDA GPU with most free memory, else MPS, else CPU.",
    ),
]
OutOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        "-o",
        help="Output directory: config.yaml, metrics.json, log.txt and the artefacts.",
    ),
]
JsonOpt = Annotated[
    bool, typer.Option("--json", help="Print the final metrics as one JSON object on stdout.")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or logs.")]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue from the state saved in --out (resume.pt).")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
CheckpointEveryOpt = Annotated[
    int,
    typer.Option(
        "--checkpoint-every",
        help="Save resume state every N steps (0: only at the end and on SIGTERM/SIGUSR1).",
        min=0,
    ),
]


def _version_callback(ctx: typer.Context, value: bool) -> None:
    if value:
        typer.echo(f"{ctx.info_name} {__version__}")
        raise typer.Exit()


def create_app(tool: str, help_text: str) -> typer.Typer:
    """A typer app with `--version` and the shared `doctor` command."""
    app = typer.Typer(
        name=tool,
        help=help_text,
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    )

    @app.callback()
    def _root(
        version: Annotated[
            bool,
            typer.Option(
                "--version",
                callback=_version_callback,
                is_eager=True,
                help="Print the version and exit.",
            ),
        ] = False,
    ) -> None:
        pass

    @app.command("doctor")
    def doctor(
        device: DeviceOpt = "auto",
        json_output: JsonOpt = False,
    ) -> None:
        """Versions, the device this tool would pick, CUDA/NCCL, installed extras, and the
        distributed environment it detects."""
        from shared.doctor import doctor_report, print_doctor

        console = configure(json_mode=json_output)
        report = doctor_report(tool, device)
        print_doctor(report, console)

    return app


def run_app(app: typer.Typer, argv: list[str] | None = None) -> None:
    """Console-script entry: expected errors and usage errors become one line naming the
    flag or file, and an exit code (2 for bad input); no traceback."""
    prog = app.info.name
    _route_library_output()
    try:
        cmd = typer.main.get_command(app)
        cmd.main(args=argv, prog_name=prog, standalone_mode=False)
    except ToolkitError as exc:
        get_console().error(f"{prog}: error: {exc}")
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        get_console().error(f"{prog}: interrupted")
        sys.exit(130)
    except Exception as exc:
        # click's usage errors (typer vendors its own click: matched by shape, not class)
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        ctx = getattr(exc, "ctx", None)
        sub = f" {ctx.info_name}" if ctx is not None and ctx.parent is not None else ""
        message = " ".join(exc.format_message().split())
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            sys.exit(0)
        get_console().error(f"{prog}{sub}: error: {message} (see --help)")
        sys.exit(exc.exit_code)


def _route_library_output() -> None:
    """Third-party warnings become one line through our console (logged; hidden by --quiet),
    each shown once, instead of multi-line blocks between our own messages; deprecation
    notices about a library's own internals go to the log only (a user cannot act on them,
    and they would stand before an error line). The progress bars and advice blocks of hub
    libraries are switched off (ours report progress)."""
    import os
    import warnings

    internal = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)

    def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
        text = " ".join(str(message).split())
        get_console().library_warning(
            f"{category.__name__}: {text[:300]}", screen=not issubclass(category, internal)
        )

    warnings.showwarning = show
    warnings.simplefilter("once")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@contextmanager
def command(
    ctx: typer.Context,
    tool: str,
    out: Path | None = None,
    *,
    resume: bool = False,
    checkpoint_every: int = 0,
    overwrite: bool = False,
) -> Iterator[Any]:
    """Set up a command from its context: console mode from --quiet/--json, and a `Run` for
    the output directory `out` (removed again on bad input), or a `NoOutput` without one."""
    from shared.runs import Run

    console = configure(
        quiet=bool(ctx.params.get("quiet", False)),
        json_mode=bool(ctx.params.get("json_output", False)),
    )
    if out is None:
        yield NoOutput(console)
        return
    with Run(
        out,
        tool=tool,
        command=ctx.info_name or "",
        options=resolved_options(ctx),
        resume=resume,
        checkpoint_every=checkpoint_every,
        overwrite=overwrite,
    ) as run:
        yield run


class NoOutput:
    """Stands in for a `Run` when a command was given no --out: nothing is written."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def save_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        return metrics

    def path(self, name: str) -> Path:
        raise InputError(f"this command needs --out to write {name}")


def pick_device(spec: str, console: Console | None = None) -> Any:
    """Resolve --device and say what was picked (on stderr)."""
    from shared.device import select_device

    choice = select_device(spec)
    (console or get_console()).info(f"device: {choice}")
    return choice.device
