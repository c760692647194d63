"""What a notebook user (and the `tomerge` command) calls: option dataclasses in, metrics out.

    from tomerge_cli import api
    cfg = api.BenchmarkOptions(pipeline="runwayml/stable-diffusion-v1-5", prompt=["a cat"])
    metrics = api.benchmark(cfg, out=Path("bench"), device="cuda")

Each command's options are declared once here (help, bounds, choices next to the field);
`tomerge_cli.cli` turns them into flags. `pipe=` takes an already loaded pipeline, `out=`
a folder for the artefacts (nothing is written without it), `run=` the command's run (its
signals stop generation between prompts), `clock=` the timer (tests inject a fake one).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from shared.console import get_console
from shared.errors import InputError, Preempted
from shared.options import opt, validate
from tomerge_cli.constants import DOWNSAMPLES, IMPORTANCE, MAX_RATIO, MODES

T = TypeVar("T")
METHODS = ("tomesd", "tome", "importance")  # compared against unmerged by `benchmark`
BACKENDS = ("sdpa", "math")
DTYPES = ("float32", "float16", "bfloat16")
IMPORTANCE_HELP = (
    "Importance signal of importance mode: cfg (the paper: |eps_cond - eps_uncond|, needs "
    "guidance > 1), step-delta (|eps_t - eps_t-1|, for guidance-distilled and turbo models "
    "without CFG), auto (cfg with a CFG batch, else step-delta)."
)
Clock = Callable[[], float]


# -- options ------------------------------------------------------------------------------
@dataclass(kw_only=True)
class _Sampling:
    """What every command shares: the pipeline, the prompts and how to sample them."""

    pipeline: str = opt(
        help="diffusers pipeline: a local directory (save_pretrained) or a hub id "
        "(needs network or the hub cache).",
        short="-p",
    )
    prompt: list[str] | None = opt(None, "A text prompt (repeat for several).")
    prompts: Path | None = opt(None, "Text file with one prompt per line.")
    ratio: float = opt(
        0.5,
        f"Fraction of tokens merged away in each merged layer, 0-{MAX_RATIO} (a quarter of "
        "the tokens are destinations).",
        short="-r",
        min=0,
        max=MAX_RATIO,
    )
    steps: int = opt(25, "Denoising steps.", min=1)
    guidance: float = opt(
        7.5,
        "Classifier-free guidance scale; importance mode needs > 1 (else it falls back to "
        "grid merging and says so).",
        min=0,
    )
    height: int | None = opt(
        None, "Image height in pixels, a multiple of 8 (default: the pipeline's own).", min=8
    )
    width: int | None = opt(
        None, "Image width in pixels, a multiple of 8 (default: the pipeline's own).", min=8
    )
    seed: int = opt(0, "Random seed; prompt i uses seed + i.", min=0)
    dtype: str = opt("float32", "Weights and activations (float16 needs a GPU).", choices=DTYPES)


@dataclass(kw_only=True)
class _Layers:
    """Where and how the denoiser is merged."""

    max_downsample: int | None = opt(
        None, "Merge blocks up to this downsample level: 1, 2, 4, 8 (default 1; SDXL 2).", min=1
    )
    importance: str = opt("cfg", IMPORTANCE_HELP, choices=IMPORTANCE)
    merge_crossattn: bool = opt(False, "Also merge the cross-attention queries.")
    merge_mlp: bool = opt(False, "Also merge the feed-forward input.")
    prune_steps: int = opt(2, "First steps prune with the grid (no map exists yet).", min=0)
    importance_start: int = opt(2, "Step from which importance merging starts.", min=0)
    blocks: str | None = opt(
        None,
        "Spatial transformer blocks to patch, e.g. 7-20 or 0,2,5 (default: all for UNets, "
        "the middle half for DiTs).",
    )
    skip_unprofitable: bool = opt(
        True,
        "Leave blocks unmerged where merging costs more than it saves (too few tokens for "
        "their width, measured break-even); --no-skip-unprofitable merges every block.",
    )
    min_tokens: int | None = opt(
        None, "Fixed token threshold of --skip-unprofitable (default: by block width).", min=0
    )
    frame_window: int = opt(
        1, "Video transformers (Wan): merge within groups of this many frames.", min=1
    )


@dataclass(kw_only=True)
class GenerateOptions(_Layers, _Sampling):
    mode: str = opt(
        "importance", "importance (the paper's method), tome (random-grid baseline) or none.",
        choices=MODES,
    )  # fmt: skip
    frames: int = opt(16, "Video frames (AnimateDiff; Wan rounds to 4k + 1).", min=1)


@dataclass(kw_only=True)
class BenchmarkOptions(_Layers, _Sampling):
    frames: int = opt(16, "Video frames (AnimateDiff; Wan rounds to 4k + 1).", min=1)
    attention: list[str] | None = opt(
        None, "Attention backends to time (repeat; default both).", choices=BACKENDS
    )
    methods: list[str] | None = opt(
        None,
        "Methods besides unmerged (repeat; default all).",
        flag="--method",
        choices=METHODS,
    )
    warmup: int = opt(1, "Untimed generations first.", min=0)


@dataclass(kw_only=True)
class EvaluateOptions(_Sampling):
    reference: Path = opt(help="Folder of real reference images for FID.")
    mode: str = opt(
        "importance", "importance (the paper's method), tome (random-grid baseline) or none.",
        choices=MODES,
    )  # fmt: skip
    inception_weights: Path | None = opt(
        None,
        "FID Inception weights (torch-fidelity's weights-inception-2015-12-05-6726825d.pth); "
        "needed offline.",
    )
    clip_model: str | None = opt(
        None,
        "transformers CLIPModel directory for CLIP score (default "
        "openai/clip-vit-large-patch14, needs network or the hub cache).",
    )
    max_downsample: int | None = opt(
        None, "Merge blocks up to this downsample level: 1, 2, 4, 8 (default 1; SDXL 2).", min=1
    )
    importance: str = opt("cfg", IMPORTANCE_HELP, choices=IMPORTANCE)


def check(cfg: _Sampling) -> None:
    """The declared bounds plus what a bound cannot say; InputError naming the flag."""
    validate(cfg)
    for flag, size in (("--height", cfg.height), ("--width", cfg.width)):
        if size is not None and size % 8:
            raise InputError(
                f"{flag}: must be a multiple of 8 (the VAE's downsampling), got {size}"
            )
    down = getattr(cfg, "max_downsample", None)
    if down is not None and down not in DOWNSAMPLES:
        raise InputError(f"--max-downsample: use 1, 2, 4 or 8, got {down}")
    if isinstance(cfg, _Layers):
        parse_blocks(cfg.blocks)


def parse_blocks(spec: str | None) -> list[int] | None:
    """'7-20' or '0,2,5' (or both, comma-separated) -> block indices; None: the default."""
    if not spec:
        return None
    out: list[int] = []
    try:
        for part in spec.split(","):
            lo, _, hi = part.partition("-")
            out += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise InputError(f"--blocks {spec}: use ranges and lists like 7-20 or 0,2,5") from None
    return out


def merge_options(cfg: _Sampling) -> dict[str, Any]:
    """The apply_patch keyword arguments of a config (evaluate: max_downsample and
    importance only)."""
    opts: dict[str, Any] = {
        "max_downsample": getattr(cfg, "max_downsample", None),
        "importance": getattr(cfg, "importance", "cfg"),
    }
    if isinstance(cfg, _Layers):
        opts |= {
            "merge_crossattn": cfg.merge_crossattn,
            "merge_mlp": cfg.merge_mlp,
            "prune_steps": cfg.prune_steps,
            "importance_start": cfg.importance_start,
            "blocks": parse_blocks(cfg.blocks),
            "skip_unprofitable": cfg.skip_unprofitable,
            "min_tokens": cfg.min_tokens,
            "frame_window": cfg.frame_window,
        }
    return opts


# -- pipelines ----------------------------------------------------------------------------
def load(cfg: _Sampling, device: Any = "cpu") -> Any:
    """The pipeline of `cfg.pipeline` on `device` in `cfg.dtype`, its progress bars off."""
    import torch

    from tomerge_cli.pipelines import load_pipeline

    return load_pipeline(cfg.pipeline, torch.device(device), getattr(torch, cfg.dtype))


def apply_method(pipe: Any, method: str, ratio: float, options: dict[str, Any]) -> None:
    """Patch a clean pipeline with one method (none, tomesd, tome, importance); a setting
    the pipeline cannot take is bad input."""
    from tomerge_cli.pipelines import patch

    opts = {"max_downsample": options.get("max_downsample")} if method == "tomesd" else options
    try:
        patch(pipe, method, ratio, **opts)
    except ValueError as exc:
        raise InputError(str(exc)) from None


def tomesd_unavailable(pipe: Any) -> str | None:
    """Why tomesd cannot run on this pipeline (UNet pipelines only; installed?), or None."""
    from tomerge_cli.pipelines import tomesd_support

    why = tomesd_support(pipe)
    if why is None:
        try:
            import tomesd  # noqa: F401
        except ImportError:
            why = "tomesd is not installed (pip install tomesd)"
    return why


def _prepared(cfg: _Sampling, pipe: Any | None, device: Any) -> tuple[list[str], Any]:
    from tomerge_cli.pipelines import read_prompts

    check(cfg)
    texts = read_prompts(cfg.prompt, cfg.prompts)
    if pipe is None:
        pipe = load(cfg, device)
    pipe.set_progress_bar_config(disable=True)  # our own bar counts prompts
    return texts, pipe


def _sampling(cfg: _Sampling) -> Any:
    from tomerge_cli.pipelines import Sampling

    return Sampling(cfg.steps, cfg.guidance, cfg.height, cfg.width, getattr(cfg, "frames", 16))


def _items(items: Iterable[T], description: str, run: Any | None) -> Iterator[T]:
    """Progress over items; with a run, SIGTERM/SIGUSR1 stop between items (exit 75):
    generation has no state worth resuming."""
    for item in get_console().progress(items, description):
        if run is not None and getattr(run, "stop_requested", lambda: False)():
            raise Preempted(f"{description}: stopped by a signal before item {item}")
        yield item


# -- commands -----------------------------------------------------------------------------
def generate(
    cfg: GenerateOptions,
    *,
    out: Path | None = None,
    device: Any = "cpu",
    pipe: Any | None = None,
    run: Any | None = None,
    clock: Clock = time.perf_counter,
) -> dict[str, Any]:
    """Generate every prompt (prompt i with seed + i) with token merging; with `out`, PNGs
    in out/images (a video: one per frame and a looping GIF) and generate.json. Returns
    timings, settings and the merge statistics."""
    from shared.images import save_animation, save_image
    from shared.io import write_json
    from tomerge_cli.patch import get_merger
    from tomerge_cli.pipelines import generate as run_pipe

    texts, pipe = _prepared(cfg, pipe, device)
    apply_method(pipe, cfg.mode, cfg.ratio, merge_options(cfg))
    sampling = _sampling(cfg)
    seconds: list[float] = []
    files: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for i, text in enumerate(_items(texts, "generate", run)):
            images, sec = run_pipe(pipe, text, cfg.seed + i, sampling, clock)
            seconds.append(sec)
            for j, img in enumerate(images):
                name = f"images/{i:03d}.png" if len(images) == 1 else f"images/{i:03d}_f{j:03d}.png"
                if out is not None:
                    save_image(img, Path(out) / name)
                files.append(name)
            if len(images) > 1:  # a video: its frames above, and the clip to watch
                name = f"images/{i:03d}.gif"
                if out is not None:
                    save_animation(images, Path(out) / name)
                files.append(name)
    # tomerge's own notes (e.g. the no-CFG fallback) are worth a line; library chatter is not
    notes = sorted({str(w.message) for w in caught if "tomerge" in str(w.message)})
    for note in notes:
        get_console().warn(note)
    merger = get_merger(pipe)
    metrics = {
        "pipeline": cfg.pipeline,
        "pipeline_class": type(pipe).__name__,
        "mode": cfg.mode,
        "ratio": cfg.ratio,
        "steps": cfg.steps,
        "guidance": cfg.guidance,
        "seed": cfg.seed,
        "prompts": texts,
        "images": sum(f.endswith(".png") for f in files),
        "seconds_per_prompt": sum(seconds) / len(seconds),
        "seconds_each": seconds,
        "files": files if out is not None else [],
        "merge_stats": merger.stats if merger else None,
        "notes": notes,
    }
    if out is not None:
        write_json(Path(out) / "generate.json", metrics)
    return metrics


def benchmark(
    cfg: BenchmarkOptions,
    *,
    out: Path | None = None,
    device: Any = "cpu",
    pipe: Any | None = None,
    run: Any | None = None,
    clock: Clock = time.perf_counter,
) -> dict[str, Any]:
    """The same prompts and seeds unmerged and with each method, under each attention
    backend: seconds per image (median), speed-up, fidelity to the unmerged image. tomesd
    is skipped, with the reason, where it cannot run (UNet pipelines only). With `out`:
    benchmark.md, benchmark.json and grid.png."""
    from shared.images import save_image
    from shared.io import write_json, write_text
    from tomerge_cli.benchmark import compare_methods, markdown

    texts, pipe = _prepared(cfg, pipe, device)
    wanted = list(dict.fromkeys(cfg.methods or METHODS))
    skipped: dict[str, str] = {}
    if "tomesd" in wanted:
        why = tomesd_unavailable(pipe)
        if why:
            skipped["tomesd"] = why
            get_console().warn(f"tomesd skipped: {why}")
    result = compare_methods(
        pipe,
        texts,
        cfg.seed,
        _sampling(cfg),
        cfg.ratio,
        [m for m in wanted if m not in skipped],
        list(dict.fromkeys(cfg.attention or BACKENDS)),
        merge_options(cfg),
        warmup=cfg.warmup,
        progress=lambda items, description: _items(items, description, run),
        patcher=apply_method,
        clock=clock,
    )
    result["skipped"] = skipped
    grid = result.pop("grid")
    if out is not None:
        save_image(grid, Path(out) / "grid.png")
        write_json(Path(out) / "benchmark.json", result)
        write_text(Path(out) / "benchmark.md", markdown(result, cfg.pipeline) + "\n")
    return {
        "pipeline": cfg.pipeline,
        "pipeline_class": type(pipe).__name__,
        "ratio": cfg.ratio,
        "rows": result["rows"],
        "skipped": skipped,
        "lpips_note": result.get("lpips_note"),
    }


def evaluate(
    cfg: EvaluateOptions,
    *,
    device: Any = "cpu",
    pipe: Any | None = None,
    run: Any | None = None,
) -> dict[str, Any]:
    """FID against `cfg.reference` and CLIP score of the generated images (torchmetrics);
    the metric weights are checked before anything is generated."""
    import torch

    from shared.images import load_image
    from tomerge_cli.pipelines import generate as run_pipe
    from tomerge_cli.pipelines import read_prompts
    from tomerge_cli.quality import clip_metric, fid_metric, inception_weights

    check(cfg)
    read_prompts(cfg.prompt, cfg.prompts)  # bad input first, before any weights load
    ref = Path(cfg.reference)
    if not ref.is_dir():
        raise InputError(f"--reference {ref}: not a directory of images")
    refs = sorted(p for p in ref.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if len(refs) < 2:
        raise InputError(f"--reference {ref}: FID needs at least 2 images")
    # metric weights before any generation, cheapest check first: a given Inception file is
    # read by the safe loader (a bad one fails fast) and its network built after CLIP; without
    # one, FID (a download, the likely failure offline) goes first
    inception = inception_weights(cfg.inception_weights)
    fid = fid_metric(None) if inception is None else None
    clip = clip_metric(cfg.clip_model)
    if fid is None:
        fid = fid_metric(cfg.inception_weights, inception)
    texts, pipe = _prepared(cfg, pipe, device)
    apply_method(pipe, cfg.mode, cfg.ratio, merge_options(cfg))
    sampling = _sampling(cfg)
    seconds = []
    for i, text in enumerate(_items(texts, "generate", run)):
        images, sec = run_pipe(pipe, text, cfg.seed + i, sampling)
        seconds.append(sec)
        fid.update(images, real=False)
        clip.update((images * 255).round().to(torch.uint8), [text] * len(images))
    for path in _items(refs, "reference", run):
        fid.update(load_image(path)[None], real=True)
    return {
        "pipeline": cfg.pipeline,
        "mode": cfg.mode,
        "ratio": cfg.ratio,
        "images": len(texts),
        "reference_images": len(refs),
        "fid": float(fid.compute()),
        "clip_score": float(clip.compute()),
        "seconds_per_prompt": sum(seconds) / len(seconds),
    }
