"""RDED-style synthetic images: crop real images at random, keep the crops the teacher finds
most typical of their class (lowest cross-entropy), tile them 2x2 into one image. An optional
image update then nudges the pixels so projector and teacher agree more."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms.v2 import functional as TF

from hello_cli.augment import resized_crop_box


def random_crops(
    image: torch.Tensor, count: int, size: int, scale: tuple[float, float], gen: torch.Generator
) -> torch.Tensor:
    """`count` random resized crops (count, 3, size, size) of one image (3, H, W)."""
    h, w = image.shape[-2:]
    crops = []
    for _ in range(count):
        top, left, ch, cw = resized_crop_box(h, w, scale, gen)
        crops.append(TF.resized_crop(image, top, left, ch, cw, [size, size], antialias=True))
    return torch.stack(crops).clamp_(0.0, 1.0)


def lowest_ce(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k lowest cross-entropies, lowest first."""
    return scores.argsort()[:k]


@torch.no_grad()
def teacher_ce(
    teacher: nn.Module, crops: torch.Tensor, label: int, batch: int = 256
) -> torch.Tensor:
    """Per-crop cross-entropy of the teacher against the crop's class."""
    logits = torch.cat([teacher(c).float() for c in crops.split(batch)])
    return F.cross_entropy(logits, torch.full((len(crops),), label), reduction="none")


def tile_2x2(patches: torch.Tensor) -> torch.Tensor:
    """(4k, C, h, w) -> (k, C, 2h, 2w): patches 4i..4i+3 fill image i row by row."""
    k = len(patches) // 4
    p = patches[: 4 * k].view(k, 2, 2, *patches.shape[1:])  # k, row, col, C, h, w
    return p.permute(0, 3, 1, 4, 2, 5).reshape(
        k, patches.shape[1], 2 * patches.shape[2], 2 * patches.shape[3]
    )


def synthesize_class(
    teacher: nn.Module,
    real: torch.Tensor,
    label: int,
    ipc: int,
    *,
    image_size: int,
    crops_per_image: int = 5,
    crop_scale: tuple[float, float] = (0.5, 1.0),
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`ipc` synthetic images (ipc, 3, S, S) of one class and the CE of the patches used.

    RDED: each real image's best crop (lowest teacher CE) competes with the other images'
    best crops; the 4 * ipc lowest-CE ones are tiled. With fewer real images than patches
    needed, every crop competes."""
    need = 4 * ipc
    per_image = [
        random_crops(img, crops_per_image, image_size // 2, crop_scale, gen) for img in real
    ]
    scores = [teacher_ce(teacher, crops, label) for crops in per_image]
    if len(real) >= need:
        best = [s.argmin() for s in scores]
        candidates = torch.stack([c[i] for c, i in zip(per_image, best, strict=True)])
        cand_scores = torch.stack([s[i] for s, i in zip(scores, best, strict=True)])
    else:
        candidates, cand_scores = torch.cat(per_image), torch.cat(scores)
    if len(candidates) < need:
        reps = -(-need // len(candidates))
        candidates, cand_scores = candidates.repeat(reps, 1, 1, 1), cand_scores.repeat(reps)
    keep = lowest_ce(cand_scores, need)
    # spread the best patches over the images instead of giving image 0 all four of them
    keep = keep.view(4, ipc).T.reshape(-1)
    return tile_2x2(candidates[keep]), cand_scores[keep]


def refine_images(
    images: torch.Tensor,
    teacher: nn.Module,
    projector: nn.Module,
    steps: int,
    lr: float = 0.01,
) -> torch.Tensor:
    """Adam steps on the pixels (kept in [0, 1]) to reduce MSE(projector, teacher) on those
    images, on the toolkit's training loop (progress bar "image update", a NaN loss stops)."""
    from shared.train import Trainer

    x = images.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    trainer = Trainer(steps, device=x.device, description="image update")

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        loss = F.mse_loss(projector(x), teacher(x).float())
        trainer.optimize(loss, opt)
        with torch.no_grad():
            x.clamp_(0.0, 1.0)
        return {"loss": loss}

    trainer.fit(step_fn)
    return x.detach()
