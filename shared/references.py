"""Reference artefacts shipped in the repository (`references/`), so a first run needs no
training: small trained models the demos, docs and tests use.

`references/MANIFEST.json` lists each file with its sha256, size, and the exact command
(run from the repository root) that rebuilds it. A file is used only when its hash
matches the manifest, and is then read through the same safe loaders as any user file
(safetensors). Rebuild them all with `make references` (`python -m shared.references
--rebuild`), or one with `--rebuild NAME`; `--check` verifies the hashes.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# The digits ViT that several tools share (vbp prunes it, hello distils from it, tomerge
# checks generated digits with it): one recipe, so one cached or shipped checkpoint serves all.
DIGITS_VIT = "vit_tiny_patch16_224"
DIGITS_VIT_KWARGS: dict[str, Any] = {
    "img_size": 16,
    "patch_size": 4,
    "num_classes": 10,
    "embed_dim": 96,
    "depth": 6,
    "num_heads": 3,
}
DIGITS_VIT_RECIPE: dict[str, Any] = {"epochs": 30, "lr": 2e-3}

REPO = Path(__file__).resolve().parent.parent
ROOT = REPO / "references"
MANIFEST = ROOT / "MANIFEST.json"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest() -> dict[str, dict[str, Any]]:
    if not MANIFEST.exists():
        return {}
    return json.loads(MANIFEST.read_text(encoding="utf-8"))


def find(name: str) -> Path | None:
    """The shipped file `name` when present and intact (hash as in the manifest), else None
    (callers then build it, as before shipping)."""
    entry = manifest().get(name)
    if entry is None:
        return None
    path = ROOT / entry["file"]
    if (
        not path.is_file()
        or path.stat().st_size != entry["bytes"]
        or sha256(path) != entry["sha256"]
    ):
        from shared.console import get_console

        get_console().warn(
            f"shipped reference {path} is missing or differs from references/MANIFEST.json; "
            "rebuilding it (make references restores the shipped copies)"
        )
        return None
    return path


def record(name: str, path: Path, command: list[str], note: str = "") -> dict[str, Any]:
    """Add or update the manifest entry of `path` (inside references/)."""
    from shared.io import write_text

    path = Path(path).resolve()
    entry = {
        "file": str(path.relative_to(ROOT)),
        "bytes": path.stat().st_size,
        "sha256": sha256(path),
        "command": shlex.join(command),
        "note": note,
    }
    ROOT.mkdir(parents=True, exist_ok=True)
    with open(ROOT / ".manifest.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # builders running side by side keep every entry
        data = manifest()
        data[name] = entry
        write_text(MANIFEST, json.dumps(dict(sorted(data.items())), indent=2) + "\n")
    return entry


def run_tool(tool: str, args: list[str], log: Callable[[str], Any] = print) -> dict[str, Any]:
    """One real `tool` command in a fresh process on one CPU thread (a rebuild on the same
    CPU type then gives the same bytes), into a folder it may overwrite; its --json result."""
    log(f"{tool} {shlex.join(args)}")
    argv = [sys.executable, "-m", f"{tool}_cli.cli", *args, "--json", "--quiet", "--overwrite"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    res = subprocess.run(argv, stdout=subprocess.PIPE, text=True, env=env, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"{tool} {shlex.join(args)} failed (exit {res.returncode})")
    return json.loads(res.stdout.strip().splitlines()[-1])


def total_bytes() -> int:
    return sum(e["bytes"] for e in manifest().values())


def rebuild(names: list[str]) -> int:
    """Run each entry's command from the repository root ('python' = this interpreter)."""
    entries = manifest()
    unknown = [n for n in names if n not in entries]
    if unknown:
        print(f"unknown reference(s): {', '.join(unknown)}; known: {', '.join(entries)}")
        return 2
    for name in names or list(entries):
        argv = shlex.split(entries[name]["command"])
        if argv and argv[0] == "python":
            argv[0] = sys.executable
        print(f"== {name}: {entries[name]['command']}", flush=True)
        res = subprocess.run(argv, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        if res.returncode != 0:
            print(f"{name}: exit {res.returncode}", file=sys.stderr)
            return res.returncode
    return 0


def builder_main(
    tool: str,
    names: Sequence[str],
    build: Callable[[str, Path, Path], Path],
    note: Callable[[str], str],
    argv: list[str] | None = None,
    *,
    description: str | None = None,
    size_decimals: int = 2,
) -> int:
    """The command line of a tool's reference builder, `python -m <tool>_cli.references NAME...
    [--out DIR] [--work DIR]`: `build(name, out, work)` writes each file into `out` (default
    references/<tool>) with its intermediate runs in `work` (a temporary folder unless
    given); a file written into references/<tool> is recorded in the manifest with the
    command that rebuilds it and `note(name)`."""
    module = f"{tool}_cli.references"
    default_out = ROOT / tool
    ap = argparse.ArgumentParser(prog=f"python -m {module}", description=description)
    ap.add_argument("names", nargs="+", choices=names, help="references to build, in order")
    ap.add_argument("--out", type=Path, default=None, help=f"folder (default references/{tool})")
    ap.add_argument("--work", type=Path, default=None, help="keep the intermediate runs here")
    args = ap.parse_args(argv)
    out = args.out or default_out
    out.mkdir(parents=True, exist_ok=True)
    shipping = out.resolve() == default_out.resolve()
    with tempfile.TemporaryDirectory(prefix=f"{tool}-refs-") as tmp:
        work = args.work or Path(tmp)
        for name in args.names:
            path = build(name, out, work)
            if shipping:
                record(f"{tool}/{name}", path, ["python", "-m", module, name], note(name))
            print(f"{name}: {path} ({path.stat().st_size / 1e6:.{size_decimals}f} MB)")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m shared.references", description=__doc__)
    ap.add_argument("--check", action="store_true", help="verify every shipped file's hash")
    ap.add_argument("--rebuild", nargs="*", metavar="NAME", help="rebuild these (all if none)")
    args = ap.parse_args(argv)
    if args.rebuild is not None:
        return rebuild(args.rebuild)
    bad = 0
    for name, entry in manifest().items():
        path = ROOT / entry["file"]
        ok = path.is_file() and sha256(path) == entry["sha256"]
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} {name}: {entry['file']} ({entry['bytes'] / 1e6:.2f} MB)")
    print(f"total {total_bytes() / 1e6:.2f} MB in {len(manifest())} files")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
