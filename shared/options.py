"""Command options declared once, next to the config field they fill.

A tool's `api.py` declares each command's options as a dataclass whose fields carry their
help, flag, bounds and choices (`opt(...)`); `tool_command` turns that dataclass into the
typer command: one option per field, plus the options every command shares (`--config
--json --quiet --device --out --overwrite --resume --checkpoint-every`). Values are checked
against the declared bounds (NaN and infinities are refused for every float) before any
work starts; a bad value is one line naming the flag and exit code 2.

The command body receives the filled config and a `Invocation` (console, run folder,
device) and returns its metrics; the decorator saves and prints them (a table, or one JSON
object with --json).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import types
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Annotated, Any

import typer

from shared.errors import InputError

_META = "toolkit_option"


@dataclass(frozen=True)
class OptionSpec:
    help: str
    flag: str | None = None  # default: --field-name
    short: str | None = None
    min: float | None = None
    max: float | None = None
    min_open: bool = False  # min itself refused
    max_open: bool = False
    choices: tuple[str, ...] | None = None
    argument: bool = False  # a positional argument instead of --flag
    hidden: bool = False

    # the bounds as words ("> 0", "<= 8"), for the error a bad value gets and for --help
    @property
    def lower(self) -> str | None:
        return None if self.min is None else f"{'>' if self.min_open else '>='} {self.min:g}"

    @property
    def upper(self) -> str | None:
        return None if self.max is None else f"{'<' if self.max_open else '<='} {self.max:g}"


def opt(
    default: Any = MISSING,
    help: str = "",  # noqa: A002 (the click/typer name)
    *,
    default_factory: Callable[[], Any] | Any = MISSING,
    flag: str | None = None,
    short: str | None = None,
    min: float | None = None,  # noqa: A002
    max: float | None = None,  # noqa: A002
    min_open: bool = False,
    max_open: bool = False,
    choices: typing.Sequence[str] | None = None,
    argument: bool = False,
    hidden: bool = False,
) -> Any:
    """A dataclass field that is also a command-line option (see the module docstring)."""
    spec = OptionSpec(
        help, flag, short, min, max, min_open, max_open,
        tuple(choices) if choices else None, argument, hidden,
    )  # fmt: skip
    kwargs: dict[str, Any] = {"metadata": {_META: spec}}
    if default_factory is not MISSING:
        kwargs["default_factory"] = default_factory
    else:
        kwargs["default"] = default
    return field(**kwargs)


def option_spec(f: dataclasses.Field[Any]) -> OptionSpec | None:
    return f.metadata.get(_META)


def flag_of(f: dataclasses.Field[Any]) -> str:
    spec = option_spec(f)
    if spec is not None and spec.flag:
        return spec.flag
    return "--" + f.name.replace("_", "-")


# -- validation ---------------------------------------------------------------------------
def check_value(name: str, value: Any, spec: OptionSpec) -> None:
    """Raise InputError naming the flag when `value` breaks the declared bounds."""
    if value is None:
        return
    values = value if isinstance(value, (list, tuple)) else [value]
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            if spec.choices and str(v) not in spec.choices:
                raise InputError(f"{name}: {v!r} is not one of {', '.join(spec.choices)}")
            continue
        if isinstance(v, float) and not math.isfinite(v):
            raise InputError(f"{name}: must be a finite number, got {v}")
        if spec.min is not None and (v < spec.min or (spec.min_open and v == spec.min)):
            raise InputError(f"{name}: must be {spec.lower}, got {v:g}")
        if spec.max is not None and (v > spec.max or (spec.max_open and v == spec.max)):
            raise InputError(f"{name}: must be {spec.upper}, got {v:g}")


def validate(config: Any) -> None:
    """Check every declared option of a config dataclass instance (also from Python)."""
    for f in dataclasses.fields(config):
        spec = option_spec(f)
        if spec is not None:
            check_value(flag_of(f), getattr(config, f.name), spec)


# -- building the typer signature ---------------------------------------------------------
def _param_for(f: dataclasses.Field[Any], hint: Any) -> inspect.Parameter:
    spec = option_spec(f)
    assert spec is not None
    base, optional = _unwrap_optional(hint)
    help_text = spec.help
    if spec.choices:
        help_text = f"{help_text} One of: {', '.join(spec.choices)}.".strip()
    bounds = [b for b in (spec.lower, spec.upper) if b is not None]
    if bounds:  # the bounds check_value enforces, so --help shows what is accepted
        help_text = f"{help_text} [{', '.join(bounds)}]".strip()
    kwargs: dict[str, Any] = {"help": help_text, "hidden": spec.hidden}
    if spec.argument:
        info = typer.Argument(**{k: v for k, v in kwargs.items() if k != "hidden"})
    else:
        names = [flag_of(f)]
        if base is bool:
            names = [f"{names[0]}/--no-{names[0][2:]}"]
        if spec.short:
            names.append(spec.short)
        info = typer.Option(*names, **kwargs)
    if f.default is not MISSING:
        default = f.default
    elif f.default_factory is not MISSING:  # type: ignore[misc]
        default = f.default_factory()  # type: ignore[misc]
    else:
        default = inspect.Parameter.empty
    return inspect.Parameter(
        f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[hint, info]
    )


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else hint), True
    return hint, False


def _common_params(out: str, device: bool, train: bool) -> list[inspect.Parameter]:
    from shared.config import config_callback

    def p(name: str, hint: Any, default: Any, *names: str, **kw: Any) -> inspect.Parameter:
        return inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=default,
            annotation=Annotated[hint, typer.Option(*names, **kw)],
        )

    params = [
        p("config", Path | None, None, "--config", is_eager=True, callback=config_callback,
          help="YAML file supplying any option of this command (keys = option names); "
          "flags given on the command line win."),
        p("json_output", bool, False, "--json",
          help="Print the final metrics as one JSON object on stdout."),
        p("quiet", bool, False, "--quiet", "-q", help="No progress bars or logs."),
    ]  # fmt: skip
    if device:
        params.append(
            p("device", str, "auto", "--device",
              help="auto | cpu | cuda | cuda:N | mps. auto: the launcher's local GPU under "
              "torchrun/srun, else the CUDA GPU with most free memory, else MPS, else CPU.")
        )  # fmt: skip
    if out != "none":
        required = out == "required"
        params += [
            p("out", Path if required else Path | None,
              inspect.Parameter.empty if required else None, "--out", "-o",
              help="Run folder: config.yaml, metrics.json, log.txt and the artefacts. Must be "
              "new or empty unless " + ("--resume or " if train else "") + "--overwrite."),
            p("overwrite", bool, False, "--overwrite",
              help="Delete what an earlier run left in --out before starting."),
        ]  # fmt: skip
    if train:
        params += [
            p("resume", bool, False, "--resume",
              help="Continue from the state saved in --out (resume.pt) by the same command "
              "with the same options."),
            p("checkpoint_every", int, 0, "--checkpoint-every", min=0,
              help="Save resume state every N steps (0: only on SIGTERM/SIGUSR1/Ctrl-C)."),
        ]  # fmt: skip
    return params


class Invocation:
    """What a command body gets besides its config: console, run folder, device."""

    def __init__(self, ctx: typer.Context, run: Any, device_spec: str | None) -> None:
        self.ctx = ctx
        self.run = run
        self.console = run.console
        self._device_spec = device_spec
        self._device: Any = None

    @property
    def device(self) -> Any:
        """The picked device (said on stderr once); joins the launcher's process group."""
        if self._device is None:
            from shared import distributed
            from shared.cli import pick_device

            self._device = pick_device(self._device_spec or "auto", self.console)
            distributed.init(self._device)
        return self._device

    @property
    def resume(self) -> bool:
        return bool(self.ctx.params.get("resume", False))

    def path(self, name: str) -> Path:
        return self.run.path(name)


def tool_command(
    app: typer.Typer,
    name: str,
    config: type | None = None,
    *,
    out: str = "required",
    device: bool = True,
    train: bool = False,
    title: str | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register `fn(cfg, inv) -> metrics | None` as command `name` of `app`.

    out: "required" | "optional" | "none" (the --out option); train: adds --resume and
    --checkpoint-every. The function's docstring is the command's help."""
    if out not in ("required", "optional", "none"):
        raise ValueError(f"out must be required, optional or none, got {out!r}")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        fields = [f for f in dataclasses.fields(config) if option_spec(f)] if config else []
        hints = typing.get_type_hints(config, include_extras=True) if config else {}
        own = [_param_for(f, hints[f.name]) for f in fields]
        names = {p.name for p in own}
        common = [p for p in _common_params(out, device, train) if p.name not in names]
        ctx_param = inspect.Parameter(
            "ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context
        )
        args = [p for p in own if _is_argument(p)]
        rest = [p for p in own if not _is_argument(p)]
        signature = inspect.Signature([ctx_param, *args, *rest, *common])

        def body(ctx: typer.Context, **values: Any) -> None:
            from shared.cli import command

            cfg = None
            if config is not None:
                given = {f.name: values[f.name] for f in fields}
                for f in fields:
                    spec = option_spec(f)
                    if spec is not None:
                        check_value(flag_of(f), given[f.name], spec)
                cfg = config(**given)
            from shared import distributed

            inv = None
            try:
                with command(
                    ctx,
                    app.info.name or "",
                    values.get("out"),
                    resume=bool(values.get("resume", False)),
                    checkpoint_every=int(values.get("checkpoint_every", 0) or 0),
                    overwrite=bool(values.get("overwrite", False)),
                ) as run:
                    inv = Invocation(ctx, run, values.get("device"))
                    metrics = fn(cfg, inv) if config is not None else fn(inv)
                    if metrics is not None:
                        full = run.save_metrics(metrics)
                        shown = {k: v for k, v in full.items() if k not in ("tool", "version")}
                        run.console.summary(shown, title or f"{app.info.name} {name}")
            except BaseException:
                distributed.cleanup(synchronise=False)  # the other ranks may never arrive
                raise
            if inv is not None and inv._device is not None:
                distributed.cleanup()

        body.__signature__ = signature  # type: ignore[attr-defined]
        body.__annotations__ = {p.name: p.annotation for p in signature.parameters.values()}
        body.__doc__ = fn.__doc__
        body.__name__ = fn.__name__
        app.command(name)(body)
        return fn

    return decorate


def _is_argument(p: inspect.Parameter) -> bool:
    meta = typing.get_args(p.annotation)[1:]
    return any(isinstance(m, typer.models.ArgumentInfo) for m in meta)
