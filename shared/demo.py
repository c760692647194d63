"""`make demo`: each tool's main job on built-in offline data, with a short summary each.

Tools add their job to `JOBS` as they land; `doctor` of every tool runs first.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

TOOLS = ("vbp", "tomerge", "kdic", "scorelidar", "hello")

# (title, argv) run in order: each tool's main job on built-in data. "python" means this
# interpreter; other first words are console scripts installed beside it.
JOBS: list[tuple[str, list[str]]] = [
    ("vbp: prune a digits ViT by 50%", ["python", "-m", "vbp_cli.demo"]),
    (
        "tomerge: a tiny offline pipeline with and without token merging",
        ["python", "-m", "tomerge_cli.demo"],
    ),
    (
        "kdic: compress a photo with a small codec and its distilled student",
        ["python", "-m", "kdic_cli.demo"],
    ),
    (
        "hello: distil digits to IPC 10, projector vs hard labels",
        ["python", "-m", "hello_cli.demo"],
    ),
    (
        "scorelidar: complete a simulated LiDAR scan, teacher vs distilled student",
        ["python", "-m", "scorelidar_cli.demo"],
    ),
]


def _tool(name: str) -> str:
    return sys.executable if name == "python" else str(Path(sys.executable).parent / name)


def main() -> int:
    from shared.console import get_console

    console = get_console()
    rows = []
    for tool in TOOLS:
        start = time.perf_counter()
        res = subprocess.run([_tool(tool), "doctor"], check=False)
        rows.append(
            (
                f"{tool} doctor",
                "ok" if res.returncode == 0 else f"exit {res.returncode}",
                time.perf_counter() - start,
            )
        )
    for title, argv in JOBS:
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
