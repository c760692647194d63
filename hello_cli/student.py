"""Training a student from scratch on augmented synthetic images with labels from any source
(see labels.py): loss = MSE(student, labels) + beta * CE(student, hard), or
T^2 * KL(labels/T || student/T) + beta * CE; hard labels alone give plain CE. AdamW with
cosine decay; DDP (each rank takes every world-th batch of the shared epoch plan); on the
toolkit's one training loop (shared.train.Trainer: checkpoints, exact resume, preemption)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hello_cli.augment import (
    AugConfig,
    BatchAug,
    StepPlans,
    apply_aug,
    mixed_targets,
    plan_epoch,
)
from shared import distributed


@dataclass
class StudentConfig:
    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    loss: str = "mse"  # mse | kl
    beta: float = 0.1
    temperature: float = 4.0
    seed: int = 0
    aug: AugConfig = field(default_factory=AugConfig)


def label_loss(
    student_logits: torch.Tensor,
    soft: torch.Tensor | None,
    hard: torch.Tensor,
    cfg: StudentConfig,
) -> torch.Tensor:
    """The student's loss for one batch; `hard` are (mixed) one-hot targets."""
    ce = F.cross_entropy(student_logits, hard)
    if soft is None:
        return ce
    if cfg.loss == "kl":
        t = cfg.temperature
        kl = F.kl_div(
            F.log_softmax(student_logits / t, -1),
            F.log_softmax(soft / t, -1),
            reduction="batchmean",
            log_target=True,
        )
        return t * t * kl + cfg.beta * ce
    return F.mse_loss(student_logits, soft) + cfg.beta * ce


def train_student(
    student: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    num_classes: int,
    label_source: Callable[[torch.Tensor, int, int], torch.Tensor | None],
    cfg: StudentConfig,
    *,
    plans: Callable[[int], list[BatchAug]] | None = None,
    run: Any | None = None,
    device: torch.device | None = None,
    description: str = "student",
) -> dict[str, Any]:
    """Train `student` (possibly DDP-wrapped) in place on (images, labels) in [0, 1];
    returns the trainer's summary ({"steps", "final_loss"}).

    `label_source(augmented_batch, epoch, batch_index)` gives the soft labels of exactly
    the batch the student sees; `plans(epoch)` the epoch's augmentation (default: drawn
    from the seed; the stored-label source replays its own). `run` (a shared.runs.Run)
    gives checkpoints, preemption and exact --resume."""
    from shared.train import Trainer

    device = device or torch.device("cpu")
    hw = tuple(images.shape[-2:])
    plans = plans or (lambda e: plan_epoch(len(images), hw, cfg.batch_size, cfg.aug, cfg.seed, e))
    batches = StepPlans(plans, world=distributed.world_size(), rank=distributed.rank())
    total = cfg.epochs * batches.per_epoch
    opt = torch.optim.AdamW(student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, total))
    trainer = Trainer(total, run=run, device=device, description=description)
    trainer.track(student=student, opt=opt, sched=sched)

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        epoch, b, plan = batches(step)
        x = apply_aug(images, plan, cfg.aug.out_size).to(device)
        soft = label_source(x, epoch, b)
        hard = mixed_targets(labels, plan, num_classes, cfg.aug.out_size).to(device)
        soft = soft.to(device) if soft is not None else None
        with trainer.autocast():
            loss = label_loss(student(x).float(), soft, hard, cfg)
        trainer.optimize(loss, opt, scheduler=sched)
        return {"loss": loss}

    return trainer.fit(step_fn)
