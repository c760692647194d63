"""LiDiff's optional refinement: a sparse-conv network that turns every point of a coarse
completion into `up` points (x6 by default) by predicting offsets, trained with Chamfer
distance to the ground truth."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from scorelidar_cli.model import ResBlock, conv_algo, patch_spconv_for_cpu, scatter_mean, voxelize
from scorelidar_cli.structural import chamfer_loss


@dataclass
class RefineConfig:
    channels: list[int] = field(default_factory=lambda: [16, 32])
    voxel: float = 0.1
    up: int = 6
    max_offset: float = 0.3  # metres; offsets are tanh-bounded so new points stay local
    radius: float = 25.0

    def to_dict(self) -> dict:
        return asdict(self)


class RefineNet(nn.Module):
    def __init__(self, config: RefineConfig) -> None:
        super().__init__()
        import spconv.pytorch as spconv

        patch_spconv_for_cpu()
        self.config = c = config
        c0, c1 = c.channels
        self.point_in = nn.Linear(6, c0)
        self.enc0 = ResBlock(c0, c0, "r0")
        self.down = spconv.SparseConv3d(c0, c1, 2, 2, indice_key="rd", algo=conv_algo(), bias=False)
        self.enc1 = ResBlock(c1, c1, "r1")
        self.up = spconv.SparseInverseConv3d(
            c1, c0, 2, indice_key="rd", algo=conv_algo(), bias=False
        )
        self.dec0 = ResBlock(2 * c0, c0, "r0")
        self.head = nn.Sequential(nn.Linear(c0 + 6, 64), nn.SiLU(), nn.Linear(64, 3 * c.up))

    def forward(
        self, points: torch.Tensor, batch: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Refined points (N * up, 3) and their scene index."""
        import spconv.pytorch as spconv

        c = self.config
        bsz = int(batch.max()) + 1
        lo = points.new_full((bsz, 3), float("inf")).scatter_reduce(
            0, batch[:, None].expand(-1, 3), points.detach(), "amin"
        )
        origin = torch.floor(lo / (2 * c.voxel)) * 2 * c.voxel
        keys, inv = voxelize(points, batch, origin, c.voxel)
        centre = (keys[inv, 1:].to(points.dtype) + 0.5) * c.voxel + origin[batch]
        pfeat = torch.cat([points / c.radius, (points - centre) / c.voxel], dim=1)
        shape = ((keys[:, 1:].max(0).values + 3) // 2 * 2).tolist()
        h = spconv.SparseConvTensor(
            scatter_mean(self.point_in(pfeat), inv, len(keys)), keys.int(), shape, bsz
        )
        skip = self.enc0(h)
        h = self.up(self.enc1(self.down(skip)))
        h = self.dec0(h.replace_feature(torch.cat([h.features, skip.features], dim=1)))
        offsets = torch.tanh(self.head(torch.cat([h.features[inv], pfeat], 1))) * c.max_offset
        refined = points[:, None, :] + offsets.view(len(points), c.up, 3)
        return refined.reshape(-1, 3), batch.repeat_interleave(c.up)


def refine_loss(
    net: RefineNet, coarse: torch.Tensor, batch: torch.Tensor, gts: list[torch.Tensor]
) -> torch.Tensor:
    """Mean over scenes of the Chamfer distance between the refined cloud and ground truth."""
    refined, rb = net(coarse, batch)
    return torch.stack([chamfer_loss(refined[rb == i], gt) for i, gt in enumerate(gts)]).mean()
