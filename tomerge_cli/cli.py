"""The `tomerge` command line: thin, parses and prints; the method lives in the modules."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any

import typer

from shared.cli import (
    ConfigOpt,
    DeviceOpt,
    JsonOpt,
    OutOpt,
    QuietOpt,
    SeedOpt,
    command,
    create_app,
    pick_device,
    run_app,
)

app = create_app(
    "tomerge",
    (
        "Importance-based token merging for diffusers pipelines (ICCV 2025): faster Stable "
        "Diffusion, SDXL, PixArt and AnimateDiff sampling, measured against tomesd."
    ),
)

PipelineOpt = Annotated[
    str,
    typer.Option(
        "--pipeline",
        "-p",
        help="diffusers pipeline: a local directory (save_pretrained) or a hub id "
        "(needs network or the hub cache).",
    ),
]
PromptOpt = Annotated[
    list[str] | None, typer.Option("--prompt", help="A text prompt (repeat for several).")
]
PromptsOpt = Annotated[
    Path | None, typer.Option("--prompts", help="Text file with one prompt per line.")
]
RatioOpt = Annotated[
    float,
    typer.Option(
        "--ratio", "-r", help="Fraction of tokens merged away in each merged layer, 0-0.75."
    ),
]
ModeOpt = Annotated[
    str,
    typer.Option(
        "--mode",
        help="importance (the paper's method), tome (random-grid baseline) or none.",
    ),
]
StepsOpt = Annotated[int, typer.Option("--steps", min=1, help="Denoising steps.")]
GuidanceOpt = Annotated[
    float,
    typer.Option(
        "--guidance",
        help="Classifier-free guidance scale; importance mode needs > 1 (else it falls back "
        "to grid merging and says so).",
    ),
]
SizeOpt = Annotated[
    int | None, typer.Option(help="Image side in pixels (default: the pipeline's own).")
]
FramesOpt = Annotated[int, typer.Option("--frames", min=1, help="Video frames (AnimateDiff).")]
MaxDownOpt = Annotated[
    int | None,
    typer.Option(
        "--max-downsample",
        help="Merge blocks up to this downsample level: 1, 2, 4, 8 (default 1; SDXL 2).",
    ),
]
CrossOpt = Annotated[
    bool, typer.Option("--merge-crossattn", help="Also merge the cross-attention queries.")
]
MlpOpt = Annotated[bool, typer.Option("--merge-mlp", help="Also merge the feed-forward input.")]
PruneStepsOpt = Annotated[
    int,
    typer.Option(
        "--prune-steps", min=0, help="First steps prune with the grid (no map exists yet)."
    ),
]
StartOpt = Annotated[
    int,
    typer.Option("--importance-start", min=0, help="Step from which importance merging starts."),
]
BlocksOpt = Annotated[
    str | None,
    typer.Option(
        "--blocks",
        help="Spatial transformer blocks to patch, e.g. 7-20 or 0,2,5 (default: all for "
        "UNets, the middle half for DiTs).",
    ),
]
DtypeOpt = Annotated[
    str, typer.Option("--dtype", help="float32 | float16 | bfloat16 (float16 needs a GPU).")
]


def _blocks(spec: str | None) -> list[int] | None:
    if not spec:
        return None
    out: list[int] = []
    try:
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        from shared.errors import InputError

        raise InputError(f"--blocks {spec}: use ranges and lists like 7-20 or 0,2,5") from None
    return out


def _check(
    ratio: float, mode: str, modes: tuple[str, ...] = ("importance", "tome", "none")
) -> None:
    from shared.errors import InputError

    if math.isnan(ratio) or not 0 <= ratio <= 0.75:
        raise InputError(
            f"--ratio {ratio}: must be in [0, 0.75] (a quarter of the tokens are destinations)"
        )
    if mode not in modes:
        raise InputError(f"--mode {mode}: use one of {', '.join(modes)}")


def _dtype(name: str) -> Any:
    import torch

    from shared.errors import InputError

    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise InputError(f"--dtype {name}: use float32, float16 or bfloat16")
    return table[name]


def _options(max_downsample, merge_crossattn, merge_mlp, prune_steps, importance_start, blocks):
    return {
        "max_downsample": max_downsample,
        "merge_crossattn": merge_crossattn,
        "merge_mlp": merge_mlp,
        "prune_steps": prune_steps,
        "importance_start": importance_start,
        "blocks": _blocks(blocks),
    }


def _stoppable(run: Any):
    """A progress loop that ends cleanly on SIGTERM/SIGUSR1 (exit 75): generation has no
    state worth resuming, so it stops between images instead of running to the end."""
    from shared.errors import Preempted

    def progress(items: Any, description: str = "") -> Any:
        for item in run.console.progress(items, description):
            if run.stop_requested():
                raise Preempted(f"{description}: stopped by a signal before item {item}")
            yield item

    return progress


def _patch_or_input_error(pipe: Any, method: str, ratio: float, options: dict) -> None:
    from shared.errors import InputError
    from tomerge_cli.pipelines import patch

    opts = dict(options)
    if method == "tomesd":
        opts = {"max_downsample": opts.get("max_downsample")}
    try:
        patch(pipe, method, ratio, **opts)
    except ValueError as exc:
        raise InputError(str(exc)) from None


@app.command("generate")
def generate_cmd(
    ctx: typer.Context,
    pipeline: PipelineOpt,
    out: OutOpt,
    prompt: PromptOpt = None,
    prompts: PromptsOpt = None,
    ratio: RatioOpt = 0.5,
    mode: ModeOpt = "importance",
    steps: StepsOpt = 25,
    guidance: GuidanceOpt = 7.5,
    height: SizeOpt = None,
    width: SizeOpt = None,
    frames: FramesOpt = 16,
    max_downsample: MaxDownOpt = None,
    merge_crossattn: CrossOpt = False,
    merge_mlp: MlpOpt = False,
    prune_steps: PruneStepsOpt = 2,
    importance_start: StartOpt = 2,
    blocks: BlocksOpt = None,
    seed: SeedOpt = 0,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Generate images (or video frames) with token merging: PNGs in --out/images and
    generate.json with timings and settings. Prompt i uses seed + i."""
    import warnings

    from shared.io import write_json
    from tomerge_cli.pipelines import Sampling, generate, load_pipeline, read_prompts

    _check(ratio, mode)
    options = _options(
        max_downsample, merge_crossattn, merge_mlp, prune_steps, importance_start, blocks
    )
    with command(ctx, "tomerge", out) as run:
        texts = read_prompts(prompt, prompts)
        dev = pick_device(device, run.console)
        pipe = load_pipeline(pipeline, dev, _dtype(dtype))
        _patch_or_input_error(pipe, mode, ratio, options)
        sampling = Sampling(steps, guidance, height, width, frames)
        from shared.images import save_image

        rows, seconds, files = [], [], []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for i, text in enumerate(_stoppable(run)(texts, "generate")):
                images, sec = generate(pipe, text, seed + i, sampling)
                seconds.append(sec)
                for j, img in enumerate(images):
                    name = f"{i:03d}.png" if len(images) == 1 else f"{i:03d}_f{j:03d}.png"
                    save_image(img, run.path(f"images/{name}"))
                    files.append(f"images/{name}")
                rows.append((i, text[:40], seed + i, sec))
        notes = sorted({str(w.message) for w in caught if "tomerge" in str(w.message)})
        for note in notes:
            run.console.warn(note)
        from tomerge_cli import get_merger

        merger = get_merger(pipe)
        metrics = {
            "pipeline": pipeline,
            "pipeline_class": type(pipe).__name__,
            "mode": mode,
            "ratio": ratio,
            "steps": steps,
            "guidance": guidance,
            "seed": seed,
            "images": len(files),
            "seconds_per_prompt": sum(seconds) / len(seconds),
            "seconds_each": seconds,
            "files": files,
            "merge_stats": merger.stats if merger else None,
            "notes": notes,
        }
        write_json(run.path("generate.json"), metrics)
        run.console.table("tomerge generate", ["#", "prompt", "seed", "seconds"], rows)
        run.console.summary(run.save_metrics(metrics), "tomerge generate")


@app.command("benchmark")
def benchmark_cmd(
    ctx: typer.Context,
    pipeline: PipelineOpt,
    out: OutOpt,
    prompt: PromptOpt = None,
    prompts: PromptsOpt = None,
    ratio: RatioOpt = 0.5,
    steps: StepsOpt = 25,
    guidance: GuidanceOpt = 7.5,
    height: SizeOpt = None,
    width: SizeOpt = None,
    frames: FramesOpt = 16,
    attention: Annotated[
        list[str] | None,
        typer.Option("--attention", help="Attention backends to time: sdpa, math (default both)."),
    ] = None,
    methods: Annotated[
        list[str] | None,
        typer.Option(
            "--method", help="Methods besides unmerged: tomesd, tome, importance (default all)."
        ),
    ] = None,
    max_downsample: MaxDownOpt = None,
    merge_crossattn: CrossOpt = False,
    merge_mlp: MlpOpt = False,
    prune_steps: PruneStepsOpt = 2,
    importance_start: StartOpt = 2,
    blocks: BlocksOpt = None,
    warmup: Annotated[int, typer.Option(min=0, help="Untimed generations first.")] = 1,
    seed: SeedOpt = 0,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The same prompts and seeds unmerged, with tomesd (when it supports the pipeline),
    mode=tome and mode=importance: seconds per image, speed-up, PSNR / SSIM (LPIPS when its
    weights load) to the unmerged image; with SDPA and math attention. Writes
    benchmark.md, benchmark.json and grid.png."""
    from shared.images import save_image
    from shared.io import write_json, write_text
    from tomerge_cli.benchmark import compare_methods, markdown
    from tomerge_cli.pipelines import Sampling, load_pipeline, read_prompts, tomesd_support

    _check(ratio, "importance")
    options = _options(
        max_downsample, merge_crossattn, merge_mlp, prune_steps, importance_start, blocks
    )
    backends = attention or ["sdpa", "math"]
    wanted = methods or ["tomesd", "tome", "importance"]
    for name in wanted:
        if name not in ("tomesd", "tome", "importance"):
            from shared.errors import InputError

            raise InputError(f"--method {name}: use tomesd, tome or importance")
    with command(ctx, "tomerge", out) as run:
        texts = read_prompts(prompt, prompts)
        dev = pick_device(device, run.console)
        pipe = load_pipeline(pipeline, dev, _dtype(dtype))
        skipped = {}
        if "tomesd" in wanted:
            why = tomesd_support(pipe)
            if why is None:
                try:
                    import tomesd  # noqa: F401
                except ImportError:
                    why = "tomesd is not installed (pip install tomesd)"
            if why:
                skipped["tomesd"] = why
                run.console.warn(f"tomesd skipped: {why}")
        result = compare_methods(
            pipe,
            texts,
            seed,
            Sampling(steps, guidance, height, width, frames),
            ratio,
            [m for m in wanted if m not in skipped],
            backends,
            options,
            warmup=warmup,
            progress=_stoppable(run),
            patcher=_patch_or_input_error,
        )
        result["skipped"] = skipped
        save_image(result.pop("grid"), run.path("grid.png"))
        rows = result["rows"]
        write_json(run.path("benchmark.json"), result)
        write_text(run.path("benchmark.md"), markdown(result, pipeline) + "\n")
        run.console.table(
            f"tomerge benchmark, ratio {ratio}",
            ["attention", "method", "s/image", "speed-up", "PSNR", "SSIM", "LPIPS"],
            [
                (
                    r["attention"],
                    r["method"],
                    r["seconds_per_image"],
                    r["speedup"],
                    r["psnr"],
                    r["ssim"],
                    r["lpips"] if r["lpips"] is not None else "-",
                )
                for r in rows
            ],
        )
        metrics = {"pipeline": pipeline, "ratio": ratio, "rows": rows, "skipped": skipped}
        metrics["lpips_note"] = result.get("lpips_note")
        run.console.summary(run.save_metrics(metrics), "tomerge benchmark")


@app.command("evaluate")
def evaluate_cmd(
    ctx: typer.Context,
    pipeline: PipelineOpt,
    reference: Annotated[
        Path, typer.Option("--reference", help="Folder of real reference images for FID.")
    ],
    out: OutOpt,
    prompt: PromptOpt = None,
    prompts: PromptsOpt = None,
    ratio: RatioOpt = 0.5,
    mode: ModeOpt = "importance",
    steps: StepsOpt = 25,
    guidance: GuidanceOpt = 7.5,
    height: SizeOpt = None,
    width: SizeOpt = None,
    inception_weights: Annotated[
        Path | None,
        typer.Option(
            "--inception-weights",
            help="FID Inception weights (torch-fidelity's "
            "weights-inception-2015-12-05-6726825d.pth); needed offline.",
        ),
    ] = None,
    clip_model: Annotated[
        str | None,
        typer.Option(
            "--clip-model",
            help="transformers CLIPModel directory for CLIP score (default "
            "openai/clip-vit-large-patch14, needs network or the hub cache).",
        ),
    ] = None,
    max_downsample: MaxDownOpt = None,
    seed: SeedOpt = 0,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """FID against --reference and CLIP score of the generated images (torchmetrics). The
    metric weights are checked before anything is generated."""
    import torch

    from shared.errors import InputError
    from shared.images import load_image
    from tomerge_cli.pipelines import Sampling, generate, load_pipeline, read_prompts
    from tomerge_cli.quality import clip_metric, fid_metric

    _check(ratio, mode)
    with command(ctx, "tomerge", out) as run:
        texts = read_prompts(prompt, prompts)
        if not reference.is_dir():
            raise InputError(f"--reference {reference}: not a directory of images")
        refs = sorted(
            p for p in reference.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")
        )
        if len(refs) < 2:
            raise InputError(f"--reference {reference}: FID needs at least 2 images")
        fid = fid_metric(inception_weights)
        clip = clip_metric(clip_model)
        dev = pick_device(device, run.console)
        pipe = load_pipeline(pipeline, dev, _dtype(dtype))
        _patch_or_input_error(pipe, mode, ratio, {"max_downsample": max_downsample})
        sampling = Sampling(steps, guidance, height, width)
        seconds = []
        for i, text in enumerate(_stoppable(run)(texts, "generate")):
            images, sec = generate(pipe, text, seed + i, sampling)
            seconds.append(sec)
            fid.update(images, real=False)
            clip.update((images * 255).round().to(torch.uint8), [text] * len(images))
        for path in run.console.progress(refs, "reference"):
            fid.update(load_image(path)[None], real=True)
        metrics = run.save_metrics(
            {
                "pipeline": pipeline,
                "mode": mode,
                "ratio": ratio,
                "images": len(texts),
                "reference_images": len(refs),
                "fid": float(fid.compute()),
                "clip_score": float(clip.compute()),
                "seconds_per_prompt": sum(seconds) / len(seconds),
            }
        )
        run.console.summary(metrics, "tomerge evaluate")


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
