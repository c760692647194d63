"""Student-side augmentation with explicit parameters: random resized crop, horizontal flip
and CutMix, drawn per epoch from (seed, epoch) only.

Keeping the parameters explicit is what lets the stored-label baseline (SRe2L/FKD) replay
exactly the augmentations its labels were computed on, and makes a resumed or distributed
run see the same batches.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torchvision.transforms.v2 import functional as TF


@dataclass
class AugConfig:
    out_size: int = 32
    crop_scale: tuple[float, float] = (0.25, 1.0)
    flip: bool = True
    cutmix: bool = True


@dataclass
class BatchAug:
    """One batch: which images, their crop boxes (top, left, h, w) and flips, and CutMix
    (each image pasted with `mix_perm`'s image inside `mix_box`)."""

    indices: torch.Tensor  # (B,) int64
    boxes: torch.Tensor  # (B, 4) int64
    flips: torch.Tensor  # (B,) bool
    mix_perm: torch.Tensor  # (B,) int64, positions within the batch
    mix_box: torch.Tensor  # (4,) int64, in output pixels; h = w = 0 when off

    def mix_weight(self, out_size: int) -> float:
        """Share of the image still from the original (CutMix's lambda)."""
        return 1.0 - float(self.mix_box[2] * self.mix_box[3]) / (out_size * out_size)


def resized_crop_box(
    height: int, width: int, scale: tuple[float, float], gen: torch.Generator
) -> list[int]:
    """RandomResizedCrop's box (ratio 3/4..4/3), drawn from `gen`."""
    area = height * width
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand(1, generator=gen).item())
        ratio = math.exp(
            log_ratio[0] + (log_ratio[1] - log_ratio[0]) * torch.rand(1, generator=gen).item()
        )
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return [top, left, h, w]
    return [0, 0, height, width]


def plan_epoch(
    num_images: int,
    image_hw: tuple[int, int],
    batch_size: int,
    cfg: AugConfig,
    seed: int,
    epoch: int,
) -> list[BatchAug]:
    """The epoch's batches: a seeded shuffle and every augmentation parameter."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(num_images, generator=gen)
    plans = []
    for chunk in order.split(batch_size):
        n = len(chunk)
        boxes = torch.tensor([resized_crop_box(*image_hw, cfg.crop_scale, gen) for _ in range(n)])
        flips = (
            (torch.rand(n, generator=gen) < 0.5) if cfg.flip else torch.zeros(n, dtype=torch.bool)
        )
        perm = torch.randperm(n, generator=gen)
        mix_box = torch.zeros(4, dtype=torch.long)
        if cfg.cutmix and n > 1:
            lam = float(torch.rand(1, generator=gen))  # CutMix's Beta(1, 1) is uniform
            s = cfg.out_size
            cut = int(s * math.sqrt(1.0 - lam))
            cy, cx = (int(v) for v in torch.randint(0, s, (2,), generator=gen))
            top, left = max(cy - cut // 2, 0), max(cx - cut // 2, 0)
            bottom, right = min(cy + cut // 2, s), min(cx + cut // 2, s)
            mix_box = torch.tensor([top, left, bottom - top, right - left])
        plans.append(BatchAug(chunk, boxes, flips, perm, mix_box))
    return plans


def apply_aug(images: torch.Tensor, plan: BatchAug, out_size: int) -> torch.Tensor:
    """The augmented batch (B, 3, out, out) from the whole image set (N, 3, H, W)."""
    crops = []
    for idx, (top, left, h, w), flip in zip(
        plan.indices, plan.boxes.tolist(), plan.flips, strict=True
    ):
        crop = TF.resized_crop(
            images[int(idx)], top, left, h, w, [out_size, out_size], antialias=True
        )
        crops.append(crop.flip(-1) if flip else crop)
    batch = torch.stack(crops)
    top, left, h, w = plan.mix_box.tolist()
    if h > 0 and w > 0:
        batch[:, :, top : top + h, left : left + w] = batch[plan.mix_perm][
            :, :, top : top + h, left : left + w
        ]
    return batch.clamp_(0.0, 1.0)


def mixed_targets(
    labels: torch.Tensor, plan: BatchAug, num_classes: int, out_size: int
) -> torch.Tensor:
    """CutMix's hard targets: lambda * onehot(y) + (1 - lambda) * onehot(y of the partner)."""
    y = labels[plan.indices]
    onehot = torch.nn.functional.one_hot(y, num_classes).float()
    lam = plan.mix_weight(out_size)
    return lam * onehot + (1.0 - lam) * onehot[plan.mix_perm]


class StepPlans:
    """The batch of a global training step from per-epoch plans (`plans(epoch)`): step s
    (1-based) takes local batch (s - 1) mod per_epoch of epoch (s - 1) // per_epoch, so a
    step's data depends on the step only and a resumed run sees exactly the batches the
    uninterrupted one would have. Under DDP each of `world` ranks takes every world-th batch
    of the shared plan (local batch i is plan entry i * world + rank)."""

    def __init__(
        self, plans: Callable[[int], list[BatchAug]], *, world: int = 1, rank: int = 0
    ) -> None:
        self.plans = plans
        self.world, self.rank = world, rank
        self._epoch = 0
        self._cached = plans(0)
        self.per_epoch = len(self._cached) // world
        if self.per_epoch < 1:
            raise ValueError("an epoch has fewer batches than there are processes")

    def __call__(self, step: int) -> tuple[int, int, BatchAug]:
        """(epoch, index in the epoch's plan, the batch's plan) of `step`."""
        epoch, local = divmod(step - 1, self.per_epoch)
        if epoch != self._epoch:
            self._epoch, self._cached = epoch, self.plans(epoch)
        index = local * self.world + self.rank
        return epoch, index, self._cached[index]
