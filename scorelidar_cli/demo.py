"""`make demo` for scorelidar: complete a simulated LiDAR scan with the diffusion teacher
(50 steps) and the distilled student (8 steps), and compare quality and time.

The first run simulates training scenes and trains a small teacher and student through the
real commands (a few minutes on 2 cores, cached under $TOOLKIT_CACHE/scorelidar).
"""

from __future__ import annotations

import sys


def main() -> int:
    from scorelidar_cli.zoo import reference_models, run_tool
    from shared.console import get_console

    console = get_console()
    root, _ = reference_models("demo-v1", log=console.info)
    # one evaluate run for both models, so their times come from the same process
    rows = run_tool(
        "evaluate", "--model", str(root / "teacher"), "--model", str(root / "student"),
        "--steps", "50", "--steps", "8", "--data", str(root / "heldout"), "--max-frames", "1",
    )["rows"]  # fmt: skip
    base = rows[0]["s_per_frame"]
    console.table(
        "scorelidar: completing a held-out simulated scan (Chamfer distance in metres)",
        ["model", "steps", "CD", "JSD", "IoU 0.5 m", "s/frame", "speed-up"],
        [
            (r["role"], r["steps"], r["cd"], r["jsd"], r["iou_0.5m"], r["s_per_frame"],
             f"{base / r['s_per_frame']:.1f}x")
            for r in rows
        ],
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
