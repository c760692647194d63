"""tomerge fidelity on a diffusion model that has learned something: a small class-conditional
pixel-space UNet (diffusers UNet2DConditionModel, attention at full resolution, CFG
dropout) trained here on builtin:digits at 16x16 (the digits are 8x8 originals; at 32x32 a
training step was ~10x slower on this shared 2-core CPU and did not fit the budget), then
sampled unmerged, with tomesd, with our ToMe baseline (mode=tome) and with importance merging
at ratios 0.3 / 0.5 / 0.7.

    python -m benchmarks.tomerge_fidelity [--quick] [--train-steps 1500] [--per-class 20]

Reported per method and ratio: PSNR / SSIM of each sample to the unmerged sample from the
same seed (mean and 95% bootstrap interval over the samples), and the accuracy of a digits
classifier (the cached reference ViT) on the samples: does the image still show the
requested class? Then importance against tome and against tomesd, paired per sample (the
bootstrap interval of the mean PSNR difference; "closer" / "farther" only when it excludes
0, else "on par"). Every method merges attn1 at full resolution (tomesd's defaults).

Without --train-steps / --quick the UNet is the shipped reference
(references/tomerge/digits-unet-<size>px.safetensors, one attention head, see
tomerge_cli.references); with them it is trained here with the recipe
of tomerge_cli.references (eight heads) and cached under $TOOLKIT_CACHE (default ./.cache).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import (
    RESULTS,
    add_common_args,
    check_tree,
    markdown_table,
    save_text,
    write_results,
)

REPO = Path(__file__).resolve().parent.parent
SIZE = 16  # default image side; --size 32 trains and samples at 32x32
HEADS = 8  # attention heads of the UNet trained here (the shipped references have one)
LR = 2e-3


def trained_model(steps: int, batch: int, size: int) -> tuple[nn.Module, float]:
    """The UNet trained with tomerge_cli.references' recipe (eight heads), cached."""
    from safetensors.torch import load_file, save_file

    from tomerge_cli.references import DigitsDiffusion, Recipe, train

    cache = Path(os.environ.get("TOOLKIT_CACHE") or REPO / ".cache") / "tomerge"
    suffix = "" if size == SIZE else f"-{size}px"
    path = cache / f"digits-unet-{steps}x{batch}{suffix}.safetensors"
    model = DigitsDiffusion(size, HEADS).eval()
    if path.exists():
        model.load_state_dict(load_file(path))
        return model, 0.0
    start = time.time()
    model, _ = train(Recipe(size=size, steps=steps, batch=batch, lr=LR, seed=0), heads=HEADS)
    cache.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), path)
    return model, time.time() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer training steps and samples")
    parser.add_argument("--train-steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--per-class", type=int, default=None, help="samples per digit class")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    parser.add_argument("--size", type=int, default=SIZE, help="image side (16 or 32)")
    parser.add_argument("--name", default=None, help="results file name (default from options)")
    parser.add_argument(
        "--prune-steps",
        type=int,
        default=2,
        help="apply_patch prune_steps (the paper's SD schedule: 2; importance from step 2)",
    )
    add_common_args(parser)
    args = parser.parse_args()
    check_tree(args)
    per_class = args.per_class or (4 if args.quick else 20)

    from tomerge_cli.demo import digits_classifier, patch, sample
    from tomerge_cli.references import CLASSES, RECIPES, reference_model

    shipped = f"digits-unet-{args.size}px"
    if args.train_steps is None and not args.quick and shipped in RECIPES:
        # the shipped reference (references/tomerge/, python -m tomerge_cli.references NAME)
        model, train_s = reference_model(shipped), 0.0
        train_steps, batch = RECIPES[shipped].steps, RECIPES[shipped].batch
    else:
        batch = args.batch
        train_steps = args.train_steps or (100 if args.quick else 500)
        model, train_s = trained_model(train_steps, args.batch, args.size)
    os.environ.setdefault("TOOLKIT_CACHE", str(REPO / ".cache"))
    predict, cls_meta, _ = digits_classifier()
    labels = torch.arange(CLASSES).repeat_interleave(per_class)
    chunks = labels.split(50)

    def run_all() -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        out = torch.cat(
            [sample(model, c, seed=i, steps=args.steps, guidance=args.guidance)
             for i, c in enumerate(chunks)]
        )  # fmt: skip
        return out, time.perf_counter() - start

    results: dict[str, Any] = {}
    base, base_s = run_all()
    real, real_labels = _real_digits(args.size)
    real_acc = (predict(real) == real_labels).float().mean().item() * 100
    outputs: dict[str, tuple[torch.Tensor, float]] = {}
    grid = {"unmerged": base}
    for ratio in args.ratios:
        for method in METHODS:
            remove = patch(model.unet, method, ratio, args.prune_steps)
            outputs[f"{method} {ratio}"] = run_all()
            remove()
            grid[f"{method} {ratio}"] = outputs[f"{method} {ratio}"][0]
    data_rows = compare(base, base_s, outputs, labels, predict)
    rows = [
        (
            r["method"],
            r["ratio"] or "-",
            _with_interval(r["psnr"], r["psnr_interval"]) if "psnr" in r else "inf",
            f"{r['ssim']:.4f}",
            _with_interval(r["accuracy"], r["accuracy_interval"], "{:.0f}"),
            f"{r['seconds']:.1f}",
        )
        for r in data_rows["rows"]
    ]
    paired_rows = [
        (p["ratio"], f"importance - {p['other']}", f"{p['diff']:+.2f}",
         f"[{p['low']:+.2f}, {p['high']:+.2f}]", p["verdict"])
        for p in data_rows["paired"]
    ]  # fmt: skip
    results.update(data_rows)
    results["train_steps"] = train_steps
    results["train_seconds"] = train_s
    results["classifier_val_top1"] = cls_meta.get("val_top1")
    results["classifier_on_real_val"] = real_acc
    results["size"] = args.size
    results["prune_steps"] = args.prune_steps
    sections = [
        (
            f"{len(labels)} samples ({per_class} per class), DDIM {args.steps} steps, "
            f"guidance {args.guidance}; UNet trained {train_steps} steps x {batch} at "
            f"{args.size}x{args.size}; prune_steps {args.prune_steps}",
            markdown_table(
                [
                    "method",
                    "ratio",
                    "PSNR to unmerged, dB [95% CI]",
                    "SSIM",
                    "class accuracy, % [95% CI]",
                    "seconds (all samples)",
                ],
                rows,
            )  # fmt: skip
            + f"\n\nThe classifier (reference ViT, val top-1 {cls_meta.get('val_top1'):.1f}% "
            f"at 16 px) scores {real_acc:.1f}% on the real validation digits resized the "
            f"same way ({args.size} px in, 16 px to the classifier). PSNR is the mean of the "
            f"per-sample PSNR (capped at {PSNR_CAP:.0f} dB for a sample identical to the "
            "unmerged one); intervals: percentile bootstrap over the samples.",
        ),
        (
            "Importance against the others, paired per sample (PSNR to unmerged, dB)",
            markdown_table(
                ["ratio", "difference", "mean", "95% bootstrap interval", "importance is"],
                paired_rows,
            ),
        ),
    ]
    name = "fidelity-quick" if args.quick else "fidelity"
    if args.size != SIZE:
        name += f"-{args.size}px"
    if args.prune_steps != 2:
        name += f"-prune{args.prune_steps}"
    name = args.name or name
    path = write_results(
        "tomerge", name, "tomerge fidelity: digits diffusion UNet, tomesd vs tome vs importance",
        sections, results,
    )  # fmt: skip
    save_grid(grid, labels, RESULTS / "tomerge" / f"{name}.png")
    print(path.read_text())


METHODS = ("tomesd", "tome", "importance")
PSNR_CAP = 99.0  # dB for a sample identical to the unmerged one (inf would void the mean)


def compare(
    base: torch.Tensor,
    base_s: float,
    outputs: dict[str, tuple[torch.Tensor, float]],
    labels: torch.Tensor,
    predict: Any,
) -> dict[str, Any]:
    """Per "method ratio" of `outputs` (samples, seconds): per-sample PSNR to `base`, SSIM,
    class accuracy, with bootstrap intervals over the samples (one resampling shared by all
    rows); and importance paired against each other method at the same ratio."""
    from shared.intervals import bootstrap_mean, paired, resample_index
    from tomerge_cli.fidelity import psnr, ssim

    index = resample_index(len(labels))
    correct = (predict(base) == labels).double()
    _, low, high = bootstrap_mean(correct * 100, index=index)
    rows: list[dict[str, Any]] = [
        {"method": "unmerged", "ratio": 0.0, "ssim": 1.0, "accuracy": float(correct.mean()) * 100,
         "accuracy_interval": [low, high], "seconds": base_s}
    ]  # fmt: skip
    per_sample: dict[str, list[float]] = {}
    for key, (imgs, seconds) in outputs.items():
        method, ratio = key.rsplit(" ", 1)
        values = [min(psnr(imgs[i : i + 1], base[i : i + 1]), PSNR_CAP) for i in range(len(imgs))]
        per_sample[key] = values
        mean, low, high = bootstrap_mean(values, index=index)
        hits = (predict(imgs) == labels).double() * 100
        acc, acc_low, acc_high = bootstrap_mean(hits, index=index)
        rows.append(
            {"method": method, "ratio": float(ratio), "psnr": mean, "psnr_interval": [low, high],
             "ssim": ssim(imgs, base), "accuracy": acc, "accuracy_interval": [acc_low, acc_high],
             "seconds": seconds}
        )  # fmt: skip
    pairs = []
    for key in per_sample:
        method, ratio = key.rsplit(" ", 1)
        if method == "importance":
            continue
        mine = per_sample.get(f"importance {ratio}")
        if mine is None:
            continue
        p = paired(mine, per_sample[key], "bootstrap", index=index)
        word = {"beats": "closer", "worse": "farther", "on par": "on par"}[p["verdict"]]
        pairs.append({"ratio": float(ratio), "other": method, **p, "verdict": word})
    pairs.sort(key=lambda p: (p["ratio"], p["other"]))
    return {"rows": rows, "paired": pairs, "psnr_per_sample": per_sample}


def _with_interval(value: float, bounds: list[float], fmt: str = "{:.2f}") -> str:
    return f"{fmt.format(value)} [{fmt.format(bounds[0])}, {fmt.format(bounds[1])}]"


def _real_digits(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from shared.builtin_data import load_digits_tensors

    return load_digits_tensors("val", size, channels=1)


def save_grid(grid: dict[str, torch.Tensor], labels: torch.Tensor, path: Path) -> None:
    """Rows: each entry of `grid`; columns: the first sample of each class (and the row
    names in a .txt beside it)."""
    from shared.images import save_image
    from tomerge_cli.fidelity import image_grid
    from tomerge_cli.references import CLASSES

    first = [int((labels == c).nonzero()[0]) for c in range(CLASSES)]
    rows = [[imgs[i].expand(3, -1, -1) for i in first] for imgs in grid.values()]
    save_image(image_grid(rows), path)
    save_text(path.with_suffix(".txt"), "rows: " + ", ".join(grid) + "; columns: digits 0-9\n")


if __name__ == "__main__":
    main()
