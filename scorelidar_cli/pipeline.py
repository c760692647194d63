"""From scans to model inputs and back: conditioning points, x_init, ground-truth samples,
batching, model files, and completing a scan with a trained model."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scorelidar_cli.dataset import Sequence, crop
from scorelidar_cli.diffusion import Schedule, sample
from scorelidar_cli.io import check_scan
from scorelidar_cli.model import CompletionUNet, ModelConfig, build_model
from shared.errors import InputError

TOOL = "scorelidar"
MODEL_FILE = "model.safetensors"
REFINE_FILE = "refine.safetensors"


# -- inputs -----------------------------------------------------------------------------------
def condition_points(
    scan: np.ndarray, config: ModelConfig, rng: np.random.Generator, name: str = "scan"
) -> np.ndarray:
    """The scan cut to the model's radius and randomly subsampled to n_cond points (LiDiff
    uses farthest-point sampling; random sampling keeps the density profile and is fast)."""
    scan = crop(check_scan(scan, name, max_range=config.radius), config.radius)
    if len(scan) > config.n_cond:
        scan = scan[rng.choice(len(scan), config.n_cond, replace=False)]
    return np.ascontiguousarray(scan, dtype=np.float32)


def initial_points(cond: np.ndarray, config: ModelConfig) -> np.ndarray:
    """x_init: the conditioning points repeated `repeat` times."""
    return np.tile(cond, (config.repeat, 1))


def sample_ground_truth(gt: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    return gt[rng.choice(len(gt), count, replace=len(gt) < count)]


@dataclass
class Batch:
    """Several scenes concatenated, each tensor with its scene index."""

    cond: torch.Tensor
    cond_batch: torch.Tensor
    x_init: torch.Tensor
    batch: torch.Tensor
    gt: list[torch.Tensor]

    @property
    def size(self) -> int:
        return len(self.gt)


def collate(
    items: list[tuple[np.ndarray, np.ndarray, np.ndarray]], device: torch.device | str = "cpu"
) -> Batch:
    """items: (cond, x_init, gt sample) per scene."""

    def cat(arrays):
        pts = torch.as_tensor(np.concatenate(arrays), dtype=torch.float32, device=device)
        idx = torch.cat([torch.full((len(a),), i, dtype=torch.long) for i, a in enumerate(arrays)])
        return pts, idx.to(device)

    cond, cond_batch = cat([c for c, _, _ in items])
    x_init, batch = cat([x for _, x, _ in items])
    gts = [torch.as_tensor(g, dtype=torch.float32, device=device) for _, _, g in items]
    return Batch(cond, cond_batch, x_init, batch, gts)


class FramePool:
    """Training frames with their scans and ground truth, read once and kept in memory."""

    def __init__(self, frames: list[tuple[Sequence, int]], radius: float) -> None:
        if not frames:
            raise InputError("no frames to train on (check --data and --sequences)")
        self.frames = frames
        self.radius = radius
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.frames)

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if i not in self._cache:
            seq, f = self.frames[i]
            self._cache[i] = (seq.scan(f), seq.ground_truth(f, self.radius))
        return self._cache[i]

    def batch(
        self, indices: list[int], config: ModelConfig, rng: np.random.Generator, device
    ) -> Batch:
        items = []
        for i in indices:
            scan, gt = self.get(i)
            seq, f = self.frames[i]
            cond = condition_points(scan, config, rng, str(seq.scans[f]))
            x_init = initial_points(cond, config)
            items.append((cond, x_init, sample_ground_truth(gt, len(x_init), rng)))
        return collate(items, device)


# -- model files ------------------------------------------------------------------------------
def save_model(
    path: str | Path, net: CompletionUNet, role: str, extra: dict[str, Any] | None = None
) -> Path:
    from shared.checkpoints import save_checkpoint

    return save_checkpoint(
        path,
        net.state_dict(),
        tool=TOOL,
        architecture=net.config.to_dict(),
        extra={"role": role, **(extra or {})},
    )


def model_file(path: str | Path) -> Path:
    from shared.checkpoints import artefact_file

    return artefact_file(path, MODEL_FILE, "a model folder from scorelidar")


def load_model(path: str | Path) -> tuple[CompletionUNet, dict[str, Any]]:
    """A model written by train-teacher or distill, and its metadata."""
    from shared.checkpoints import load_checkpoint

    file = model_file(path)
    tensors, meta = load_checkpoint(file, tool=TOOL)
    try:
        net = build_model(dict(meta["architecture"]))
        net.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(
            f"{file}: does not match its recorded architecture ({_first_problem(exc)})"
        ) from None
    return net.eval(), meta


def save_refiner(path: str | Path, net: torch.nn.Module, extra: dict[str, Any] | None = None):
    from shared.checkpoints import save_checkpoint

    return save_checkpoint(
        path, net.state_dict(), tool=TOOL, architecture=net.config.to_dict(),
        extra={"role": "refine", **(extra or {})},
    )  # fmt: skip


def load_refiner(path: str | Path):
    """A refinement net written by train-refine (its directory or refine.safetensors)."""
    from scorelidar_cli.refine import RefineConfig, RefineNet
    from shared.checkpoints import load_checkpoint

    file = Path(path)
    file = file / REFINE_FILE if file.is_dir() else file
    tensors, meta = load_checkpoint(file, tool=TOOL)
    if meta.get("role") != "refine":
        raise InputError(f"{file}: not a refinement net (role {meta.get('role')!r})")
    try:
        net = RefineNet(RefineConfig(**meta["architecture"]))
        net.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(
            f"{file}: does not match its recorded architecture ({_first_problem(exc)})"
        ) from None
    return net.eval()


# -- completion -------------------------------------------------------------------------------
@torch.no_grad()
def complete_scan(
    net: CompletionUNet,
    scan: np.ndarray,
    steps: int,
    guidance: float = 1.0,
    seed: int = 0,
    algorithm: str = "sde-dpmsolver++",
    device: torch.device | str = "cpu",
    name: str = "scan",
    refiner: torch.nn.Module | None = None,
) -> tuple[np.ndarray, float]:
    """The completed scene (N, 3) in the scan's frame (x `up` points with a refiner), and the
    seconds it took (sampling and refinement, excluding file reading)."""
    rng = np.random.default_rng(seed)
    cond = condition_points(scan, net.config, rng, name)
    x_init = initial_points(cond, net.config)
    b = collate([(cond, x_init, x_init[:1])], device)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    out = sample(
        net, b.x_init, b.batch, b.cond, b.cond_batch, steps, Schedule(), guidance, algorithm, gen
    )
    if refiner is not None:
        out = refiner(out, b.batch)[0]
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return out.cpu().numpy(), seconds


def _first_problem(exc: Exception) -> str:
    """One line out of torch's load_state_dict report (a header, then a line per tensor)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    detail = lines[1:] or lines
    more = f" and {len(detail) - 1} more" if len(detail) > 1 else ""
    return detail[0][:200] + more
