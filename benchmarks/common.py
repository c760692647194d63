"""What every benchmark writes: a markdown table, a JSON file and a plot, each carrying its
provenance (commit, dirty flag, the command exactly as run, environment, load, versions).

A benchmark refuses to write results from a tree with uncommitted changes, since nobody
could rerun what produced them, unless `--allow-dirty` is passed (or TOOLKIT_ALLOW_DIRTY=1);
the choice is recorded in the results. TOOLKIT_RESULTS_DIR moves the results folder.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from shared.io import atomic_write, write_json, write_text

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(os.environ.get("TOOLKIT_RESULTS_DIR") or REPO / "benchmarks" / "results")

# Environment variables that change what a benchmark measures (threads, kernels, data, devices).
ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "TOOLKIT_CACHE",
    "CUDA_VISIBLE_DEVICES",
    "HF_HUB_OFFLINE",
    "ATEN_CPU_CAPABILITY",  # with the two below: a CPU's instruction set capped (e.g. AVX2)
    "ONEDNN_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
)
ENV_PREFIXES = ("PYTORCH_",)
# Distribution names (package METADATA, so modules without __version__ such as tomesd count).
PEERS = (
    "torch",
    "torchvision",
    "timm",
    "diffusers",
    "transformers",
    "compressai",
    "open_clip_torch",
    "spconv",
    "torch-pruning",
    "tomesd",
    "torchmetrics",
    "bjontegaard",
    "numpy",
    "scikit-learn",
)
TOOLKIT = "efficient-learning-toolkit"
ALLOW_DIRTY_FLAG = "--allow-dirty"


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # not on this platform
        return None


# Importing this module is the start of a benchmark run.
_START: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "load": _loadavg()}
_ALLOW_DIRTY: bool | None = None  # set by check_tree(args)


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO, capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """The commit of REPO and whether the tree differs from it (results folder ignored).
    `dirty` is None where it cannot be told (no git, not a checkout)."""
    head = _git("rev-parse", "HEAD")
    excludes = [":(exclude)benchmarks/results"]
    with contextlib.suppress(ValueError):  # a results folder moved inside the repo
        excludes.append(f":(exclude){Path(RESULTS).resolve().relative_to(REPO.resolve())}")
    status = _git("status", "--porcelain", "--", ".", *excludes) if head else None
    changed = [line[3:] for line in status.splitlines() if line.strip()] if status else []
    # A copy without .git (rsynced to a cluster or GPU node): the commit it was copied from, as
    # declared by whoever copied it; recorded as declared, its clean state unknown.
    declared = None if head else os.environ.get("TOOLKIT_SOURCE_COMMIT")
    return {
        "commit": head.strip() if head else (f"{declared} (declared)" if declared else None),
        "dirty": None if status is None else bool(changed),
        "changed": changed[:20],
        "changed_count": len(changed),
    }


def command() -> str:
    """The command exactly as run: the interpreter's own argv (keeps `python -m module`)."""
    argv = getattr(sys, "orig_argv", None) or [sys.executable, *sys.argv]
    return shlex.join(argv)


def environment() -> dict[str, str]:
    keys = [k for k in ENV_VARS if k in os.environ]
    keys += sorted(k for k in os.environ if k.startswith(ENV_PREFIXES))
    return {k: os.environ[k] for k in keys}


def versions() -> dict[str, str]:
    """Python, every peer installed (from package metadata) and the toolkit itself."""
    found = {"python": platform.python_version()}
    by_module: dict[str, list[str]] | None = None  # slow to build: only when one is missing
    for name in (*PEERS, TOOLKIT):
        try:
            found[name] = metadata.version(name)
            continue
        except metadata.PackageNotFoundError:
            pass
        # Same module from another distribution (spconv-cu120 provides `spconv`).
        by_module = metadata.packages_distributions() if by_module is None else by_module
        for dist in by_module.get(name.replace("-", "_"), []):
            found[f"{name} ({dist})"] = metadata.version(dist)
            break
    return found


def provenance() -> dict[str, Any]:
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    now = git_state()
    start = _START.get("git", now)  # the tree as the run started (check_tree), else now
    moved = {"commit_at_write": now["commit"]} if now["commit"] != start["commit"] else {}
    return {
        **start,
        **moved,
        "allow_dirty": allow_dirty(),
        "command": command(),
        "cwd": os.getcwd(),
        "date": _START["date"],
        "written": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.platform()}, "
        f"torch CPU kernels {torch.backends.cpu.get_cpu_capability()}",
        "device": device,
        "torch_threads": torch.get_num_threads(),
        "load_start": _START["load"],
        "load_written": _loadavg(),
        "env": environment(),
        "versions": versions(),
    }


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options every benchmark accepts."""
    parser.add_argument(
        ALLOW_DIRTY_FLAG,
        action="store_true",
        help="write results even from a tree with uncommitted changes (recorded as dirty)",
    )
    return parser


def allow_dirty() -> bool:
    if _ALLOW_DIRTY is not None:
        return _ALLOW_DIRTY
    argv = [*sys.argv[1:], *(getattr(sys, "orig_argv", None) or [])]
    return ALLOW_DIRTY_FLAG in argv or os.environ.get("TOOLKIT_ALLOW_DIRTY") == "1"


def check_tree(args: argparse.Namespace | None = None) -> dict[str, Any]:
    """Refuse (SystemExit, one line) a dirty tree unless allowed. Call it right after parsing,
    so a long benchmark fails at its start rather than when it writes."""
    global _ALLOW_DIRTY
    if args is not None and getattr(args, "allow_dirty", False):
        _ALLOW_DIRTY = True
    state = git_state()
    _START.setdefault("git", state)  # the code that runs: a commit made meanwhile is not it
    if state["dirty"] is not False and not allow_dirty():
        why = (
            f"uncommitted changes ({', '.join(state['changed'][:3])}"
            f"{', ...' if len(state['changed']) > 3 else ''})"
            if state["dirty"]
            else "its commit cannot be read (not a git checkout?)"
        )
        raise SystemExit(
            f"error: refusing to write benchmark results from {REPO}: {why}; commit first, "
            f"or pass {ALLOW_DIRTY_FLAG} (or set TOOLKIT_ALLOW_DIRTY=1) to record them as dirty"
        )
    return state


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _load(values: list[float] | None) -> str:
    return "n/a" if values is None else "/".join(f"{v:g}" for v in values)


def provenance_markdown(prov: dict[str, Any]) -> list[str]:
    """The header lines every results markdown carries."""
    commit = prov.get("commit") or "unknown"
    if prov.get("dirty"):
        changed = prov.get("changed") or []
        more = prov.get("changed_count", len(changed)) - 5
        commit += " dirty (written with --allow-dirty; changed: " + ", ".join(changed[:5])
        commit += f", {more} more)" if more > 0 else ")"
    elif prov.get("dirty") is None:
        commit += " (clean state unknown, written with --allow-dirty)"
    if prov.get("commit_at_write"):
        commit += f"; the checkout was at {prov['commit_at_write']} when this was written"
    env = ", ".join(f"{k}={v}" for k, v in prov["env"].items()) or "none of the tracked ones set"
    lines = [
        f"- commit: `{commit}`",
        f"- command: `{prov['command']}`",
        f"- date: {prov['date']} (written {prov['written']})",
        f"- machine: {prov['machine']}; device: {prov['device']}",
        f"- threads: torch {prov['torch_threads']}; load average (1/5/15 min): "
        f"{_load(prov['load_start'])} at start, {_load(prov['load_written'])} at write",
        f"- env: {env}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in prov["versions"].items()),
    ]
    if "measured" in prov:
        m = prov["measured"]
        lines.append(
            f"- measured by: commit `{m.get('commit')}`, `{m.get('command')}`, {m.get('date')}"
        )
    return lines


def _guarded_provenance() -> dict[str, Any]:
    check_tree()
    return provenance()


def write_report(
    path: Path, markdown: str, data: dict[str, Any], prov: dict[str, Any] | None = None
) -> Path:
    """`path`.md and `path`.json (atomic), the provenance header after the markdown's title
    and under "provenance" in the JSON. A "provenance" already in `data` (a report rewritten
    from stored measurements) is kept as the measuring run's, under provenance.measured."""
    prov = prov or _guarded_provenance()
    data = dict(data)
    if "provenance" in data:
        prov = {**prov, "measured": data.pop("provenance")}
    lines = markdown.splitlines()
    title = lines[:1] if lines and lines[0].startswith("# ") else []
    body = lines[len(title) :]
    md = [*title, *([""] if title else []), *provenance_markdown(prov), *body]
    # appended, not with_suffix: a name such as "speed-0.5-run2" has a dot of its own
    md_path, json_path = (path.parent / f"{path.name}{ext}" for ext in (".md", ".json"))
    write_text(md_path, "\n".join(md).rstrip("\n") + "\n")
    write_json(json_path, {"provenance": prov, **data})
    return md_path


def write_results(
    tool: str,
    name: str,
    title: str,
    sections: list[tuple[str, str]],
    data: dict[str, Any],
    results: Path | None = None,
) -> Path:
    """<results>/<tool>/<name>.md and .json; `sections` are (heading, markdown). Refuses
    (SystemExit) a dirty tree unless allowed, see check_tree."""
    prov = _guarded_provenance()
    md = [f"# {title}", ""]
    for heading, body in sections:
        md += [f"## {heading}", "", body, ""]
    return write_report(Path(results or RESULTS) / tool / name, "\n".join(md), data, prov)


def save_figure(fig: Any, path: Path, dpi: int = 120) -> Path:
    """A matplotlib figure written atomically, commit and command in its metadata."""
    state = check_tree()
    meta = {"Source": f"{state['commit']}{' dirty' if state['dirty'] else ''}: {command()}"}
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_write(
        path,
        lambda tmp: fig.savefig(tmp, dpi=dpi, format=fmt, metadata=meta if fmt == "png" else None),
    )


def save_text(path: Path, text: str) -> Path:
    """A side file of a result (atomic; same clean-tree rule)."""
    check_tree()
    return write_text(path, text)
