"""Statistics on disk: safetensors (count, mean, M2 per MLP) + the model's architecture."""

from __future__ import annotations

from pathlib import Path

import torch

from shared.checkpoints import load_checkpoint, save_checkpoint
from shared.errors import InputError
from vbp_cli.models import Architecture
from vbp_cli.stats import NeuronStats

STATS_FILE = "stats.safetensors"


def save_stats(stats: dict[str, NeuronStats], path: Path, arch: Architecture) -> Path:
    tensors: dict[str, torch.Tensor] = {}
    for name, s in stats.items():
        tensors[f"{name}.mean"] = s.mean
        tensors[f"{name}.m2"] = s.m2
        tensors[f"{name}.count"] = torch.tensor([s.count], dtype=torch.int64)
    return save_checkpoint(
        path,
        tensors,
        tool="vbp",
        architecture=arch.to_dict(),
        extra={"kind": "stats", "mlps": list(stats)},
    )


def load_stats(path: str | Path) -> dict[str, NeuronStats]:
    path = Path(path)
    if path.is_dir():
        path = path / STATS_FILE
    tensors, meta = load_checkpoint(path, tool="vbp")
    if meta.get("kind") != "stats":
        raise InputError(f"--stats {path}: a vbp file, but not statistics (a model?)")
    return {
        name: NeuronStats(
            int(tensors[f"{name}.count"][0]), tensors[f"{name}.mean"], tensors[f"{name}.m2"]
        )
        for name in meta["mlps"]
    }
