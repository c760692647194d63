"""LiDiff's noise predictor on spconv: a sparse-conv U-Net over voxelised points, conditioned
on the partial scan.

Every voxel of every level takes the feature of its nearest condition voxel (same level,
same metric grid), mixes it with the time embedding, and multiplies its own features by
the result. Per-point outputs come from the finest voxel features plus the point's offset
inside its voxel. Classifier-free guidance drops the condition (a learned null feature).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

_PATCHED = False
# torch 2.14 logs a one-time note on its own is_fx_tracing API during the first forward;
# it is not about this model and would only clutter the console
logging.getLogger("torch.fx._symbolic_trace").setLevel(logging.ERROR)


def patch_spconv_for_cpu() -> None:
    """Make spconv's CPU build usable; does nothing when CUDA is present.

    - The backward pass asks for a CUDA stream; without CUDA it is irrelevant, so
      `get_current_stream` returns 0.
    - The native convolution returns wrong features for some inputs when torch runs more
      than one intra-op thread (about 1 in 5 random submanifold convolutions with 2
      threads, none with 1; tests/scorelidar/test_model.py): correctness first, so torch
      is set to one thread whenever a sparse model is built on CPU.
    """
    global _PATCHED
    if torch.cuda.is_available():
        return
    if not _PATCHED:
        import spconv.pytorch.hash as sp_hash
        import spconv.pytorch.ops as sp_ops

        sp_ops.get_current_stream = lambda: 0
        sp_hash.get_current_stream = lambda: 0
        _PATCHED = True
    torch.set_num_threads(1)


def conv_algo():
    """ConvAlgo.Native on CPU (the only one the CPU build has); spconv's default on CUDA."""
    from spconv.core import ConvAlgo

    return None if torch.cuda.is_available() else ConvAlgo.Native


@dataclass
class ModelConfig:
    """Architecture and point budget; stored in every checkpoint."""

    channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    decoder: list[int] = field(default_factory=lambda: [32, 16])
    blocks: int = 1
    cond_channels: int = 32
    time_dim: int = 32
    voxel: float = 0.1
    n_cond: int = 2048
    repeat: int = 4
    radius: float = 50.0

    def __post_init__(self) -> None:
        if len(self.decoder) != len(self.channels) - 1:
            raise ValueError("decoder needs one width per level below the top")

    def to_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, ModelConfig] = {
    # trains on a 2-core CPU in minutes: 2,048 scan points x4 -> 8,192 points, and a 25 m
    # radius so that 8k points still cover the scene (LiDiff: 180k points over 50 m)
    "small": ModelConfig(radius=25.0),
    "tiny": ModelConfig(
        channels=[8, 16], decoder=[8], cond_channels=8, time_dim=8, n_cond=256, repeat=2
    ),
    # LiDiff's published sizes: 5 cm voxels, MinkUNet widths 32..256, 18k points x10
    "lidiff": ModelConfig(
        channels=[32, 32, 64, 128, 256],
        decoder=[256, 128, 96, 96],
        blocks=2,
        cond_channels=96,
        time_dim=96,
        voxel=0.05,
        n_cond=18000,
        repeat=10,
    ),
}


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    """Two submanifold 3x3x3 convolutions with LayerNorm (independent of batch composition,
    so teacher, fake score and student behave the same in train and eval mode)."""

    def __init__(self, cin: int, cout: int, key: str) -> None:
        super().__init__()
        import spconv.pytorch as spconv

        algo = conv_algo()
        self.conv1 = spconv.SubMConv3d(cin, cout, 3, indice_key=key, algo=algo, bias=False)
        self.conv2 = spconv.SubMConv3d(cout, cout, 3, indice_key=key, algo=algo, bias=False)
        self.norm1, self.norm2 = nn.LayerNorm(cout), nn.LayerNorm(cout)
        self.skip = nn.Linear(cin, cout) if cin != cout else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x):
        h = self.conv1(x)
        h = h.replace_feature(self.act(self.norm1(h.features)))
        h = self.conv2(h)
        return h.replace_feature(self.act(self.norm2(h.features) + self.skip(x.features)))


def _stage(cin: int, cout: int, blocks: int, key: str) -> nn.Sequential:
    return nn.Sequential(*[ResBlock(cin if i == 0 else cout, cout, key) for i in range(blocks)])


def voxelize(
    points: torch.Tensor, batch: torch.Tensor, origin: torch.Tensor, voxel: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer voxel keys (M, 4: batch, i, j, k) and each point's voxel index (N,)."""
    coords = torch.floor((points - origin[batch]) / voxel).long()
    keys = torch.cat([batch[:, None].long(), coords], dim=1)
    uniq, inverse = torch.unique(keys, dim=0, return_inverse=True)
    return uniq, inverse


def scatter_mean(values: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    out = values.new_zeros(size, values.shape[1]).index_add_(0, index, values)
    count = values.new_zeros(size).index_add_(0, index, torch.ones_like(index, dtype=values.dtype))
    return out / count.clamp_min(1)[:, None]


def nearest_voxel(query: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """For each query voxel key (M, 4), the index of the nearest ref voxel of the same batch
    element (KD-tree on CPU; indices carry no gradient)."""
    from scipy.spatial import cKDTree

    # a large offset per batch element keeps neighbours inside their own scene
    def lift(keys: torch.Tensor) -> np.ndarray:
        arr = keys.detach().cpu().numpy().astype(np.float64)
        arr[:, 1] += arr[:, 0] * 1e7
        return arr[:, 1:]

    idx = cKDTree(lift(ref)).query(lift(query), workers=1)[1]
    return torch.as_tensor(idx, device=query.device, dtype=torch.long)


class ConditionMixer(nn.Module):
    """gate = MLP([nearest condition feature, time embedding]); features *= gate."""

    def __init__(self, cond: int, time: int, out: int) -> None:
        super().__init__()
        self.null = nn.Parameter(torch.zeros(cond))  # the "empty condition" of CFG
        self.mlp = nn.Sequential(nn.Linear(cond + time, out), nn.SiLU(), nn.Linear(out, out))

    def forward(self, feats, cond_feats, time_emb, drop):
        cond_feats = torch.where(drop[:, None], self.null.expand_as(cond_feats), cond_feats)
        return feats * self.mlp(torch.cat([cond_feats, time_emb], dim=1))


class CompletionUNet(nn.Module):
    """eps_hat(x_t, t | scan) for every point of x_t."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        import spconv.pytorch as spconv

        patch_spconv_for_cpu()
        self.config = c = config
        algo = conv_algo()
        levels = len(c.channels)
        self.time_mlp = nn.Sequential(
            nn.Linear(c.time_dim, c.time_dim), nn.SiLU(), nn.Linear(c.time_dim, c.time_dim)
        )
        # condition encoder: one stage per level at the same strides as the U-Net
        self.cond_in = nn.Linear(6, c.cond_channels)
        self.cond_stages = nn.ModuleList(
            [_stage(c.cond_channels, c.cond_channels, 1, f"c{i}") for i in range(levels)]
        )
        self.cond_down = nn.ModuleList(
            [
                spconv.SparseConv3d(
                    c.cond_channels,
                    c.cond_channels,
                    2,
                    2,
                    indice_key=f"cd{i}",
                    algo=algo,
                    bias=False,
                )
                for i in range(levels - 1)
            ]
        )
        self.point_in = nn.Linear(6, c.channels[0])
        self.enc = nn.ModuleList()
        self.down = nn.ModuleList()
        self.enc_mix = nn.ModuleList()
        for i, ch in enumerate(c.channels):
            cin = c.channels[0] if i == 0 else c.channels[i - 1]
            self.enc.append(_stage(cin, ch, c.blocks, f"s{i}"))
            self.enc_mix.append(ConditionMixer(c.cond_channels, c.time_dim, ch))
            if i < levels - 1:
                self.down.append(
                    spconv.SparseConv3d(ch, ch, 2, 2, indice_key=f"d{i}", algo=algo, bias=False)
                )
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        self.dec_mix = nn.ModuleList()
        below = c.channels[-1]
        for i in reversed(range(levels - 1)):  # decoder level i restores encoder level i
            width = c.decoder[levels - 2 - i]
            self.up.append(
                spconv.SparseInverseConv3d(
                    below, width, 2, indice_key=f"d{i}", algo=algo, bias=False
                )
            )
            self.dec.append(_stage(width + c.channels[i], width, c.blocks, f"s{i}"))
            self.dec_mix.append(ConditionMixer(c.cond_channels, c.time_dim, width))
            below = width
        self.head = nn.Sequential(
            nn.Linear(below + 6, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 3)
        )

    def _point_features(self, points, keys, inverse, origin, batch):
        centre = (keys[inverse, 1:].to(points.dtype) + 0.5) * self.config.voxel + origin[batch]
        return torch.cat([points / self.config.radius, (points - centre) / self.config.voxel], 1)

    def _sparse(self, feats, keys, batch_size):
        import spconv.pytorch as spconv

        # room for every level's stride-2 downsampling
        div = 2 ** (len(self.config.channels) - 1)
        shape = ((keys[:, 1:].max(0).values + 1 + div) // div * div).tolist()
        return spconv.SparseConvTensor(feats, keys.int().contiguous(), shape, batch_size)

    def forward(
        self,
        x_t: torch.Tensor,
        batch: torch.Tensor,
        t: torch.Tensor,
        cond: torch.Tensor,
        cond_batch: torch.Tensor,
        drop_cond: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_t (N, 3), batch (N,) in [0, B), t (B,), cond (M, 3) with cond_batch (M,),
        drop_cond (B,) bool: predicted noise (N, 3)."""
        c = self.config
        bsz = int(t.shape[0])
        drop = (
            torch.zeros(bsz, dtype=torch.bool, device=x_t.device)
            if drop_cond is None
            else drop_cond
        )
        # one metric grid for the scan and the noisy points, so their voxels line up
        lo = torch.minimum(_batch_min(x_t, batch, bsz), _batch_min(cond, cond_batch, bsz))
        origin = (torch.floor(lo / (c.voxel * 2 ** len(c.channels))) * c.voxel).detach()
        origin = origin * 2 ** len(c.channels)
        temb = self.time_mlp(timestep_embedding(t, c.time_dim))

        ckeys, cinv = voxelize(cond, cond_batch, origin, c.voxel)
        cfeat = scatter_mean(
            self._point_features(cond, ckeys, cinv, origin, cond_batch), cinv, len(ckeys)
        )
        h = self._sparse(self.cond_in(cfeat), ckeys, bsz)
        cond_levels = []
        for i, stage in enumerate(self.cond_stages):
            h = stage(h)
            cond_levels.append(h)
            if i < len(self.cond_down):
                h = self.cond_down[i](h)

        keys, inv = voxelize(x_t, batch, origin, c.voxel)
        pfeat = self._point_features(x_t, keys, inv, origin, batch)
        h = self._sparse(scatter_mean(self.point_in(pfeat), inv, len(keys)), keys, bsz)
        skips, nearest = [], []
        for i, stage in enumerate(self.enc):
            h = stage(h)
            nn_idx = nearest_voxel(h.indices, cond_levels[i].indices)
            nearest.append(nn_idx)
            b = h.indices[:, 0].long()
            h = h.replace_feature(
                self.enc_mix[i](h.features, cond_levels[i].features[nn_idx], temb[b], drop[b])
            )
            if i < len(self.down):
                skips.append(h)
                h = self.down[i](h)
        for j, (up, stage, mix) in enumerate(zip(self.up, self.dec, self.dec_mix, strict=True)):
            i = len(skips) - 1 - j
            h = up(h)
            skip = skips[i]
            h = h.replace_feature(torch.cat([h.features, skip.features], dim=1))
            h = stage(h)
            b = h.indices[:, 0].long()
            h = h.replace_feature(
                mix(h.features, cond_levels[i].features[nearest[i]], temb[b], drop[b])
            )
        # spconv keeps the input's voxel order at level 0, so `inv` indexes h.features
        return self.head(torch.cat([h.features[inv], pfeat], dim=1))


def _batch_min(points: torch.Tensor, batch: torch.Tensor, bsz: int) -> torch.Tensor:
    out = points.new_full((bsz, 3), float("inf"))
    return out.scatter_reduce(0, batch[:, None].expand(-1, 3).long(), points, "amin")


def build_model(config: ModelConfig | dict | str) -> CompletionUNet:
    if isinstance(config, str):
        config = PRESETS[config]
    elif isinstance(config, dict):
        config = ModelConfig(**config)
    return CompletionUNet(config)
