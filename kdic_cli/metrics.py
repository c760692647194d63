"""Codec quality measures: PSNR and MS-SSIM on 8-bit reconstructions, bpp from bytes,
BD-rate (Bjontegaard, via the `bjontegaard` package)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["bd_rate", "bpp", "codec_cost", "ms_ssim", "psnr", "to_8bit"]


def to_8bit(x: Tensor) -> Tensor:
    """Round to the 256 levels an image file stores (still float in [0, 1])."""
    return (x.clamp(0, 1) * 255).round() / 255


def psnr(x: Tensor, x_hat: Tensor) -> float:
    """PSNR in dB between 8-bit versions of the two images."""
    mse = torch.mean((to_8bit(x) - to_8bit(x_hat)) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


def ms_ssim(x: Tensor, x_hat: Tensor) -> float | None:
    """MS-SSIM on 8-bit versions; None for images too small (5 scales need > 160 px)."""
    from pytorch_msssim import ms_ssim as _ms_ssim

    if min(x.shape[-2:]) <= 160:
        return None
    a, b = to_8bit(x), to_8bit(x_hat)
    if a.dim() == 3:
        a, b = a.unsqueeze(0), b.unsqueeze(0)
    return float(_ms_ssim(a, b, data_range=1.0))


def rd_cost(bpp_value: float, psnr_db: float, lmbda: float) -> float:
    """The codec's training objective R + lambda * 255^2 * MSE on one image, from measured
    bits and the 8-bit PSNR (MSE on [0, 1] = 10^(-PSNR/10)). At a fixed lambda it ranks two
    codecs even when their rates do not overlap, where BD-rate is undefined."""
    return bpp_value + lmbda * 255**2 * 10 ** (-psnr_db / 10)


def bpp(num_bytes: int, height: int, width: int) -> float:
    """Bits per pixel of a compressed file."""
    return num_bytes * 8 / (height * width)


MIN_OVERLAP = 0.75


def psnr_overlap(psnr_a: Sequence[float], psnr_b: Sequence[float]) -> float:
    """Share of the union of two curves' PSNR ranges that both cover (0 to 1)."""
    lo, hi = max(min(psnr_a), min(psnr_b)), min(max(psnr_a), max(psnr_b))
    span = max(max(psnr_a), max(psnr_b)) - min(min(psnr_a), min(psnr_b))
    return max(hi - lo, 0.0) / span if span > 0 else 1.0


def bd_rate(
    rate_anchor: Sequence[float], psnr_anchor: Sequence[float],
    rate_test: Sequence[float], psnr_test: Sequence[float],
) -> float | None:  # fmt: skip
    """BD-rate (%) of the test curve against the anchor (negative = fewer bits); None (n/a)
    when the curves have too few points or their PSNR ranges overlap less than
    `MIN_OVERLAP` of their union (bjontegaard's own default bound, which it only warns
    about): outside the overlap the integral extrapolates and the number means little."""
    import bjontegaard

    if len(rate_anchor) < 2 or len(rate_anchor) != len(rate_test):
        return None
    if psnr_overlap(psnr_anchor, psnr_test) < MIN_OVERLAP:
        return None
    try:
        value = float(bjontegaard.bd_rate(
            list(rate_anchor), list(psnr_anchor), list(rate_test), list(psnr_test),
            method="akima", require_matching_points=True, min_overlap=MIN_OVERLAP,
        ))  # fmt: skip
    except (ValueError, AssertionError, ZeroDivisionError):
        return None
    return value if math.isfinite(value) else None  # nan: the curves do not overlap


def codec_cost(model: torch.nn.Module, size: int = 256) -> dict[str, float]:
    """Parameters and kMAC per pixel of a whole codec pass on a size x size image."""
    from shared.profiling import count_macs, count_params

    x = torch.rand(1, 3, size, size)
    return {"params": count_params(model), "kmac_per_px": count_macs(model, x) / size**2 / 1e3}
