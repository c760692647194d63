"""Training and evaluating image classifiers: the loop vbp fine-tuning and reference models
share.

`fit_classifier` trains with cross-entropy and, when a teacher is given, logit knowledge
distillation: loss = (1 - a) * CE(y) + a * T^2 * KL(softmax(t/T) || softmax(s/T)).
AdamW with linear warm-up and cosine decay, on the toolkit's one training loop
(`shared.train.Trainer`): AMP on CUDA, DDP under torchrun/srun, and, inside a `Run`,
periodic checkpoints, exact `--resume` and a clean exit on SIGTERM/SIGUSR1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from shared import distributed
from shared.console import get_console
from shared.device import autocast
from shared.train import StepBatches, Trainer, cosine_with_warmup

__all__ = [
    "FitConfig",
    "cosine_with_warmup",
    "evaluate_classifier",
    "fit_classifier",
    "kd_loss",
]


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor | None,
    labels: torch.Tensor | None,
    alpha: float,
    temperature: float,
) -> torch.Tensor:
    """(1 - alpha) * CE + alpha * T^2 * KL(teacher || student) at temperature T."""
    loss = student_logits.new_zeros(())
    if labels is not None and alpha < 1.0:
        loss = loss + (1.0 - alpha) * F.cross_entropy(student_logits, labels)
    if teacher_logits is not None and alpha > 0.0:
        t = temperature
        kl = F.kl_div(
            F.log_softmax(student_logits.float() / t, dim=-1),
            F.log_softmax(teacher_logits.float() / t, dim=-1),
            reduction="batchmean",
            log_target=True,
        )
        loss = loss + alpha * t * t * kl
    return loss


@dataclass
class FitConfig:
    epochs: float = 10.0
    lr: float = 1e-4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.05
    kd_alpha: float = 0.5
    kd_temperature: float = 2.0
    amp: bool = True
    grad_clip: float = 0.0
    label_smoothing: float = 0.0


def fit_classifier(
    model: nn.Module,
    train_loader: DataLoader,
    cfg: FitConfig,
    *,
    device: torch.device,
    teacher: nn.Module | None = None,
    run: Any | None = None,
    description: str = "train",
) -> dict[str, float]:
    """Train `model` in place (it may be DDP-wrapped by the caller) for `cfg.epochs` epochs
    of `train_loader` (an epoch-seeded loader from shared.loaders); returns the trainer's
    summary: {"steps", "final_loss", "final_lr"}. `run` (a shared.runs.Run, or None from
    Python) gives checkpoints, --resume and preemption handling."""
    total = max(1, int(round(cfg.epochs * len(train_loader))))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, cosine_with_warmup(total, int(cfg.warmup_fraction * total))
    )
    trainer = Trainer(total, run=run, device=device, amp=cfg.amp, description=description)
    trainer.track(model=model, optimizer=opt, scheduler=sched)
    batches = StepBatches(train_loader)  # the batch of a step depends on the step only
    if teacher is not None:
        teacher.eval()
    alpha = cfg.kd_alpha if teacher is not None else 0.0

    def step(s: int) -> dict[str, Any]:
        images, labels = batches(s)
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        with trainer.autocast():
            logits = model(images)
            t_logits = None
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(images)
            if isinstance(logits, tuple):  # distilled DeiT in train mode
                logits = sum(logits) / len(logits)
            loss = kd_loss(logits, t_logits, labels, alpha, cfg.kd_temperature)
        trainer.optimize(loss, opt, clip=cfg.grad_clip, scheduler=sched)
        return {"loss": loss, "lr": sched.get_last_lr()[0]}

    return trainer.fit(step)


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module,
    loader: DataLoader,
    *,
    device: torch.device,
    teacher: nn.Module | None = None,
    amp: bool = True,
    description: str = "evaluate",
) -> dict[str, float]:
    """Top-1/top-5 accuracy (%) and, with a teacher, top-1 agreement with it (%).

    Counts are summed over ranks, so a sharded loader gives the global numbers."""
    model.eval()
    if teacher is not None:
        teacher.eval()
    counts = torch.zeros(4, dtype=torch.float64)  # n, top1, top5, agree
    for images, labels in get_console().progress(loader, description):
        images, labels = images.to(device), labels.to(device)
        with autocast(device, enabled=amp):
            logits = model(images).float()
        k = min(5, logits.shape[-1])
        topk = logits.topk(k, dim=-1).indices
        counts[0] += labels.numel()
        counts[1] += (topk[:, 0] == labels).sum().item()
        counts[2] += (topk == labels[:, None]).any(-1).sum().item()
        if teacher is not None:
            with autocast(device, enabled=amp):
                t_pred = teacher(images).float().argmax(-1)
            counts[3] += (t_pred == topk[:, 0]).sum().item()
    counts = distributed.all_reduce(counts, "sum")
    n = max(counts[0].item(), 1.0)
    out = {
        "top1": 100 * counts[1].item() / n,
        "top5": 100 * counts[2].item() / n,
        "images": int(counts[0].item()),
    }
    if teacher is not None:
        out["teacher_agreement"] = 100 * counts[3].item() / n
    return out
