"""Fidelity of a merged image to the unmerged one from the same seed, and image grids."""

from __future__ import annotations

from typing import Any

import torch


def psnr(img: torch.Tensor, ref: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1], (N, 3, H, W); inf when identical."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    if torch.equal(img, ref):
        return float("inf")
    return float(peak_signal_noise_ratio(img, ref, data_range=1.0))


def ssim(img: torch.Tensor, ref: torch.Tensor) -> float:
    from torchmetrics.functional.image import structural_similarity_index_measure

    kernel = min(11, *(s - (1 - s % 2) for s in img.shape[-2:]))  # odd, fits small images
    return float(structural_similarity_index_measure(img, ref, data_range=1.0, kernel_size=kernel))


ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's ImageNet AlexNet, LPIPS backbone


def lpips_metric() -> tuple[Any | None, str | None]:
    """torchmetrics LPIPS (AlexNet) when torchvision's AlexNet weights are in the torch hub
    cache, else (None, why): no download is attempted (it would stall offline)."""
    from pathlib import Path

    cached = Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE
    if not cached.is_file():
        return None, f"LPIPS skipped: AlexNet weights not found at {cached}"
    try:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        return LearnedPerceptualImagePatchSimilarity(net_type="alex", normalize=True), None
    except Exception as exc:  # noqa: BLE001 (a broken cache file: report, do not fail)
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        return None, f"LPIPS skipped: {reason}"


def lpips(metric: Any, img: torch.Tensor, ref: torch.Tensor) -> float:
    return float(metric(img, ref))


def image_grid(rows: list[list[torch.Tensor]], pad: int = 2) -> torch.Tensor:
    """(3, H', W') grid of equally sized (3, H, W) images, one list per row."""
    h, w = rows[0][0].shape[-2:]
    cols = max(len(r) for r in rows)
    grid = torch.ones(3, len(rows) * (h + pad) + pad, cols * (w + pad) + pad)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[:, y : y + h, x : x + w] = img
    return grid
