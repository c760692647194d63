"""`make demo`: each tool's main job on built-in offline data, with a short summary each.

The tools and their demo modules come from the tool registry (shared/registry.py); `doctor`
of every tool runs first.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path


def _tool(name: str) -> str:
    return sys.executable if name == "python" else str(Path(sys.executable).parent / name)


def main() -> int:
    from shared.console import get_console
    from shared.registry import tools

    console = get_console()
    registered = tools()
    jobs = [
        (spec.demo_title or spec.name, ["python", "-m", spec.demo])
        for spec in registered.values()
        if spec.demo
    ]
    rows = []
    for tool in registered:
        start = time.perf_counter()
        res = subprocess.run([_tool(tool), "doctor"], check=False)
        rows.append(
            (
                f"{tool} doctor",
                "ok" if res.returncode == 0 else f"exit {res.returncode}",
                time.perf_counter() - start,
            )
        )
    for title, argv in jobs:
        console.info(f"\n== {title}: {' '.join(argv)}")
        start = time.perf_counter()
        res = subprocess.run([_tool(argv[0]), *argv[1:]], check=False)
        rows.append(
            (
                title,
                "ok" if res.returncode == 0 else f"exit {res.returncode}",
                time.perf_counter() - start,
            )
        )
    console.table("make demo", ["job", "result", "seconds"], rows)
    return 0 if all(r[1] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
