"""The two training loops: the LiDiff teacher and the ScoreLiDAR student.

Both are plain loops over random frames with hooks for progress and checkpointing (the CLI
passes shared.runs.Run.step_done); under torchrun/srun each rank draws its own frames and
DDP averages the gradients.
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
from shared.runs import check_finite

StepHook = Callable[[int, dict[str, float]], None]


def _frames(rng: np.random.Generator, pool: FramePool, count: int) -> list[int]:
    return rng.choice(len(pool), count, replace=len(pool) < count).tolist()


def _rank_rng(seed: int, step: int) -> np.random.Generator:
    from shared import distributed

    # depends on the step, so a resumed run draws the frames it would have drawn
    return np.random.default_rng([seed, distributed.rank(), step])


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
    rng = _rank_rng(config.seed, step)
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
    device: torch.device,
    state: dict[str, Any] | None = None,
    on_step: StepHook | None = None,
    save_state: Callable[[int, Callable[[], dict[str, Any]]], None] | None = None,
) -> dict[str, float]:
    from shared import distributed

    schedule = Schedule()
    net.to(device).train()
    wrapped = distributed.wrap_ddp(net, device)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(config.steps, 1))
    first = 1
    if state:
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["lr"])
        first = int(state["step"]) + 1
    losses: list[float] = []

    def make_state() -> dict[str, Any]:
        return {
            "model": net.state_dict(),
            "optimizer": opt.state_dict(),
            "lr": sched.state_dict(),
            "step": step,
        }

    step = first - 1
    for step in range(first, config.steps + 1):
        loss = teacher_step(wrapped, pool, config, schedule, step, device)
        check_finite(loss, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, {"loss": losses[-1]})
        if save_state is not None:
            save_state(step, make_state)
    distributed.check_replicas(net, "teacher")
    return {"final_loss": _recent_mean(losses), "steps": config.steps}


def _recent_mean(losses: list[float]) -> float:
    """Mean of the last tenth of the logged losses (NaN when this run took no step)."""
    tail = losses[-max(1, len(losses) // 10) :]
    return float(np.mean(tail)) if tail else float("nan")


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
    """Student G and fake score, both initialised from the frozen teacher."""

    def __init__(self, teacher: CompletionUNet, device: torch.device) -> None:
        from shared import distributed

        self.teacher = teacher.to(device).eval().requires_grad_(False)
        self.student = copy.deepcopy(teacher).train().requires_grad_(True)
        self.fake = copy.deepcopy(teacher).train().requires_grad_(True)
        self.student_ddp = distributed.wrap_ddp(self.student, device)
        self.fake_ddp = distributed.wrap_ddp(self.fake, device)
        self.device = device

    def step(
        self,
        pool: FramePool,
        config: DistillConfig,
        opt_g: torch.optim.Optimizer,
        opt_f: torch.optim.Optimizer,
        step: int,
    ) -> dict[str, float]:
        schedule = Schedule()
        rng = _rank_rng(config.seed, step)
        b = pool.batch(_frames(rng, pool, config.batch_size), self.teacher.config, rng, self.device)
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        k = int(rng.integers(config.sampler_steps)) if config.sampler_steps > 1 else 0
        x_t, t_k = partial_sample(
            self.student, b.x_init, b.batch, b.cond, b.cond_batch, config.sampler_steps, k,
            schedule, generator=gen,
        )  # fmt: skip
        x_hat = student_sample(self.student_ddp, x_t, b.batch, b.cond, b.cond_batch, schedule, t_k)

        t = torch.randint(config.t_min, config.t_max + 1, (b.size,), generator=gen).to(self.device)
        noise = torch.randn(x_hat.shape, generator=gen).to(self.device)
        vsd = distillation_term(
            x_hat, b.batch, b.cond, b.cond_batch, self.teacher, self.fake, schedule, t, noise,
            config.real_guidance,
        )  # fmt: skip
        loss = config.vsd_weight * vsd
        logs = {"vsd": float(vsd.detach())}
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
        check_finite(loss, step)
        opt_g.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
        opt_g.step()

        # the fake score follows the student's current samples
        t_f = torch.randint(0, schedule.steps, (b.size,), generator=gen).to(self.device)
        noise_f = torch.randn(x_hat.shape, generator=gen).to(self.device)
        f_loss = fake_score_loss(
            self.fake_ddp, x_hat.detach(), b.batch, b.cond, b.cond_batch, schedule, t_f, noise_f
        )
        check_finite(f_loss, step)
        opt_f.zero_grad(set_to_none=True)
        f_loss.backward()
        torch.nn.utils.clip_grad_norm_(self.fake.parameters(), 1.0)
        opt_f.step()
        return logs | {"loss": float(loss.detach()), "fake_loss": float(f_loss.detach())}


def distill_student(
    teacher: CompletionUNet,
    pool: FramePool,
    config: DistillConfig,
    device: torch.device,
    state: dict[str, Any] | None = None,
    on_step: StepHook | None = None,
    save_state: Callable[[int, Callable[[], dict[str, Any]]], None] | None = None,
) -> tuple[CompletionUNet, dict[str, float]]:
    d = Distiller(teacher, device)
    opt_g = torch.optim.AdamW(d.student.parameters(), lr=config.lr, weight_decay=0.0)
    opt_f = torch.optim.AdamW(d.fake.parameters(), lr=config.fake_lr, weight_decay=0.0)
    first = 1
    if state:
        d.student.load_state_dict(state["student"])
        d.fake.load_state_dict(state["fake"])
        opt_g.load_state_dict(state["opt_g"])
        opt_f.load_state_dict(state["opt_f"])
        first = int(state["step"]) + 1
    history: list[dict[str, float]] = []

    def make_state() -> dict[str, Any]:
        return {
            "student": d.student.state_dict(),
            "fake": d.fake.state_dict(),
            "opt_g": opt_g.state_dict(),
            "opt_f": opt_f.state_dict(),
            "step": step,
        }

    step = first - 1
    for step in range(first, config.steps + 1):
        logs = d.step(pool, config, opt_g, opt_f, step)
        history.append(logs)
        if on_step is not None:
            on_step(step, logs)
        if save_state is not None:
            save_state(step, make_state)
    from shared import distributed

    distributed.check_replicas(d.student, "student")
    distributed.check_replicas(d.fake, "fake score")
    tail = history[-max(1, len(history) // 10) :]
    summary = {k: float(np.mean([h[k] for h in tail])) for k in tail[0]} if tail else {}
    return d.student.eval(), {f"final_{k}": v for k, v in summary.items()}


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
    device: torch.device,
    state: dict[str, Any] | None = None,
    on_step: StepHook | None = None,
    save_state: Callable[[int, Callable[[], dict[str, Any]]], None] | None = None,
) -> dict[str, float]:
    """Chamfer training of the refinement net on coarse completions of the training frames
    (`coarse(i)`, computed once per frame by the caller, as LiDiff precomputes them)."""
    from scorelidar_cli.pipeline import collate, sample_ground_truth
    from scorelidar_cli.refine import refine_loss
    from shared import distributed

    refiner.to(device).train()
    wrapped = distributed.wrap_ddp(refiner, device)
    opt = torch.optim.AdamW(refiner.parameters(), lr=config.lr, weight_decay=1e-4)
    first = 1
    if state:
        refiner.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        first = int(state["step"]) + 1
    losses: list[float] = []

    def make_state() -> dict[str, Any]:
        return {"model": refiner.state_dict(), "optimizer": opt.state_dict(), "step": step}

    step = first - 1
    for step in range(first, config.steps + 1):
        rng = _rank_rng(config.seed, step)
        items = []
        for i in _frames(rng, pool, config.batch_size):
            pred = coarse(i)
            gt = sample_ground_truth(pool.get(i)[1], len(pred) * refiner.config.up, rng)
            items.append((pred, pred, gt))
        b = collate(items, device)
        loss = refine_loss(wrapped, b.x_init, b.batch, b.gt)
        check_finite(loss, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if on_step is not None:
            on_step(step, {"loss": losses[-1]})
        if save_state is not None:
            save_state(step, make_state)
    distributed.check_replicas(refiner, "refiner")
    return {"final_chamfer": _recent_mean(losses), "steps": config.steps}
