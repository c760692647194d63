"""S2C-Conv: the convolutional instance of S2CFormer as a compressai `CompressionModel`.

S2CFormer's block replaces spatial attention by a cheap spatial operator followed by a
channel-aggregation FFN. In S2C-Conv the spatial operator is a depth-wise convolution:

    x = x + DWConv_k(x)            (spatial interaction, per channel)
    x = x + W2 GELU(W1 x)          (channel aggregation, 1x1 convs, expansion r)

Analysis: 3 stages, each a stride-2 convolution then `blocks[i]` S2C blocks; the last
stage ends with a stride-2 projection to the latent (M channels), /16 in total.
Synthesis mirrors it. The entropy model is the mean-scale hyperprior of Minnen et al.
(compressai's `MeanScaleHyperprior`), so forward, `update()`, `compress()` and
`decompress()` are compressai's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from compressai.models import MeanScaleHyperprior
from compressai.models.utils import conv, deconv
from torch import Tensor, nn

__all__ = ["S2CBlock", "S2CConv", "s2c_config"]


class S2CBlock(nn.Module):
    """Depth-wise conv spatial operator, then an FFN channel aggregator, both residual."""

    def __init__(self, channels: int, ffn_ratio: float = 2.0, kernel_size: int = 5) -> None:
        super().__init__()
        hidden = max(1, int(round(channels * ffn_ratio)))
        self.spatial = nn.Conv2d(
            channels, channels, kernel_size, padding=kernel_size // 2, groups=channels
        )
        self.ffn = nn.Sequential(
            nn.Conv2d(channels, hidden, 1), nn.GELU(), nn.Conv2d(hidden, channels, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.spatial(x)
        return x + self.ffn(x)


def s2c_config(
    widths: Sequence[int] = (64, 96, 128),
    blocks: Sequence[int] = (1, 2, 2),
    ffn_ratio: float = 2.0,
    M: int = 192,
    N: int = 128,
    kernel_size: int = 5,
    hidden: Sequence[Sequence[int]] | None = None,
) -> dict[str, Any]:
    """A JSON-able S2C-Conv configuration (what a checkpoint stores to rebuild the model).

    `hidden` optionally gives each block's FFN width explicitly (a pruned student)."""
    if len(widths) != 3 or len(blocks) != 3:
        raise ValueError("S2C-Conv has 3 analysis stages: give 3 widths and 3 block counts")
    cfg: dict[str, Any] = {
        "widths": [int(w) for w in widths],
        "blocks": [int(b) for b in blocks],
        "ffn_ratio": float(ffn_ratio),
        "M": int(M),
        "N": int(N),
        "kernel_size": int(kernel_size),
    }
    if hidden is not None:
        cfg["hidden"] = [[int(h) for h in stage] for stage in hidden]
    return cfg


def _blocks(
    channels: int, count: int, ffn_ratio: float, k: int, hidden: Sequence[int] | None
) -> list[nn.Module]:
    out = []
    for i in range(count):
        block = S2CBlock(channels, ffn_ratio, k)
        if hidden is not None:  # explicit FFN widths of a pruned student
            block.ffn[0] = nn.Conv2d(channels, hidden[i], 1)
            block.ffn[2] = nn.Conv2d(hidden[i], channels, 1)
        out.append(block)
    return out


class S2CConv(MeanScaleHyperprior):
    """S2C-Conv image codec; `config` are the keyword arguments of `s2c_config` (stage
    widths, blocks, FFN ratio, `M` the latent width, `N` the hyperprior width, ...)."""

    def __init__(self, **config: Any) -> None:
        cfg = s2c_config(**config)
        super().__init__(N=cfg["N"], M=cfg["M"])
        self.config = cfg
        M, ffn_ratio = cfg["M"], cfg["ffn_ratio"]
        c1, c2, c3 = self.config["widths"]
        d1, d2, d3 = self.config["blocks"]
        k = self.config["kernel_size"]
        # hidden widths per stage: analysis stages 0..2 then synthesis stages 0..2
        hid = self.config.get("hidden") or [None] * 6
        self.g_a = nn.Sequential(
            nn.Sequential(conv(3, c1), *_blocks(c1, d1, ffn_ratio, k, hid[0])),
            nn.Sequential(conv(c1, c2), *_blocks(c2, d2, ffn_ratio, k, hid[1])),
            nn.Sequential(conv(c2, c3), *_blocks(c3, d3, ffn_ratio, k, hid[2]), conv(c3, M)),
        )
        self.g_s = nn.Sequential(
            nn.Sequential(deconv(M, c3), *_blocks(c3, d3, ffn_ratio, k, hid[3])),
            nn.Sequential(deconv(c3, c2), *_blocks(c2, d2, ffn_ratio, k, hid[4])),
            nn.Sequential(deconv(c2, c1), *_blocks(c1, d1, ffn_ratio, k, hid[5]), deconv(c1, 3)),
        )
