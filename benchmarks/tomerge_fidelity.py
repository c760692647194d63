"""tomerge fidelity on a diffusion model that has learned something: a small class-conditional
pixel-space UNet (diffusers UNet2DConditionModel, attention at full resolution, CFG
dropout) trained here on builtin:digits at 16x16 (the digits are 8x8 originals; at 32x32 a
training step was ~10x slower on this shared 2-core CPU and did not fit the budget), then
sampled unmerged, with our ToMe baseline (mode=tome) and with importance merging at ratios
0.3 / 0.5 / 0.7.

    python -m benchmarks.tomerge_fidelity [--quick] [--train-steps 1500] [--per-class 20]

Reported per method and ratio: PSNR / SSIM of each sample to the unmerged sample from the
same seed, and the accuracy of a digits classifier (the cached reference ViT) on the
samples: does the image still show the requested class? Without --train-steps / --quick the
UNet is the shipped reference (references/tomerge/digits-unet-<size>px.safetensors, one
attention head, see tomerge_cli.references); with them it is trained here with the recipe
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

    import tomerge_cli
    from tomerge_cli.demo import digits_classifier, sample
    from tomerge_cli.fidelity import psnr, ssim
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
    base_acc = (predict(base) == labels).float().mean().item() * 100
    rows = [("unmerged", "-", "inf", 1.0, base_acc, base_s)]
    grid = {"unmerged": base}
    data_rows = [{"method": "unmerged", "ratio": 0.0, "accuracy": base_acc, "seconds": base_s}]
    real, real_labels = _real_digits(args.size)
    real_acc = (predict(real) == real_labels).float().mean().item() * 100
    for ratio in args.ratios:
        for mode in ("tome", "importance"):
            # fidelity of merging itself: merge even where the cost model would skip it
            tomerge_cli.apply_patch(
                model.unet, ratio=ratio, mode=mode, prune_steps=args.prune_steps,
                skip_unprofitable=False,
            )  # fmt: skip
            imgs, sec = run_all()
            tomerge_cli.remove_patch(model.unet)
            per_img_psnr = [psnr(imgs[i : i + 1], base[i : i + 1]) for i in range(len(imgs))]
            row = {
                "method": mode,
                "ratio": ratio,
                "psnr": sum(per_img_psnr) / len(per_img_psnr),
                "ssim": ssim(imgs, base),
                "accuracy": (predict(imgs) == labels).float().mean().item() * 100,
                "seconds": sec,
            }
            data_rows.append(row)
            rows.append((mode, ratio, row["psnr"], row["ssim"], row["accuracy"], row["seconds"]))
            grid[f"{mode} {ratio}"] = imgs
    results["rows"] = data_rows
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
                    "PSNR to unmerged (dB)",
                    "SSIM",
                    "class accuracy (%)",
                    "seconds (all samples)",
                ],
                rows,
            )  # fmt: skip
            + f"\n\nThe classifier (reference ViT, val top-1 {cls_meta.get('val_top1'):.1f}% "
            f"at 16 px) scores {real_acc:.1f}% on the real validation digits resized the "
            f"same way ({args.size} px in, 16 px to the classifier). PSNR averages the "
            "per-image PSNR.",
        )
    ]
    name = "fidelity-quick" if args.quick else "fidelity"
    if args.size != SIZE:
        name += f"-{args.size}px"
    if args.prune_steps != 2:
        name += f"-prune{args.prune_steps}"
    name = args.name or name
    path = write_results(
        "tomerge", name, "tomerge fidelity: digits diffusion UNet, tome vs importance",
        sections, results,
    )  # fmt: skip
    save_grid(grid, labels, RESULTS / "tomerge" / f"{name}.png")
    print(path.read_text())


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
