"""`make demo`: every registered tool shows its method working, in about a minute each.

Each tool's demo module (`<tool>_cli.demo`, found through the tool registry) is run as
`python -m <tool>_cli.demo --out DIR/<tool> --json`: it prints its table on stderr and one
JSON object on stdout, `{"figures": {...}, "picture": "path.png", "claim": "..."}`, and
writes a picture a person would rather look at than read. `doctor` of every tool runs
first. `python -m shared.demo --json` prints one JSON object: per tool its figures, the
path of its picture, its exit code and seconds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def demo_parser(module: str, doc: str | None, out: str) -> argparse.ArgumentParser:
    """The command line every demo module shares (`--out`, `--json`); a demo adds its own."""
    ap = argparse.ArgumentParser(prog=f"python -m {module}", description=doc)
    ap.add_argument("--out", type=Path, default=Path(out), help="output folder")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return ap


def _tool(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def run_demo(module: str, out: Path) -> tuple[int, dict[str, Any], float]:
    """One tool's demo: exit code, its JSON object ({} when it printed none), seconds."""
    start = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", module, "--out", str(out), "--json"],
        stdout=subprocess.PIPE,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - start
    try:
        report = json.loads(res.stdout.strip().splitlines()[-1]) if res.stdout.strip() else {}
    except json.JSONDecodeError:
        report = {}
    return res.returncode, report if isinstance(report, dict) else {}, seconds


def main(argv: list[str] | None = None) -> int:
    from shared.console import configure
    from shared.registry import tools

    ap = demo_parser("shared.demo", __doc__, "runs/demo")
    ap.add_argument("--tools", nargs="*", help="only these tools (default: all registered)")
    args = ap.parse_args(argv)
    console = configure(json_mode=args.json)
    registered = {n: s for n, s in tools().items() if not args.tools or n in args.tools}
    rows: list[tuple[str, str, float, str]] = []
    summary: dict[str, Any] = {}
    for name in registered:
        start = time.perf_counter()
        res = subprocess.run([_tool(name), "doctor"], stdout=subprocess.DEVNULL, check=False)
        result = "ok" if res.returncode == 0 else f"exit {res.returncode}"
        rows.append((f"{name} doctor", result, time.perf_counter() - start, ""))
    for name, spec in registered.items():
        console.info(f"\n== {spec.demo_title or name}")
        code, report, seconds = run_demo(spec.demo, args.out / name)
        picture = str(report.get("picture", ""))
        rows.append(
            (spec.demo_title or name, "ok" if code == 0 else f"exit {code}", seconds, picture)
        )
        summary[name] = {"exit": code, "seconds": round(seconds, 1), **report}
        if picture:
            console.info(f"{name}: picture {picture}")
    console.table("make demo", ["job", "result", "seconds", "picture"], rows)
    if args.json:
        sys.stdout.write(json.dumps({"tools": summary}) + "\n")
    return 0 if all(r[1] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
