"""Low-rank (LoRA) updates of frozen weights: W' = W + B @ A, only A and B trainable.

The update is a torch parametrization of the layer's `weight`, so it works unchanged for
Linear, Conv2d of any kernel size and groups (depthwise included): the factors are shaped
(out, r) and (r, in/groups * kh * kw) and their product is reshaped to the weight. B starts
at zero, so a fresh update leaves the model exactly as it was.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn
from torch.nn.utils import parametrize

FACTOR_NAMES = ("lora_a", "lora_b")


class LowRankDelta(nn.Module):
    """Parametrization adding B @ A (reshaped) to a weight of any shape (out, ...)."""

    def __init__(self, weight_shape: torch.Size | tuple[int, ...], rank: int) -> None:
        super().__init__()
        out_dim = int(weight_shape[0])
        in_dim = math.prod(int(s) for s in weight_shape[1:])
        self.rank = rank
        # kaiming-uniform A as in LoRA; B = 0 keeps the initial update exactly zero
        self.lora_a = nn.Parameter(torch.empty(rank, in_dim))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.lora_b = nn.Parameter(torch.zeros(out_dim, rank))

    def delta(self) -> torch.Tensor:
        return self.lora_b @ self.lora_a

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta().view_as(weight).to(weight.dtype)


def effective_rank(weight_shape: torch.Size | tuple[int, ...], rank: int) -> int:
    """A rank above min(out, in) adds parameters but no expressiveness: cap it."""
    out_dim = int(weight_shape[0])
    in_dim = math.prod(int(s) for s in weight_shape[1:])
    return max(1, min(rank, out_dim, in_dim))


def add_lora(
    model: nn.Module,
    rank: int,
    *,
    include: str | None = None,
    layer_types: tuple[type[nn.Module], ...] = (nn.Conv2d, nn.Linear),
) -> list[str]:
    """Freeze `model` and add a rank-`rank` update to each Conv2d/Linear weight (and fused
    attention q/k/v projection) whose module name matches the regex `include` (all when
    None). Returns the adapted module names."""
    for p in model.parameters():
        p.requires_grad_(False)
    if rank <= 0:
        return []
    pattern = re.compile(include) if include else None
    names = []
    for name, module in list(model.named_modules()):
        tensor = _adapted_tensor(module, layer_types)
        if tensor is None or parametrize.is_parametrized(module, tensor):
            continue
        if pattern is not None and not pattern.search(name):
            continue
        weight = getattr(module, tensor)
        delta = LowRankDelta(weight.shape, effective_rank(weight.shape, rank)).to(weight.device)
        parametrize.register_parametrization(module, tensor, delta)
        names.append(name)
    return names


def _adapted_tensor(module: nn.Module, layer_types: tuple[type[nn.Module], ...]) -> str | None:
    """The weight a low-rank update goes on: `weight` of conv/linear layers, the fused
    q/k/v projection `in_proj_weight` of nn.MultiheadAttention (CLIP ViTs)."""
    if isinstance(module, layer_types):
        return "weight"
    if isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
        return "in_proj_weight"
    return None


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Only the low-rank factors, keyed by their parameter names."""
    return {
        name: p.detach()
        for name, p in model.named_parameters()
        if name.rsplit(".", 1)[-1] in FACTOR_NAMES
    }


def zero_lora_(model: nn.Module) -> None:
    """Set every update to zero (B = 0): the model computes its base weights again."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_b"):
                p.zero_()
