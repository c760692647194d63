"""Training and evaluating image classifiers: the loop vbp fine-tuning, reference models and
label-distillation students share.

`fit_classifier` trains with cross-entropy and, when a teacher is given, logit knowledge
distillation: loss = (1 - a) * CE(y) + a * T^2 * KL(softmax(t/T) || softmax(s/T)).
AdamW with linear warm-up and cosine decay, AMP on CUDA, DDP under torchrun/srun, and,
inside a `Run`, periodic checkpoints, `--resume` and clean exit on SIGTERM/SIGUSR1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from shared import distributed
from shared.console import get_console
from shared.device import autocast
from shared.runs import Run, check_finite, rng_state, set_rng_state


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


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def fit_classifier(
    model: nn.Module,
    train_loader: DataLoader,
    cfg: FitConfig,
    *,
    device: torch.device,
    teacher: nn.Module | None = None,
    run: Run | None = None,
    description: str = "train",
) -> dict[str, float]:
    """Train `model` in place (it may be DDP-wrapped by the caller); returns final stats."""
    from shared.loaders import epoch_batches

    console = get_console()
    steps_per_epoch = len(train_loader)
    total = max(1, int(round(cfg.epochs * steps_per_epoch)))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, cosine_with_warmup(total, int(cfg.warmup_fraction * total))
    )
    use_scaler = device.type == "cuda" and cfg.amp and not torch.cuda.is_bf16_supported()
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    step = 0
    state = run.load_state() if run is not None else None
    if state is not None:
        distributed.unwrap(model).load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        step = int(state["step"])
        console.info(f"resumed at step {step} of {total}")
    if teacher is not None:
        teacher.eval()

    def snapshot(at: int) -> dict[str, Any]:
        return {
            "model": distributed.unwrap(model).state_dict(),
            "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": rng_state(),
            "step": at,
        }

    model.train()
    last_loss = float("nan")
    with console.progress_bar(description, total) as bar:
        bar.advance(step)
        while step < total:
            epoch = step // steps_per_epoch
            batches = epoch_batches(train_loader, epoch, step - epoch * steps_per_epoch)
            for images, labels in batches:
                images = images.to(device, non_blocking=True)
                labels = labels.to(device, non_blocking=True)
                with autocast(device, enabled=cfg.amp):
                    logits = model(images)
                    t_logits = None
                    if teacher is not None:
                        with torch.no_grad():
                            t_logits = teacher(images)
                    if isinstance(logits, tuple):  # distilled DeiT in train mode
                        logits = sum(logits) / len(logits)
                    loss = kd_loss(
                        logits,
                        t_logits,
                        labels,
                        cfg.kd_alpha if teacher is not None else 0.0,
                        cfg.kd_temperature,
                    )
                check_finite(loss, step + 1)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(opt)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(opt)
                scaler.update()
                sched.step()
                step += 1
                last_loss = float(loss.detach())
                bar.advance(1, loss=last_loss, lr=sched.get_last_lr()[0])
                if run is not None:
                    run.step_done(step, lambda s=step: snapshot(s))
                if step >= total:
                    break
    model.eval()
    return {"steps": step, "final_loss": last_loss}


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
