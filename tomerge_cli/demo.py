"""`make demo` for tomerge: the shipped class-conditional digits diffusion model (a tiny
diffusers UNet trained on builtin:digits at 32x32, references/tomerge/) sampled from the
same seeds unmerged, with tomesd, with our ToMe baseline and with importance merging.

Shown: fidelity of each merged sample to the unmerged one from the same seed (PSNR, SSIM),
the class accuracy of the samples under the shipped digits classifier, an image grid, and
speed. At 32x32 the UNet's attention is a small share of a step, so the speed of merging is
timed where it pays: one Stable-Diffusion-1.5-shaped transformer block (320 channels, 8
heads, CLIP-sized cross-attention, random weights) on a 64x64 token grid (a 512 px image),
with a CFG batch, every method interleaved, median and spread of repeated steps.

    python -m tomerge_cli.demo --out runs/demo/tomerge [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.intervals import paired, verdict

RATIO = 0.5
PER_CLASS = 3  # samples per digit class: 30 samples, each method from the same seeds
DDIM_STEPS = 10
GUIDANCE = 3.0
SEED = 0
METHODS = ("unmerged", "tomesd", "tome", "importance")
SPEED_TOKENS = 64  # token grid side of the speed check (SD 1.5 at 512 px)
SPEED_ROUNDS = 3
# the vbp demo's / hello's digits ViT (val top-1 ~95% at 16 px)
CLASSIFIER = (
    "vit_tiny_patch16_224",
    {"img_size": 16, "patch_size": 4, "num_classes": 10, "embed_dim": 96, "depth": 6,
     "num_heads": 3},
    {"epochs": 30, "lr": 2e-3},
)  # fmt: skip


def quiet_libraries() -> None:
    """diffusers' accelerate notice and deprecation chatter are not the demo's output."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*accelerate.*")
    try:
        from diffusers.utils import logging as dlog

        dlog.set_verbosity_error()
    except ImportError:  # pragma: no cover - diffusers is a dependency of tomerge
        pass


# -- the digits classifier -------------------------------------------------------------
def digits_classifier() -> tuple[Callable[[torch.Tensor], torch.Tensor], dict[str, Any], str]:
    """predict(images in [0, 1], (N, 1, S, S)) -> class ids, the model's metadata and where
    it came from. The digits ViT: the shipped one (vbp ships it, references/vbp/), else the
    cached one, else trained now and cached (shared.reference, minutes)."""
    import torch.nn.functional as F
    from timm.data import resolve_data_config

    from shared.reference import load_reference, reference_classifier
    from shared.references import ROOT

    name, kwargs, recipe = CLASSIFIER
    path, meta = reference_classifier(name, kwargs, **recipe)
    where = "shipped" if ROOT in Path(path).resolve().parents else "cached"
    source = f"{where}, val top-1 {meta.get('val_top1', float('nan')):.1f}%"
    model = load_reference(path)
    cfg = resolve_data_config({}, model=model)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    side = CLASSIFIER[1]["img_size"]

    @torch.inference_mode()
    def predict(imgs: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(imgs, size=(side, side), mode="bilinear", antialias=True)
        return model((x.expand(-1, 3, -1, -1) - mean) / std).argmax(1)

    return predict, meta, source


# -- sampling ----------------------------------------------------------------------------
@torch.inference_mode()
def sample(model: nn.Module, labels: torch.Tensor, seed: int, steps: int, guidance: float):
    """DDIM; with guidance > 1 one CFG batch [uncond; cond] per step as a pipeline runs it,
    else one conditional call per step (no CFG batch, as a guidance-distilled model)."""
    from diffusers import DDIMScheduler

    from tomerge_cli.references import CLASSES

    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    sched.set_timesteps(steps)
    size = model.size
    x = torch.randn(len(labels), 1, size, size, generator=torch.Generator().manual_seed(seed))
    null = torch.full_like(labels, CLASSES)
    for t in sched.timesteps:
        if guidance > 1:
            eps_u, eps_c = model(torch.cat([x, x]), t, torch.cat([null, labels])).chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
        else:
            eps = model(x, t, labels)
        x = sched.step(eps, t, x).prev_sample
    return ((x + 1) / 2).clamp(0, 1)


def patch(
    model: nn.Module, method: str, ratio: float = RATIO, prune_steps: int = 2
) -> Callable[[], None]:
    """Apply one method at `ratio` to `model` (a UNet or a module holding transformer
    blocks); returns the function that removes it."""
    import tomerge_cli

    if method == "unmerged":
        return lambda: None
    if method == "tomesd":
        import tomesd

        tomesd.apply_patch(model, ratio=ratio)
        return lambda: tomesd.remove_patch(model)
    # a fidelity comparison: merge even where the cost model would skip these small blocks
    tomerge_cli.apply_patch(
        model, ratio=ratio, mode=method, prune_steps=prune_steps, skip_unprofitable=False
    )
    return lambda: tomerge_cli.remove_patch(model)


def fidelity_run(model: nn.Module, predict: Callable) -> dict[str, dict[str, Any]]:
    from tomerge_cli.fidelity import psnr, ssim

    labels = torch.arange(10).repeat(PER_CLASS)
    sample(model, labels[:2], SEED, 2, GUIDANCE)  # warm-up: the first call pays allocations
    out: dict[str, dict[str, Any]] = {}
    for method in METHODS:
        remove = patch(model.unet, method)
        start = time.perf_counter()
        imgs = sample(model, labels, SEED, DDIM_STEPS, GUIDANCE)
        seconds = time.perf_counter() - start
        remove()
        row: dict[str, Any] = {
            "images": imgs,
            "seconds": seconds,
            "accuracy": (predict(imgs) == labels).float().mean().item() * 100,
        }
        if method != "unmerged":
            base = out["unmerged"]["images"]
            per = [psnr(imgs[i : i + 1], base[i : i + 1]) for i in range(len(imgs))]
            finite = [p for p in per if p != float("inf")]  # identical images: no error
            row["psnr"] = statistics.mean(finite) if finite else 99.0
            row["psnr_per_sample"] = [min(p, 99.0) for p in per]  # identical: capped
            row["ssim"] = ssim(imgs, base)
        out[method] = row
    return out


# -- speed where merging pays -------------------------------------------------------------
def sd_block() -> nn.Module:
    """A denoiser with one SD-1.5-shaped full-resolution transformer block (random weights):
    latents (B, 4, H, W) -> 320 channels -> Transformer2DModel -> 4 channels."""
    from diffusers import ModelMixin, Transformer2DModel

    class SDBlock(ModelMixin):  # a ModelMixin so that tomesd accepts it as a diffusers model
        def __init__(self) -> None:
            super().__init__()
            self.conv_in = nn.Conv2d(4, 320, 3, padding=1)
            self.block = Transformer2DModel(
                num_attention_heads=8,
                attention_head_dim=40,
                in_channels=320,
                cross_attention_dim=768,
                norm_num_groups=32,
            )
            self.conv_out = nn.Conv2d(320, 4, 3, padding=1)

        def forward(
            self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
        ) -> torch.Tensor:
            h = self.block(self.conv_in(sample), encoder_hidden_states=encoder_hidden_states)
            return self.conv_out(h.sample)

    torch.manual_seed(0)
    return SDBlock().eval()


@torch.inference_mode()
def speed_run(rounds: int = SPEED_ROUNDS, side: int = SPEED_TOKENS) -> dict[str, dict[str, float]]:
    """Seconds per denoising step of each method, interleaved: every method runs one step in
    turn (order rotating), after 2 warm-up steps each (importance merging starts at step 2,
    from the previous step's map). Median, min and max over `rounds` steps."""
    import copy

    base = sd_block()
    models = {m: copy.deepcopy(base) for m in METHODS}
    for m, model in models.items():
        patch(model, m)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, side, side, generator=gen)
    ctx = torch.randn(2, 77, 768, generator=gen)
    args = (torch.cat([x, x]), torch.tensor(999), ctx)  # a CFG batch: [uncond; cond]
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for m in METHODS:  # steps 0 and 1: warm-up (and the grid-prune steps of importance mode)
        for _ in range(2):
            models[m](*args)
    for r in range(rounds):
        k = r % len(METHODS)
        for m in METHODS[k:] + METHODS[:k]:
            start = time.perf_counter()
            models[m](*args)
            times[m].append(time.perf_counter() - start)
    med = {m: statistics.median(v) for m, v in times.items()}
    return {
        m: {
            "median_s": med[m],
            "min_s": min(v),
            "max_s": max(v),
            "speedup": med["unmerged"] / med[m],
        }
        for m, v in times.items()
    }


# -- picture --------------------------------------------------------------------------------
def save_picture(path: Path, fid: dict[str, dict[str, Any]], speed: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shared.io import atomic_write

    fig = plt.figure(figsize=(12, 5.2))
    grid_ax = fig.add_axes((0.09, 0.08, 0.56, 0.82))
    rows = []
    for method in METHODS:
        imgs = fid[method]["images"][:10, 0]  # the first seed of each class, digits 0-9
        pad = torch.ones(imgs.shape[1], 2)
        rows.append(torch.cat([torch.cat([im, pad], 1) for im in imgs], 1))
    sep = torch.ones(2, rows[0].shape[1])
    grid_ax.imshow(torch.cat([torch.cat([r, sep]) for r in rows]).numpy(), cmap="gray")
    side = fid["unmerged"]["images"].shape[-1] + 2
    grid_ax.set_yticks([side * (i + 0.5) for i in range(len(METHODS))])
    labels = ["unmerged"] + [
        f"{m}\n{fid[m]['psnr']:.1f} dB" for m in METHODS[1:]
    ]  # fidelity to the row above
    grid_ax.set_yticklabels(labels)
    grid_ax.set_xticks([side * (i + 0.5) for i in range(10)])
    grid_ax.set_xticklabels([str(i) for i in range(10)])
    grid_ax.set_title(
        f"digits diffusion UNet (32x32), same seeds, ratio {RATIO}: requested class 0-9",
        fontsize=10,
    )
    bar_ax = fig.add_axes((0.72, 0.14, 0.26, 0.72))
    speedups = [speed[m]["speedup"] for m in METHODS]
    lo = [speed["unmerged"]["median_s"] / speed[m]["max_s"] for m in METHODS]
    hi = [speed["unmerged"]["median_s"] / speed[m]["min_s"] for m in METHODS]
    err = [
        [s - a for s, a in zip(speedups, lo, strict=True)],
        [b - s for s, b in zip(speedups, hi, strict=True)],
    ]
    bar_ax.bar(METHODS, speedups, yerr=err, capsize=4, color=["0.6", "C0", "C1", "C2"])
    bar_ax.axhline(1.0, color="k", lw=0.8)
    bar_ax.set_ylabel("speed-up over unmerged (x)")
    bar_ax.set_title(
        f"SD-1.5 block, {SPEED_TOKENS}x{SPEED_TOKENS} tokens, CFG batch\n(bars: step-time spread)",
        fontsize=10,
    )
    bar_ax.tick_params(axis="x", labelrotation=30)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def paired_verdict(a: list[float], b: list[float], seed: int = 0) -> tuple[str, float, float]:
    """'higher', 'lower' or 'on par' for a against b, paired per item: the bootstrap
    interval of mean(a - b), and its bounds."""
    p = paired(a, b, "bootstrap", seed=seed)
    return verdict(p["low"], p["high"], "higher", "lower"), p["low"], p["high"]


def speed_verdict(a: dict[str, float], b: dict[str, float]) -> str:
    """'ahead of', 'behind' or 'on par with' for step times a against b: a side only where
    the two ranges of interleaved steps do not overlap."""
    if a["max_s"] < b["min_s"]:
        return "ahead of"
    return "behind" if a["min_s"] > b["max_s"] else "on par with"


def claim(figures: dict[str, Any]) -> str:
    imp = figures["psnr_importance"]
    parts = []
    for other in ("tome", "tomesd"):
        verdict, low, high = figures[f"psnr_importance_vs_{other}"]
        word = {"higher": "closer than", "lower": "FARTHER than", "on par": "on par with"}
        parts.append(
            f"{word[verdict]} {other} ({figures[f'psnr_{other}']:.1f} dB; paired difference "
            f"95% interval [{low:+.2f}, {high:+.2f}] dB)"
        )
    fid = (
        f"importance merging keeps the samples at {imp:.1f} dB PSNR to the unmerged ones of "
        f"the same seeds: " + ", ".join(parts)
    )
    acc = (
        f"class accuracy {figures['accuracy_importance']:.0f}% vs "
        f"{figures['accuracy_unmerged']:.0f}% unmerged on {figures['samples']:.0f} samples"
    )
    sp = figures["speedup_importance"]
    speed = (
        f"on an SD-1.5 block at {SPEED_TOKENS}x{SPEED_TOKENS} tokens it runs {sp:.2f}x the "
        f"unmerged speed ({figures['speed_vs_tomesd']} tomesd's "
        f"{figures['speedup_tomesd']:.2f}x over {SPEED_ROUNDS} interleaved steps)"
        if sp >= 1
        else f"on an SD-1.5 block at {SPEED_TOKENS}x{SPEED_TOKENS} tokens it was SLOWER "
        f"than unmerged in this run ({sp:.2f}x)"
    )
    # no speed claim at the demo's own 32x32 size: one untimed-interleaved pass there measures
    # warm-up and noise, not merging (the block timing above is interleaved and repeated)
    return f"{fid}; {acc}; {speed}."


def run(out: Path) -> dict[str, Any]:
    from shared.console import get_console
    from tomerge_cli.references import DEMO_MODEL, reference_model

    console = get_console()
    quiet_libraries()
    model = reference_model(DEMO_MODEL)
    predict, _, cls_source = digits_classifier()
    fid = fidelity_run(model, predict)
    speed = speed_run()
    n = len(fid["unmerged"]["images"])
    figures: dict[str, Any] = {"samples": n, "ratio": RATIO, "ddim_steps": DDIM_STEPS}
    for m in METHODS:
        figures[f"accuracy_{m}"] = round(fid[m]["accuracy"], 1)
        figures[f"block_ms_{m}"] = round(speed[m]["median_s"] * 1e3, 1)
        figures[f"speedup_{m}"] = round(speed[m]["speedup"], 3)
        if m != "unmerged":
            figures[f"psnr_{m}"] = round(fid[m]["psnr"], 2)
            figures[f"ssim_{m}"] = round(fid[m]["ssim"], 4)
    for other in ("tome", "tomesd"):
        per = fid["importance"]["psnr_per_sample"], fid[other]["psnr_per_sample"]
        figures[f"psnr_importance_vs_{other}"] = paired_verdict(*per)
    figures["speed_vs_tomesd"] = speed_verdict(speed["importance"], speed["tomesd"])
    console.table(
        f"tomerge: shipped digits diffusion UNet at 32x32, {n} samples ({PER_CLASS} per class), "
        f"DDIM {DDIM_STEPS} steps, guidance {GUIDANCE}, ratio {RATIO}; fidelity is to the "
        f"unmerged sample of the same seed; class accuracy by the digits ViT ({cls_source})",
        ["method", "PSNR (dB)", "SSIM", "class acc. (%)"],
        [
            (
                m,
                "-" if m == "unmerged" else figures[f"psnr_{m}"],
                "-" if m == "unmerged" else figures[f"ssim_{m}"],
                figures[f"accuracy_{m}"],
            )
            for m in METHODS
        ],
    )
    console.table(
        f"speed where merging pays: one SD-1.5 transformer block, {SPEED_TOKENS}x{SPEED_TOKENS} "
        f"tokens, CFG batch 2, random weights, interleaved, {SPEED_ROUNDS} steps each "
        "(whole SD 1.5 UNets gain less: benchmarks/results/tomerge, 1.1-1.3x)",
        ["method", "median ms / step", "min-max ms", "speed-up"],
        [
            (
                m,
                figures[f"block_ms_{m}"],
                f"{speed[m]['min_s'] * 1e3:.0f}-{speed[m]['max_s'] * 1e3:.0f}",
                figures[f"speedup_{m}"],
            )
            for m in METHODS
        ],
    )
    picture = out / "tomerge-demo.png"
    save_picture(picture, fid, speed)
    console.info(f"picture: {picture}")
    return {"figures": figures, "picture": str(picture), "claim": claim(figures)}


def main(argv: list[str] | None = None) -> int:
    from shared.console import configure

    ap = argparse.ArgumentParser(prog="python -m tomerge_cli.demo", description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("runs/demo/tomerge"), help="output folder")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = ap.parse_args(argv)
    console = configure(json_mode=args.json)
    report = run(args.out)
    console.info(report["claim"])
    if args.json:
        sys.stdout.write(json.dumps(report) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
