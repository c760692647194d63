"""`make demo` for tomerge: a tiny offline Stable Diffusion pipeline (built from configs,
random weights, real CLIP tokenizer vocabulary) generating the same prompts and seeds
unmerged, with tomesd, with our ToMe baseline and with importance merging, through the real
`tomerge benchmark` command; prints the speed and fidelity table.

The weights are random, so the images are noise-like and only the mechanics and relative
costs are shown; benchmarks/tomerge_speed.py (SD 1.5 UNet) and
benchmarks/tomerge_fidelity.py (a trained digits model) hold the real measurements.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPTS = ["a photo of a red cube on a table", "a watercolor painting of a lighthouse"]
SIZE = 32  # the tiny VAE keeps the size: 32x32 latents, 1024 tokens at full resolution


def main() -> int:
    from shared.console import get_console
    from tomerge_cli import tiny

    console = get_console()
    with tempfile.TemporaryDirectory(prefix="tomerge-demo-") as tmp:
        root = Path(tmp)
        tiny.tiny_sd(tokenizer_dir=root / "tokenizer").save_pretrained(root / "pipe")
        (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
        exe = str(Path(sys.executable).parent / "tomerge")
        cmd = [
            exe, "benchmark", "--pipeline", str(root / "pipe"),
            "--prompts", str(root / "prompts.txt"), "--ratio", "0.5", "--steps", "6",
            "--height", str(SIZE), "--width", str(SIZE), "--out", str(root / "bench"),
            "--json", "--quiet",
        ]  # fmt: skip
        res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
        rows = json.loads(res.stdout)["rows"]
    console.table(
        f"tomerge: tiny SD pipeline, {SIZE}x{SIZE} latents, ratio 0.5, 6 steps, "
        f"{len(PROMPTS)} prompts (fidelity = to the unmerged image, same seed)",
        ["attention", "method", "s / image", "speed-up", "PSNR (dB)", "SSIM"],
        [
            (
                r["attention"],
                r["method"],
                r["seconds_per_image"],
                r["speedup"],
                "inf" if r["psnr"] is None else r["psnr"],
                r["ssim"],
            )
            for r in rows
        ],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
