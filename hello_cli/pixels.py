"""Every model here takes images in [0, 1] at any size: the adapter resizes them to the
model's input size and applies its own mean/std. Synthetic images, augmentation and
label generation can then all happen in one pixel space, whatever each model expects."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class PixelInput(nn.Module):
    """`model(normalise(resize(x)))` for x in [0, 1], shape (B, 3, H, W)."""

    def __init__(
        self,
        model: nn.Module,
        image_size: int | None,
        mean: Sequence[float],
        std: Sequence[float],
    ) -> None:
        super().__init__()
        self.model = model
        self.image_size = image_size
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        if size is not None and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if x.shape[1] != self.mean.shape[1]:
            x = x.mean(1, keepdim=True)  # a 1-channel model fed RGB
        return self.model((x - self.mean) / self.std)


def timm_pixel_input(model: nn.Module, default_size: int | None = None) -> PixelInput:
    """A timm model behind a PixelInput: its fixed input size when it has one (ViTs built
    with `img_size`), else `default_size` (convnets run at any size)."""
    from shared.timm_data import data_config

    cfg = data_config(model)
    fixed = getattr(getattr(model, "patch_embed", None), "img_size", None)
    size = (fixed if isinstance(fixed, int) else fixed[0]) if fixed is not None else default_size
    chans = cfg["input_size"][0]
    return PixelInput(model, size, tuple(cfg["mean"])[:chans], tuple(cfg["std"])[:chans])
