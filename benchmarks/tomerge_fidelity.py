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
attention head, see tomerge_cli.references); with them it is trained here with the
recipe below (eight heads) and cached under $TOOLKIT_CACHE (default ./.cache).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
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
CLASSES = 10
EMBED = 64
# the vbp demo's / hello's digits classifier (cached, trained on builtin:digits)
CLASSIFIER = (
    "vit_tiny_patch16_224",
    {"img_size": 16, "patch_size": 4, "num_classes": 10, "embed_dim": 96, "depth": 6,
     "num_heads": 3},
    {"epochs": 30, "lr": 2e-3},
)  # fmt: skip


class DigitsDiffusion(nn.Module):
    """UNet2DConditionModel with a class embedding as its one-token 'text' (class 10 = null)."""

    def __init__(self, size: int = SIZE) -> None:
        super().__init__()
        from diffusers import UNet2DConditionModel

        self.size = size
        self.unet = UNet2DConditionModel(
            sample_size=size,
            in_channels=1,
            out_channels=1,
            block_out_channels=(16, 32, 32),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=EMBED,
            attention_head_dim=8,
            norm_num_groups=8,
        )
        self.classes = nn.Embedding(CLASSES + 1, EMBED)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, self.classes(y)[:, None]).sample


def train(steps: int, batch: int, size: int, seed: int = 0) -> DigitsDiffusion:
    from diffusers import DDPMScheduler

    from shared.builtin_data import load_digits_tensors

    torch.manual_seed(seed)
    x, y = load_digits_tensors("train", size, channels=1)
    x = x * 2 - 1
    model = DigitsDiffusion(size)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    lr = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=steps, pct_start=0.05)
    start = time.time()
    for step in range(steps):
        idx = torch.randint(len(x), (batch,))
        x0, cls = x[idx], y[idx].clone()
        cls[torch.rand(batch) < 0.1] = CLASSES  # CFG dropout
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (batch,))
        loss = F.mse_loss(model(sched.add_noise(x0, noise, t), t, cls), noise)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr.step()
        if step % 100 == 0:
            print(f"step {step}/{steps} loss {loss.item():.4f} ({time.time() - start:.0f} s)")
    return model.eval()


def trained_model(steps: int, batch: int, size: int) -> tuple[DigitsDiffusion, float]:
    from safetensors.torch import load_file, save_file

    cache = Path(os.environ.get("TOOLKIT_CACHE") or REPO / ".cache") / "tomerge"
    suffix = "" if size == SIZE else f"-{size}px"
    path = cache / f"digits-unet-{steps}x{batch}{suffix}.safetensors"
    model = DigitsDiffusion(size).eval()
    if path.exists():
        model.load_state_dict(load_file(path))
        return model, 0.0
    start = time.time()
    model = train(steps, batch, size)
    cache.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), path)
    return model, time.time() - start


@torch.inference_mode()
def sample(
    model: DigitsDiffusion, labels: torch.Tensor, seed: int, steps: int, guidance: float
) -> torch.Tensor:
    """DDIM with classifier-free guidance as a pipeline does it: one batch [uncond; cond]."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    sched.set_timesteps(steps)
    size = model.size
    x = torch.randn(len(labels), 1, size, size, generator=torch.Generator().manual_seed(seed))
    null = torch.full_like(labels, CLASSES)
    for t in sched.timesteps:
        eps_u, eps_c = model(torch.cat([x, x]), t, torch.cat([null, labels])).chunk(2)
        x = sched.step(eps_u + guidance * (eps_c - eps_u), t, x).prev_sample
    return ((x + 1) / 2).clamp(0, 1)


def classifier() -> tuple[nn.Module, Any]:
    from timm.data import resolve_data_config

    from shared.reference import load_reference, reference_classifier

    os.environ.setdefault("TOOLKIT_CACHE", str(REPO / ".cache"))
    name, kwargs, recipe = CLASSIFIER
    path, meta = reference_classifier(name, kwargs, **recipe)
    model = load_reference(path)
    cfg = resolve_data_config({}, model=model)
    mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(cfg["std"]).view(1, 3, 1, 1)

    @torch.inference_mode()
    def predict(imgs: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(imgs, size=(16, 16), mode="bilinear", antialias=True)
        return model((x.expand(-1, 3, -1, -1) - mean) / std).argmax(1)

    return predict, meta


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
    from tomerge_cli.fidelity import psnr, ssim
    from tomerge_cli.references import RECIPES, reference_model

    shipped = f"digits-unet-{args.size}px"
    if args.train_steps is None and not args.quick and shipped in RECIPES:
        # the shipped reference (references/tomerge/, python -m tomerge_cli.references NAME)
        model, train_s = reference_model(shipped), 0.0
        train_steps, batch = RECIPES[shipped].steps, RECIPES[shipped].batch
    else:
        batch = args.batch
        train_steps = args.train_steps or (100 if args.quick else 500)
        model, train_s = trained_model(train_steps, args.batch, args.size)
    predict, cls_meta = classifier()
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
            tomerge_cli.apply_patch(
                model.unet, ratio=ratio, mode=mode, prune_steps=args.prune_steps
            )
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
    _save_grid(grid, labels, RESULTS / "tomerge" / f"{name}.png")
    print(path.read_text())


def _real_digits(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from shared.builtin_data import load_digits_tensors

    return load_digits_tensors("val", size, channels=1)


def _save_grid(grid: dict[str, torch.Tensor], labels: torch.Tensor, path: Path) -> None:
    from shared.images import save_image
    from tomerge_cli.fidelity import image_grid

    first = [int((labels == c).nonzero()[0]) for c in range(CLASSES)]
    rows = [[imgs[i].expand(3, -1, -1) for i in first] for imgs in grid.values()]
    save_image(image_grid(rows), path)
    save_text(path.with_suffix(".txt"), "rows: " + ", ".join(grid) + "; columns: digits 0-9\n")


if __name__ == "__main__":
    main()
