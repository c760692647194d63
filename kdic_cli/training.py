"""Training loops shared by `distill` and `finetune`: data, phases, optimizers, the aux
optimizer, resume state and DDP. The method itself lives in distill.py."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from shared.errors import InputError

PHOTOS = "builtin:photos"


class FolderCrops(Dataset):
    """Random square crops of a folder of images; item i depends on (seed, epoch, i)."""

    def __init__(self, root: str | Path, crop_size: int, n_crops: int, seed: int = 0) -> None:
        from shared.images import ImageFiles

        self.files = ImageFiles(root)
        self.crop, self.n, self.seed, self.epoch = crop_size, n_crops, seed, 0
        self._cache: dict[int, Tensor] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Tensor:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        k = int(rng.integers(len(self.files)))
        if k not in self._cache:
            self._cache[k] = self.files[k]
        img = self._cache[k]
        _, h, w = img.shape
        c = self.crop
        if h < c or w < c:
            img = torch.nn.functional.pad(
                img[None], (0, max(0, c - w), 0, max(0, c - h)), mode="replicate"
            )[0]
            _, h, w = img.shape
        top, left = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
        return img[:, top : top + c, left : left + c].contiguous()


def train_dataset(data: str, crop: int, seed: int) -> Dataset:
    if data == PHOTOS:
        from shared.builtin_data import PhotoCrops

        return PhotoCrops("train", crop_size=crop, n_crops_per_epoch=1024, seed=seed)
    if data.startswith("builtin:"):
        raise InputError(f"--data {data}: codecs train on builtin:photos or an image folder")
    return FolderCrops(data, crop, 1024, seed)


def eval_images(data: str) -> list[tuple[str, Tensor]]:
    """Whole images for evaluation: the held-out builtin photos, or every image of a folder."""
    if data == PHOTOS:
        from shared.builtin_data import PhotoImages

        ds = PhotoImages("val")
        return [(n, ds[i]) for i, n in enumerate(ds.names)]
    if data.startswith("builtin:"):
        raise InputError(f"--data {data}: evaluate on builtin:photos or an image folder")
    from shared.images import ImageFiles

    files = ImageFiles(data)
    return [(p.name, files[i]) for i, p in enumerate(files.paths)]


class Batches:
    """Deterministic batches by global step, so a resumed run sees the same data."""

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, workers: int = 0) -> None:
        self.ds, self.bs, self.seed, self.workers = dataset, batch_size, seed, workers

    def from_step(self, step: int) -> Iterator[Tensor]:
        from shared.loaders import make_loader, set_loader_epoch

        loader = make_loader(self.ds, self.bs, shuffle=True, seed=self.seed,
                             num_workers=self.workers, drop_last=True)  # fmt: skip
        per_epoch = len(loader)
        if per_epoch < 1:
            raise InputError(f"--batch-size {self.bs}: larger than the dataset")
        epoch, offset = divmod(step, per_epoch)
        while True:
            set_loader_epoch(loader, epoch)
            if loader.generator is not None:  # a fixed order per epoch, resumable
                loader.generator.manual_seed(self.seed + epoch)
            yield from itertools.islice(iter(loader), offset, None)
            epoch, offset = epoch + 1, 0


@dataclass
class Phase:
    """A run of steps with one set of trainable parameters and one loss."""

    name: str
    steps: int
    params: list[nn.Parameter]
    loss: Callable[[Tensor], dict[str, Tensor]]
    # False when the loss does not go through DDP: gradients are then averaged by hand.
    ddp_synced: bool = True


def run_phases(
    run: Any,
    phases: list[Phase],
    batches: Batches,
    student: nn.Module,
    *,
    lr: float,
    aux_lr: float,
    device: torch.device,
    clip: float = 1.0,
    extra_state: Callable[[], dict[str, Any]] | None = None,
) -> list[dict[str, float]]:
    """Train phase after phase; aux optimizer on the student's quantiles throughout.
    Resumable at any step (state in the Run). Returns each phase's last logged losses."""
    from shared import distributed
    from shared.runs import check_finite, rng_state, set_rng_state

    aux_params = [p for n, p in student.named_parameters() if n.endswith(".quantiles")]
    aux_opt = torch.optim.Adam(aux_params, lr=aux_lr) if aux_params else None
    state = run.load_state()
    step0 = 0
    if state is not None:
        student.load_state_dict(state["student"])
        if aux_opt is not None and state.get("aux"):
            aux_opt.load_state_dict(state["aux"])
        set_rng_state(state["rng"])
        step0 = int(state["step"])
        run.console.info(f"resuming at step {step0}")
    total = sum(p.steps for p in phases)
    summary: list[dict[str, float]] = []
    done = 0
    data = batches.from_step(step0)
    with run.console.progress_bar("training", total) as bar:
        bar.advance(min(step0, total))
        for ph in phases:
            first, last = done + 1, done + ph.steps
            done = last
            if step0 >= last:
                summary.append({"phase": ph.name})
                continue
            opt = torch.optim.Adam([p for p in ph.params if p.requires_grad], lr=lr)
            if state is not None and state.get("phase") == ph.name and state.get("opt"):
                opt.load_state_dict(state["opt"])
            logs: dict[str, float] = {}
            for step in range(max(first, step0 + 1), last + 1):
                x = next(data).to(device)
                out = ph.loss(x)
                check_finite(out["loss"], step)
                opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                if not ph.ddp_synced:
                    distributed.average_gradients(ph.params)
                if clip > 0:
                    torch.nn.utils.clip_grad_norm_(ph.params, clip)
                opt.step()
                if aux_opt is not None:
                    aux_opt.zero_grad(set_to_none=True)
                    aux = distributed.unwrap(student).aux_loss()
                    aux.backward()
                    distributed.average_gradients(aux_params)  # DDP does not see the aux loss
                    aux_opt.step()
                logs = {k: float(v.detach()) for k, v in out.items()}
                bar.advance(1, stage=ph.name, loss=logs["loss"])

                def make_state(s: int = step, ph: Phase = ph, opt: Any = opt) -> dict:
                    return {
                        "step": s, "phase": ph.name,
                        "student": distributed.unwrap(student).state_dict(),
                        "opt": opt.state_dict(),
                        "aux": aux_opt.state_dict() if aux_opt is not None else {},
                        "rng": rng_state(), **(extra_state() if extra_state else {}),
                    }  # fmt: skip

                run.step_done(step, make_state)
            summary.append({"phase": ph.name, **logs})
            run.console.info(f"{ph.name}: " + "  ".join(f"{k}={v:.4g}" for k, v in logs.items()))
    distributed.check_replicas(student, "student")
    return summary
