"""`--config FILE.yaml` supplies any option of a command; flags on the command line win.

The file is read by an eager option callback that fills the context's `default_map`, so
every option not given on the command line takes its value from the file, converted by
the option's own type. Keys may use dashes or underscores (`batch-size` or `batch_size`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
import yaml

from shared.errors import InputError


def parse_json_object(text: str | None, where: str) -> dict[str, Any]:
    """A JSON object read from an option (--model-kwargs) or a file header; {} when empty.
    `where` starts the one-line error (a flag, or a path and what it holds)."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(value, dict):
        raise InputError(f"{where}: expected a JSON object, not {type(value).__name__}")
    return value


def read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise typer.BadParameter(f"{path}: no such file", param_hint="--config")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise typer.BadParameter(f"{path}: not UTF-8 text", param_hint="--config") from None
    except OSError as exc:
        raise typer.BadParameter(
            f"{path}: unreadable ({exc.strerror})", param_hint="--config"
        ) from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" (line {line + 1})" if line is not None else ""
        raise typer.BadParameter(f"{path}: not valid YAML{where}", param_hint="--config") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise typer.BadParameter(
            f"{path}: expected a mapping of option: value", param_hint="--config"
        )
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def config_callback(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
    if value is None:
        return value
    path = Path(value)
    data = read_config_file(path)
    known = {p.name for p in ctx.command.params if p.name and p.name != param.name}
    unknown = sorted(set(data) - known)
    if unknown:
        raise typer.BadParameter(
            f"{path}: unknown option(s) {', '.join(unknown)} for '{ctx.info_name}'",
            param_hint="--config",
        )
    ctx.default_map = {**(ctx.default_map or {}), **data}
    return path


def resolved_options(ctx: typer.Context) -> dict[str, Any]:
    """The options a command ran with (file, flags and defaults merged), for config.yaml."""
    skip = {"config", "json_output", "quiet"}
    return {
        k: (str(v) if isinstance(v, Path) else v) for k, v in ctx.params.items() if k not in skip
    }
