"""Run one pipeline unmerged and with each merge method on the same prompts and seeds:
time per image, and fidelity of each merged image to the unmerged one."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

from shared.profiling import round_order
from tomerge_cli.fidelity import image_grid, lpips, lpips_metric, psnr, ssim
from tomerge_cli.pipelines import Sampling, attention_backend, generate

BASELINE = "unmerged"


def compare_methods(
    pipe: Any,
    prompts: list[str],
    seed: int,
    sampling: Sampling,
    ratio: float,
    methods: list[str],
    backends: list[str],
    options: dict[str, Any],
    patcher: Callable[[Any, str, float, dict], None],
    warmup: int = 1,
    progress: Callable[[Iterable, str], Iterator] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Rows of (attention, method, seconds_per_image, speedup, repeats, psnr, ssim, lpips)
    and a grid image (rows: methods under the first backend; columns: prompts).

    seconds_per_image is the median over the `repeats` timed generations (one per prompt;
    warm-up runs are not timed), speedup = unmerged seconds / this method's seconds."""
    names = [BASELINE, *methods]
    metric, lpips_note = lpips_metric()
    rows: list[dict[str, Any]] = []
    grid_rows: list[list[torch.Tensor]] = []
    for backend in backends:
        images: dict[str, list[torch.Tensor]] = {n: [] for n in names}
        seconds: dict[str, list[float]] = {n: [] for n in names}
        with attention_backend(backend):
            for name in names:  # warm-up: first-call costs stay out of the timings
                patcher(pipe, _mode(name), ratio, options)
                for _ in range(warmup):
                    generate(pipe, prompts[0], seed, sampling, clock)
            jobs = range(len(prompts))
            for i in progress(jobs, f"benchmark ({backend})") if progress else jobs:
                for name in round_order(names, i):  # no method always runs first
                    patcher(pipe, _mode(name), ratio, options)
                    img, sec = generate(pipe, prompts[i], seed + i, sampling, clock)
                    images[name].append(img)
                    seconds[name].append(sec / len(img) if img.shape[0] > 1 else sec)
        patcher(pipe, "none", ratio, options)
        base_s = statistics.median(seconds[BASELINE])
        for name in names:
            ref = torch.cat(images[BASELINE])
            got = torch.cat(images[name])
            sec = statistics.median(seconds[name])
            rows.append(
                {
                    "attention": backend,
                    "method": name,
                    "seconds_per_image": sec,
                    "speedup": base_s / sec,
                    "repeats": len(seconds[name]),
                    "psnr": psnr(got, ref),
                    "ssim": ssim(got, ref),
                    "lpips": lpips(metric, got, ref) if metric is not None else None,
                }
            )
        if not grid_rows:
            grid_rows = [[imgs[0] for imgs in images[n][:8]] for n in names]
    return {
        "ratio": ratio,
        "prompts": prompts,
        "seed": seed,
        "steps": sampling.steps,
        "guidance": sampling.guidance,
        "methods": names,
        "rows": rows,
        "lpips_note": lpips_note,
        "grid": image_grid(grid_rows),
        "grid_rows": names,
    }


def _mode(name: str) -> str:
    return "none" if name == BASELINE else name


def markdown(result: dict[str, Any], pipeline: str) -> str:
    lines = [
        f"# tomerge benchmark: {pipeline}",
        "",
        f"ratio {result['ratio']}, {result['steps']} steps, guidance {result['guidance']}, "
        f"{len(result['prompts'])} prompts, seeds {result['seed']}..",
        "",
        "| attention | method | s / image | speed-up | PSNR (dB) | SSIM | LPIPS |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lp = f"{r['lpips']:.4f}" if r["lpips"] is not None else "-"
        lines.append(
            f"| {r['attention']} | {r['method']} | {r['seconds_per_image']:.3f} | "
            f"{r['speedup']:.3f} | {r['psnr']:.2f} | {r['ssim']:.4f} | {lp} |"
        )
    for name, why in result.get("skipped", {}).items():
        lines.append(f"\n{name} skipped: {why}")
    if result.get("lpips_note"):
        lines.append(f"\n{result['lpips_note']}")
    lines.append(f"\ngrid.png rows: {', '.join(result['grid_rows'])}; columns: prompts")
    return "\n".join(lines)
