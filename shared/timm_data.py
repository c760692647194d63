"""Images for a timm model: its own preprocessing (mean/std, resize, crop) on `--data`."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from shared.builtin_data import DIGITS_SPEC
from shared.classification import ClassificationData, resolve_classification


def input_size(model: nn.Module) -> tuple[int, int, int]:
    """(C, H, W) the model expects: the patch embedding's size when set (it follows
    `img_size=` overrides), else timm's pretrained config."""
    img = getattr(getattr(model, "patch_embed", None), "img_size", None)
    chans = getattr(model, "in_chans", None) or 3
    if img is not None:
        h, w = (img, img) if isinstance(img, int) else tuple(img)
        return (int(chans), int(h), int(w))
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("input_size", (3, 224, 224)))  # type: ignore[return-value]


def data_config(model: nn.Module) -> dict[str, Any]:
    """timm's preprocessing for this model (mean/std/crop/interpolation)."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    cfg["input_size"] = input_size(model)
    return cfg


def example_input(model: nn.Module, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, *input_size(model))


def classification_data(
    spec: str, model: nn.Module, split: str, augment: bool = False
) -> ClassificationData:
    """`--data` for this model: builtin:digits resized to its input, or an image folder with
    timm's eval transform (the train split with timm's training augmentation if `augment`)."""
    cfg = data_config(model)
    chans, height, _ = cfg["input_size"]
    mean, std = tuple(cfg["mean"])[:chans], tuple(cfg["std"])[:chans]
    if spec == DIGITS_SPEC:
        train_tf = _digits_augmentation() if augment else None
        return resolve_classification(
            spec, split, height, channels=chans, mean=mean, std=std, train_transform=train_tf
        )
    from timm.data import create_transform

    eval_tf = create_transform(**cfg, is_training=False)
    train_tf = create_transform(**cfg, is_training=True) if augment else eval_tf
    return resolve_classification(
        spec, split, height, channels=chans, mean=mean, std=std,
        train_transform=train_tf, eval_transform=eval_tf,
    )  # fmt: skip


def _digits_augmentation():  # noqa: ANN202
    """Small shifts, rotations and scale changes (no flips: digits are not symmetric)."""
    from torchvision.transforms import v2

    return v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1))
