"""Training the projector's low-rank factors on real images against the teacher:
loss = MSE(f(x), t(x)) + lambda * CE(f(x), y), on randomly cropped and flipped images, the
teacher's logits computed on the same augmented image.

Optionally (beyond the paper) each step also fits the teacher on a batch of the synthetic
set, augmented as the student will see it (crop, flip, CutMix): the labels are generated on
those images, and a projector fitted on real images alone agrees with the teacher on only
~15% of them on digits (tiled half-size crops look like nothing it was fitted on)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hello_cli.augment import AugConfig, StepPlans, apply_aug, plan_epoch


@dataclass
class DistillConfig:
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    ce_weight: float = 0.1  # lambda
    encoder_lr_scale: float = 0.1  # the encoder's factors move slower than W's
    synthetic_weight: float = 1.0  # weight of the synthetic-batch MSE, when a set is given
    seed: int = 0


def centred(logits: torch.Tensor) -> torch.Tensor:
    return logits - logits.mean(dim=-1, keepdim=True)


def projector_loss(
    logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, ce_weight: float
) -> torch.Tensor:
    """MSE between per-image centred logits, + lambda * CE. Logits mean the same thing up to
    a constant per image (softmax ignores it); a cosine classifier without bias cannot
    match the teacher's offset, and uncentred MSE would spend its gradient trying."""
    mse = F.mse_loss(centred(logits), centred(teacher_logits))
    return mse + ce_weight * F.cross_entropy(logits, labels)


class TrainableTensors:
    """The trainable tensors of a module (a projector's factors and temperature) as a
    stateful object for the trainer's resume state. Not an nn.Module on purpose: the trainer
    puts the modules it tracks in train mode, and the projector's encoder must stay in eval
    mode (its BatchNorm statistics are part of the frozen base)."""

    def __init__(self, module: nn.Module) -> None:
        self.params = {n: p for n, p in module.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict[str, Any]:
        return {n: p.detach().clone() for n, p in self.params.items()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(state[name])


def distill_projector(
    projector: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: DistillConfig,
    *,
    aug: AugConfig,
    synthetic: torch.Tensor | None = None,
    synthetic_aug: AugConfig | None = None,
    run: Any | None = None,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Train the trainable parameters of `projector` (its factors) in place; returns the
    trainer's summary ({"steps", "final_loss"}). With `synthetic` images, every step adds
    `cfg.synthetic_weight` x the centred MSE to the teacher on one batch of them augmented by
    `synthetic_aug` (default: the student's crop, flip and CutMix); no CE there, since on
    those batches the teacher's top-1 is often not the image's class and the teacher is what
    the student will be taught to imitate. `run` (a shared.runs.Run) gives checkpoints,
    preemption and exact --resume. Under torchrun/srun each rank takes every world-th batch
    (`cfg.batch_size` per rank) and the factors' gradients are averaged over the ranks."""
    from shared import distributed
    from shared.train import Trainer

    # a low-rank update on every encoder layer compounds through the depth: a step size that
    # suits W's update distorts the features, so the encoder's factors get a smaller one
    encoder = [
        p for n, p in projector.named_parameters() if p.requires_grad and n.startswith("encoder.")
    ]
    rest = [
        p
        for n, p in projector.named_parameters()
        if p.requires_grad and not n.startswith("encoder.")
    ]
    groups = [{"params": rest, "lr": cfg.lr}]
    if encoder:
        groups.append({"params": encoder, "lr": cfg.lr * cfg.encoder_lr_scale})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    hw = tuple(images.shape[-2:])
    aug = AugConfig(aug.out_size, aug.crop_scale, aug.flip, cutmix=False)
    ranks = {"world": distributed.world_size(), "rank": distributed.rank()}
    real = StepPlans(
        lambda e: plan_epoch(len(images), hw, cfg.batch_size, aug, cfg.seed, e), **ranks
    )
    steps = cfg.epochs * real.per_epoch
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    synthetic_aug = synthetic_aug or AugConfig(aug.out_size)
    synth = _synthetic_plans(synthetic, synthetic_aug, cfg, **ranks)
    teacher.eval()
    # The encoder stays in eval mode: its BatchNorm statistics are part of the frozen base
    # (not stored), and labels are later generated in eval mode, so train in that mode too.
    projector.eval()
    trainer = Trainer(steps, run=run, device=device or images.device, description="distill")
    trainer.track(projector=TrainableTensors(projector), opt=opt, sched=sched)

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        _, _, plan = real(step)
        x = apply_aug(images, plan, aug.out_size)
        with trainer.autocast():
            with torch.no_grad():
                target = teacher(x).float()
            loss = projector_loss(projector(x), target, labels[plan.indices], cfg.ce_weight)
            if synth is not None:
                # the synthetic stream has its own epochs; its batch too is the step's
                xs = apply_aug(synthetic, synth(step)[2], synthetic_aug.out_size)  # type: ignore[arg-type]
                with torch.no_grad():
                    ts = teacher(xs).float()
                loss = loss + cfg.synthetic_weight * F.mse_loss(centred(projector(xs)), centred(ts))
        trainer.optimize(loss, opt, scheduler=sched, average=[*rest, *encoder])
        return {"loss": loss}

    summary = trainer.fit(step_fn)
    distributed.check_replicas(projector, "projector")
    return summary


def _synthetic_plans(
    images: torch.Tensor | None, aug: AugConfig, cfg: DistillConfig, *, world: int, rank: int
) -> StepPlans | None:
    """Augmented batches of the synthetic set by step, on a seed stream apart from the
    student's (the projector must not have seen the student's exact batches)."""
    if images is None:
        return None
    if len(images) == 0:
        raise ValueError("the synthetic set is empty")
    bs = min(cfg.batch_size, len(images))
    hw = tuple(images.shape[-2:])
    return StepPlans(
        lambda e: plan_epoch(len(images), hw, bs, aug, cfg.seed + 7919, e), world=world, rank=rank
    )


@torch.no_grad()
def agreement(
    projector: nn.Module,
    teacher: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    batch: int = 256,
) -> dict[str, float]:
    """Projector top-1 (%), teacher top-1 (%), and their top-1 agreement (%) on `images`."""
    p = torch.cat([projector(x).argmax(-1) for x in images.split(batch)])
    t = torch.cat([teacher(x).float().argmax(-1) for x in images.split(batch)])
    return {
        "projector_top1": 100.0 * (p == labels).float().mean().item(),
        "teacher_top1": 100.0 * (t == labels).float().mean().item(),
        "agreement": 100.0 * (p == t).float().mean().item(),
    }
