"""The three training commands as step functions on the shared engine (`shared.train`):
the LiDiff teacher, the ScoreLiDAR student (with its fake score) and the refinement net.

Each step draws its frames from `step_rng(seed, step)`, so a resumed run sees the frames the
uninterrupted run would have seen; under torchrun/srun each rank draws its own frames and DDP
averages the gradients. Checkpoints, resume, signals and progress belong to the `Trainer`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scorelidar_cli.diffusion import Schedule, add_noise, lidiff_loss, partial_sample
from scorelidar_cli.distill import distillation_term, fake_score_loss, student_sample
from scorelidar_cli.model import CompletionUNet
from scorelidar_cli.pipeline import FramePool
from scorelidar_cli.structural import key_points, structural_loss
from shared import distributed
from shared.train import Trainer, step_rng


def _frames(rng: np.random.Generator, pool: FramePool, count: int) -> list[int]:
    return rng.choice(len(pool), count, replace=len(pool) < count).tolist()


@dataclass
class TeacherConfig:
    steps: int = 2000
    batch_size: int = 2
    lr: float = 2e-3
    cfg_dropout: float = 0.1
    reg_weight: float = 5.0
    seed: int = 0


def teacher_step(
    net: torch.nn.Module,
    pool: FramePool,
    config: TeacherConfig,
    schedule: Schedule,
    step: int,
    device: torch.device,
) -> torch.Tensor:
    """LiDiff's loss on one batch: noise the ground truth, predict the noise."""
    model_config = net.module.config if hasattr(net, "module") else net.config
    rng = step_rng(config.seed, step)
    b = pool.batch(_frames(rng, pool, config.batch_size), model_config, rng, device)
    x0 = torch.cat(b.gt)
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    t = torch.randint(0, schedule.steps, (b.size,), generator=gen).to(device)
    noise = torch.randn(x0.shape, generator=gen).to(device)
    drop = (torch.rand(b.size, generator=gen) < config.cfg_dropout).to(device)
    x_t = add_noise(x0, t, b.batch, schedule, noise)
    eps_hat = net(x_t, b.batch, t, b.cond, b.cond_batch, drop)
    return lidiff_loss(eps_hat, noise, config.reg_weight)


def train_teacher(
    net: CompletionUNet,
    pool: FramePool,
    config: TeacherConfig,
    device: torch.device | str = "cpu",
    run: Any | None = None,
) -> dict[str, float]:
    """AdamW (cosine schedule, gradients clipped to norm 1) on LiDiff's loss; `run` (a
    shared.runs.Run or None) gives checkpoints, resume and signal handling."""
    device = torch.device(device)
    schedule = Schedule()
    net.to(device)
    wrapped = distributed.wrap_ddp(net, device)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(config.steps, 1))
    trainer = Trainer(config.steps, run=run, device=device, description="train-teacher")
    trainer.track(teacher=wrapped, opt=opt, sched=sched)

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        with trainer.autocast():
            loss = teacher_step(wrapped, pool, config, schedule, step, device)
        trainer.optimize(loss, opt, clip=1.0, scheduler=sched)
        return {"loss": loss}

    return trainer.fit(step_fn)


@dataclass
class DistillConfig:
    steps: int = 500
    batch_size: int = 1
    lr: float = 2e-4
    fake_lr: float = 2e-4
    vsd_weight: float = 1.0
    scene_weight: float = 0.5
    point_weight: float = 0.01
    key_fraction: float = 1 / 30
    structural: bool = True
    real_guidance: float = 1.0
    # 1: the paper's one-step student sample at t = T. K > 1: run the student's own K-step
    # sampler (no grad) to a random one of its K steps and train the sample from there, so
    # every step a K-step completion takes is trained on the inputs it really sees
    sampler_steps: int = 1
    t_min: int = 20
    t_max: int = 980
    seed: int = 0


class Distiller:
    """Student G and fake score, both initialised from the frozen teacher, with their AdamW
    optimizers (`lr` for the student, `fake_lr` for the fake score)."""

    def __init__(self, teacher: CompletionUNet, config: DistillConfig, device: torch.device):
        self.config = config
        self.teacher = teacher.to(device).eval().requires_grad_(False)
        self.student = copy.deepcopy(teacher).train().requires_grad_(True)
        self.fake = copy.deepcopy(teacher).train().requires_grad_(True)
        self.student_ddp = distributed.wrap_ddp(self.student, device)
        self.fake_ddp = distributed.wrap_ddp(self.fake, device)
        self.opt_g = torch.optim.AdamW(self.student.parameters(), lr=config.lr, weight_decay=0.0)
        self.opt_f = torch.optim.AdamW(self.fake.parameters(), lr=config.fake_lr, weight_decay=0.0)
        self.device = device

    def track(self, trainer: Trainer) -> Trainer:
        return trainer.track(
            student=self.student_ddp, fake=self.fake_ddp, opt_g=self.opt_g, opt_f=self.opt_f
        )

    def step(self, pool: FramePool, trainer: Trainer, step: int) -> dict[str, torch.Tensor]:
        """One student update (score distillation + structural loss) and one fake-score
        update on the student's new samples, both clipped to gradient norm 1."""
        config = self.config
        schedule = Schedule()
        rng = step_rng(config.seed, step)
        b = pool.batch(_frames(rng, pool, config.batch_size), self.teacher.config, rng, self.device)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        k = int(rng.integers(config.sampler_steps)) if config.sampler_steps > 1 else 0
        with trainer.autocast():
            x_t, t_k = partial_sample(
                self.student, b.x_init, b.batch, b.cond, b.cond_batch, config.sampler_steps, k,
                schedule, generator=gen,
            )  # fmt: skip
            x_hat = student_sample(
                self.student_ddp, x_t, b.batch, b.cond, b.cond_batch, schedule, t_k
            )
            t = torch.randint(config.t_min, config.t_max + 1, (b.size,), generator=gen)
            t = t.to(self.device)
            noise = torch.randn(x_hat.shape, generator=gen).to(self.device)
            vsd = distillation_term(
                x_hat, b.batch, b.cond, b.cond_batch, self.teacher, self.fake, schedule,
                t, noise, config.real_guidance,
            )  # fmt: skip
            loss = config.vsd_weight * vsd
            logs: dict[str, Any] = {"vsd": vsd.detach()}
            if config.structural:
                for i, gt in enumerate(b.gt):
                    keys = torch.as_tensor(
                        key_points(gt.cpu().numpy(), config.key_fraction), device=self.device
                    )
                    s_loss, s_logs = structural_loss(
                        x_hat[b.batch == i], gt, keys, config.scene_weight, config.point_weight
                    )
                    loss = loss + s_loss / b.size
                    logs |= s_logs
        trainer.optimize(loss, self.opt_g, clip=1.0)

        # the fake score follows the student's current samples
        t_f = torch.randint(0, schedule.steps, (b.size,), generator=gen).to(self.device)
        noise_f = torch.randn(x_hat.shape, generator=gen).to(self.device)
        with trainer.autocast():
            f_loss = fake_score_loss(
                self.fake_ddp, x_hat.detach(), b.batch, b.cond, b.cond_batch, schedule, t_f,
                noise_f,
            )  # fmt: skip
        trainer.optimize(f_loss, self.opt_f, clip=1.0)
        return logs | {"loss": loss.detach(), "fake_loss": f_loss.detach()}


def distill_student(
    teacher: CompletionUNet,
    pool: FramePool,
    config: DistillConfig,
    device: torch.device | str = "cpu",
    run: Any | None = None,
) -> tuple[CompletionUNet, dict[str, float]]:
    """The trained student (in eval mode) and the run's summary (`final_<log>`)."""
    device = torch.device(device)
    d = Distiller(teacher, config, device)
    trainer = d.track(Trainer(config.steps, run=run, device=device, description="distill"))
    info = trainer.fit(lambda step: d.step(pool, trainer, step))
    return d.student.eval(), info


@dataclass
class RefineTrainConfig:
    steps: int = 300
    batch_size: int = 1
    lr: float = 2e-3
    seed: int = 0


def train_refiner(
    refiner: torch.nn.Module,
    pool: FramePool,
    coarse: Callable[[int], np.ndarray],
    config: RefineTrainConfig,
    device: torch.device | str = "cpu",
    run: Any | None = None,
) -> dict[str, float]:
    """Chamfer training of the refinement net on coarse completions of the training frames
    (`coarse(i)`, computed once per frame by the caller, as LiDiff precomputes them)."""
    from scorelidar_cli.pipeline import collate, sample_ground_truth
    from scorelidar_cli.refine import refine_loss

    device = torch.device(device)
    refiner.to(device)
    wrapped = distributed.wrap_ddp(refiner, device)
    opt = torch.optim.AdamW(refiner.parameters(), lr=config.lr, weight_decay=1e-4)
    trainer = Trainer(config.steps, run=run, device=device, description="train-refine")
    trainer.track(refiner=wrapped, opt=opt)

    def step_fn(step: int) -> dict[str, torch.Tensor]:
        rng = step_rng(config.seed, step)
        items = []
        for i in _frames(rng, pool, config.batch_size):
            pred = coarse(i)
            gt = sample_ground_truth(pool.get(i)[1], len(pred) * refiner.config.up, rng)
            items.append((pred, pred, gt))
        b = collate(items, device)
        with trainer.autocast():
            loss = refine_loss(wrapped, b.x_init, b.batch, b.gt)
        trainer.optimize(loss, opt)
        return {"chamfer": loss.detach()}

    return trainer.fit(step_fn)
