"""The image-to-label projector f(x) = s * normalize(E(x)) @ (W + A_W B_W), with low-rank
updates on E's conv and linear layers as well. Only the low-rank factors are stored; the
frozen encoder and (for CLIP) W are rebuilt from the recorded spec at load time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hello_cli.encoders import EncoderSpec
from hello_cli.lora import FACTOR_NAMES, add_lora, lora_state_dict
from shared.errors import InputError

FILE_NAME = "projector.safetensors"
# stored only for timm encoders (class means are not regenerable from names)
HEAD_BASE_KEY = "head_base"
FEATURE_MEAN_KEY = "feature_mean"
SCALE_KEY = "log_logit_scale"  # trained with the factors: one number


@dataclass
class ProjectorConfig:
    encoder: dict[str, Any]
    class_names: list[str]
    templates: list[str]
    logit_scale: float
    rank: int = 0
    head_rank: int = 0
    lora_include: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def spec(self) -> EncoderSpec:
        return EncoderSpec(**self.encoder)


class Projector(nn.Module):
    def __init__(
        self,
        encoder: nn.Module,
        head: torch.Tensor,
        logit_scale: float,
        config: ProjectorConfig,
        feature_mean: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.feature_mean = feature_mean  # None for CLIP: its features are used as they are
        self.head = nn.Linear(head.shape[0], head.shape[1], bias=False)
        with torch.no_grad():
            self.head.weight.copy_(head.T)
        self.log_logit_scale = nn.Parameter(torch.tensor(math.log(logit_scale)))
        self.config = config
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def num_classes(self) -> int:
        return self.head.out_features

    def base_head(self) -> torch.Tensor:
        """W (d, C) without its low-rank update."""
        w = getattr(self.head, "parametrizations", None)
        return (w.weight.original if w is not None else self.head.weight).detach().T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x).float()
        if self.feature_mean is not None:
            feats = feats - self.feature_mean.to(feats.device)
        return self.log_logit_scale.exp() * self.head(F.normalize(feats, dim=-1))

    def add_lora(self, rank: int, head_rank: int, include: str | None = None) -> int:
        """Add rank-`rank` updates to the encoder and rank-`head_rank` to W; returns the
        number of trainable parameters (the factors)."""
        add_lora(self.encoder, rank, include=include)
        add_lora(self.head, head_rank)
        # the temperature trains too: a frozen one fixes how far apart the logits can be
        self.log_logit_scale.requires_grad_(rank > 0 or head_rank > 0)
        self.config.rank, self.config.head_rank, self.config.lora_include = rank, head_rank, include
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def train_factors(self) -> int:
        """Make the factors a loaded projector already has (and its temperature) trainable
        again, to go on distilling it; returns the trainable parameter count."""
        for name, p in self.named_parameters():
            if name.rsplit(".", 1)[-1] in FACTOR_NAMES:
                p.requires_grad_(True)
        self.log_logit_scale.requires_grad_(True)
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def stored_tensors(self) -> dict[str, torch.Tensor]:
        """What the projector file holds: the factors, plus W and the feature mean for a
        timm encoder."""
        tensors = dict(lora_state_dict(self))
        if self.log_logit_scale.requires_grad:
            tensors[SCALE_KEY] = self.log_logit_scale.detach().view(1)
        if self.config.spec.kind == "timm":
            tensors[HEAD_BASE_KEY] = self.base_head()
            if self.feature_mean is not None:
                tensors[FEATURE_MEAN_KEY] = self.feature_mean
        return tensors


def storage_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Payload bytes: number of stored values x bytes per value."""
    return sum(t.numel() * t.element_size() for t in tensors.values())


def build_projector(
    spec: EncoderSpec,
    class_names: Sequence[str],
    templates: Sequence[str],
    *,
    real_images: torch.Tensor | None = None,
    real_labels: torch.Tensor | None = None,
    head: torch.Tensor | None = None,
    feature_mean: torch.Tensor | None = None,
    logit_scale: float | None = None,
    device: torch.device | str | None = None,
) -> Projector:
    """The zero-LoRA projector (on the CPU): CLIP zero-shot head, or class means for a timm
    encoder (from `real_images`/`real_labels`, computed on `device`, or a given `head`)."""
    from hello_cli import encoders

    if spec.kind == "openclip":
        encoder, w, scale = encoders.open_clip_encoder(spec, class_names, templates)
    else:
        encoder = encoders.build_timm_backbone(spec)
        scale = 1 / 0.07  # CLIP's initial temperature (it trains with the factors)
        if head is not None:
            w = head
        elif real_images is not None and real_labels is not None:
            dev = torch.device(device or "cpu")
            w, feature_mean = encoders.class_mean_head(
                encoder.to(dev), real_images.to(dev), real_labels.to(dev), len(class_names)
            )
            encoder, w, feature_mean = encoder.cpu(), w.cpu(), feature_mean.cpu()
        else:
            raise InputError(f"timm:{spec.name} needs real images to build W from class means")
    if w.shape[1] != len(class_names):
        raise InputError(f"W has {w.shape[1]} classes, the class list {len(class_names)}")
    config = ProjectorConfig(
        spec.to_dict(), list(class_names), list(templates), logit_scale or scale
    )
    return Projector(encoder, w, logit_scale or scale, config, feature_mean)


def _stored(projector: Projector) -> dict[str, torch.Tensor]:
    """The tensors a projector file holds, as written (float32)."""
    return {k: v.float() for k, v in projector.stored_tensors().items()}


def stored_size(projector: Projector) -> dict[str, int]:
    """Parameter count and payload bytes of the projector's file, written or not."""
    tensors = _stored(projector)
    return {
        "stored_parameters": sum(t.numel() for t in tensors.values()),
        "storage_bytes": storage_bytes(tensors),
    }


def save_projector(projector: Projector, directory: str | Path, **extra: Any) -> dict[str, int]:
    """Write DIR/projector.safetensors; returns its payload bytes and parameter count."""
    from shared.checkpoints import save_checkpoint

    projector.config.extra.update(extra)
    save_checkpoint(
        Path(directory) / FILE_NAME,
        _stored(projector),
        tool="hello",
        architecture=asdict(projector.config),
    )
    return stored_size(projector)


def projector_file(path: str | Path) -> Path:
    from shared.checkpoints import artefact_file

    return artefact_file(path, FILE_NAME, "a projector folder from hello")


def load_projector(path: str | Path) -> Projector:
    """Rebuild the frozen base from the recorded spec and load the stored factors."""
    from shared.checkpoints import load_checkpoint

    tensors, meta = load_checkpoint(projector_file(path), tool="hello")
    arch = meta.get("architecture", {})
    if "encoder" not in arch:
        raise InputError(f"{path}: not a hello projector")
    config = ProjectorConfig(**arch)
    projector = build_projector(
        config.spec,
        config.class_names,
        config.templates,
        head=tensors.pop(HEAD_BASE_KEY, None),
        feature_mean=tensors.pop(FEATURE_MEAN_KEY, None),
        logit_scale=config.logit_scale,
    )
    projector.config.extra = config.extra
    projector.add_lora(config.rank, config.head_rank, config.lora_include)
    scale = tensors.pop(SCALE_KEY, None)
    if scale is not None:
        with torch.no_grad():
            projector.log_logit_scale.copy_(scale.view(()))
    expected = lora_state_dict(projector)
    if set(expected) != set(tensors):
        raise InputError(f"{path}: its low-rank factors do not match the recorded ranks/encoder")
    params = dict(projector.named_parameters())
    with torch.no_grad():
        for name, value in tensors.items():
            if params[name].shape != value.shape:
                raise InputError(f"{path}: factor {name} has shape {tuple(value.shape)}")
            params[name].copy_(value)
    return projector.eval()
