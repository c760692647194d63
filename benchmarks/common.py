"""What every benchmark writes: a markdown table, a JSON file and a plot, each carrying the
command, date, machine and versions that produced it."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def provenance() -> dict[str, Any]:
    import torch

    versions = {"python": sys.version.split()[0], "torch": torch.__version__}
    for module in (
        "timm",
        "diffusers",
        "compressai",
        "open_clip",
        "spconv",
        "torch_pruning",
        "tomesd",
    ):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 (not installed or no version)
            continue
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {
        "command": " ".join([Path(sys.executable).name, "-m", *_module_argv()]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}",
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "versions": versions,
    }


def _module_argv() -> list[str]:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    name = spec.name if spec is not None else Path(sys.argv[0]).stem
    return [name, *sys.argv[1:]]


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(
    tool: str, name: str, title: str, sections: list[tuple[str, str]], data: dict[str, Any]
) -> Path:
    """benchmarks/results/<tool>/<name>.md and .json; `sections` are (heading, markdown)."""
    out = RESULTS / tool
    out.mkdir(parents=True, exist_ok=True)
    prov = provenance()
    md = [
        f"# {title}",
        "",
        f"- command: `{prov['command']}`",
        f"- date: {prov['date']}",
        f"- machine: {prov['machine']}; device: {prov['device']}; "
        f"torch threads: {prov['torch_threads']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in prov["versions"].items()),
        "",
    ]
    for heading, body in sections:
        md += [f"## {heading}", "", body, ""]
    (out / f"{name}.md").write_text("\n".join(md))
    (out / f"{name}.json").write_text(json.dumps({"provenance": prov, **data}, indent=2) + "\n")
    return out / f"{name}.md"
