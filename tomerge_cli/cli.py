"""The `tomerge` command line: parse, call `tomerge_cli.api`, print."""

from __future__ import annotations

from types import ModuleType
from typing import Any

from shared.cli import create_app, run_app
from shared.options import Invocation, tool_command
from tomerge_cli.api import BenchmarkOptions, EvaluateOptions, GenerateOptions

app = create_app(
    "tomerge",
    (
        "Importance-based token merging for diffusers pipelines (ICCV 2025): faster Stable "
        "Diffusion 1.x/2.x/XL, PixArt, AnimateDiff, SD3/3.5, Flux.1, Wan 2.x and Sana "
        "sampling, measured against tomesd."
    ),
)


def _api(*modules: str) -> ModuleType:
    """The API once the command's extra is there (one line naming it otherwise)."""
    from shared.deps import require

    require("tomerge", "diffusers", "transformers", *modules)
    from tomerge_cli import api

    return api


@tool_command(app, "generate", GenerateOptions)
def generate_cmd(cfg: GenerateOptions, inv: Invocation) -> dict[str, Any]:
    """Generate images (or video frames) with token merging: PNGs in --out/images and
    generate.json with timings and settings. Prompt i uses seed + i."""
    api = _api()

    metrics = api.generate(cfg, out=inv.run.dir, device=inv.device, run=inv.run)
    rows = [
        (i, text[:40], cfg.seed + i, sec)
        for i, (text, sec) in enumerate(
            zip(metrics["prompts"], metrics["seconds_each"], strict=True)
        )
    ]
    inv.console.table("tomerge generate", ["#", "prompt", "seed", "seconds"], rows)
    return metrics


@tool_command(app, "benchmark", BenchmarkOptions)
def benchmark_cmd(cfg: BenchmarkOptions, inv: Invocation) -> dict[str, Any]:
    """The same prompts and seeds unmerged, with tomesd (UNet pipelines only; skipped with
    the reason elsewhere), mode=tome and mode=importance: seconds per image, speed-up,
    PSNR / SSIM (LPIPS when its weights load) to the unmerged image; with SDPA and math
    attention. Writes benchmark.md, benchmark.json and grid.png."""
    api = _api()

    metrics = api.benchmark(cfg, out=inv.run.dir, device=inv.device, run=inv.run)
    inv.console.table(
        f"tomerge benchmark, ratio {cfg.ratio}",
        ["attention", "method", "s/image", "speed-up", "runs", "PSNR", "SSIM", "LPIPS"],
        [
            (r["attention"], r["method"], r["seconds_per_image"], r["speedup"], r["repeats"],
             r["psnr"], r["ssim"], "-" if r["lpips"] is None else r["lpips"])
            for r in metrics["rows"]
        ],
    )  # fmt: skip
    return metrics


@tool_command(app, "evaluate", EvaluateOptions)
def evaluate_cmd(cfg: EvaluateOptions, inv: Invocation) -> dict[str, Any]:
    """FID against --reference and CLIP score of the generated images (torchmetrics). The
    metric weights are checked before anything is generated."""
    api = _api("torchmetrics")

    return api.evaluate(cfg, device=inv.device, run=inv.run)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
