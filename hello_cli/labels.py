"""Where a student's soft labels come from, and what each source costs to ship.

- projector (HeLlO): computed online on every augmented batch; storage = the projector file.
- teacher (RDED-style): computed online by the full teacher; storage = the teacher itself
  (reported separately: it is the model the user wants to avoid shipping).
- stored (SRe2L / FKD-style): the teacher's logits for every augmented image of every
  epoch, precomputed and written to a file together with the augmentation parameters
  needed to replay them; storage = that file.
- hard: one-hot labels only; storage 0.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hello_cli.augment import AugConfig, BatchAug, apply_aug, plan_epoch

STORED_FILE = "soft_labels.safetensors"
SOURCES = ("projector", "teacher", "stored", "hard")


class OnlineLabels:
    """Logits of `model` on the augmented batch itself (the image the student sees)."""

    def __init__(self, model: nn.Module, storage_bytes: int) -> None:
        self.model = model.eval()
        self.storage_bytes = storage_bytes

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, epoch: int, batch_index: int) -> torch.Tensor:
        return self.model(images).float()


class HardLabels:
    storage_bytes = 0

    def __call__(self, images: torch.Tensor, epoch: int, batch_index: int) -> None:
        return None


class StoredLabels:
    """Replays a stored soft-label file: its augmentation plan and its logits."""

    def __init__(self, tensors: dict[str, torch.Tensor], batch_size: int) -> None:
        self.t = tensors
        self.batch_size = batch_size
        self.storage_bytes = sum(v.numel() * v.element_size() for v in tensors.values())

    @classmethod
    def load(cls, path: str | Path) -> StoredLabels:
        from shared.checkpoints import load_checkpoint

        tensors, meta = load_checkpoint(path, tool="hello")
        return cls(tensors, int(meta["architecture"]["batch_size"]))

    @property
    def epochs(self) -> int:
        return int(self.t["logits"].shape[0])

    def plan(self, epoch: int) -> list[BatchAug]:
        order = self.t["order"][epoch].long()
        plans = []
        for b, start in enumerate(range(0, len(order), self.batch_size)):
            sl = slice(start, start + self.batch_size)
            plans.append(
                BatchAug(
                    order[sl],
                    self.t["boxes"][epoch, sl].long(),
                    self.t["flips"][epoch, sl].bool(),
                    self.t["mix_perm"][epoch, sl].long(),
                    self.t["mix_box"][epoch, b].long(),
                )
            )
        return plans

    def __call__(self, images: torch.Tensor, epoch: int, batch_index: int) -> torch.Tensor:
        start = batch_index * self.batch_size
        return self.t["logits"][epoch, start : start + len(images)].float()


@torch.no_grad()
def compute_stored_labels(
    teacher: nn.Module,
    images: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    aug: AugConfig,
    seed: int,
    progress=None,  # noqa: ANN001 (an optional callable advancing a progress bar)
) -> dict[str, torch.Tensor]:
    """The FKD-style label file's tensors: per epoch the image order, crop boxes, flips,
    CutMix partners and boxes (int16/uint8), and the teacher's fp16 logits."""
    n, hw = len(images), tuple(images.shape[-2:])
    cols: dict[str, list[torch.Tensor]] = {
        k: [] for k in ("order", "boxes", "flips", "mix_perm", "mix_box", "logits")
    }
    for epoch in range(epochs):
        plans = plan_epoch(n, hw, batch_size, aug, seed, epoch)
        logits = [teacher(apply_aug(images, p, aug.out_size)).float() for p in plans]
        cols["order"].append(torch.cat([p.indices for p in plans]))
        cols["boxes"].append(torch.cat([p.boxes for p in plans]))
        cols["flips"].append(torch.cat([p.flips for p in plans]))
        cols["mix_perm"].append(torch.cat([p.mix_perm for p in plans]))
        cols["mix_box"].append(torch.stack([p.mix_box for p in plans]))
        cols["logits"].append(torch.cat(logits))
        if progress is not None:
            progress()
    index_dtype = torch.int16 if max(n, max(hw)) < 2**15 else torch.int32
    return {
        "order": torch.stack(cols["order"]).to(index_dtype),
        "boxes": torch.stack(cols["boxes"]).to(index_dtype),
        "flips": torch.stack(cols["flips"]).to(torch.uint8),
        "mix_perm": torch.stack(cols["mix_perm"]).to(index_dtype),
        "mix_box": torch.stack(cols["mix_box"]).to(index_dtype),
        "logits": torch.stack(cols["logits"]).half(),
    }


def stored_label_bytes(
    images: int, classes: int, epochs: int, batch_size: int, logit_bytes: int = 2
) -> int:
    """Bytes of such a file without writing it (for the storage table): fp16 logits plus
    int16 order/box/partner indices, a flip byte, and a CutMix box per batch."""
    per_epoch = images * (classes * logit_bytes + 2 + 4 * 2 + 1 + 2)
    per_epoch += -(-images // batch_size) * 4 * 2
    return epochs * per_epoch
