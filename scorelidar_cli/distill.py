"""ScoreLiDAR's distillation: variational score distillation (VSD/DMD) from the teacher into
a few-step student, with a fake score trained online on the student's samples.

Sign: for x_t = x_hat + sigma eps, eps = (x_t - x_0)/sigma, so x_0 estimates are
x_t - sigma eps. The KL gradient moves x_hat from the fake-score's x_0 estimate toward the
teacher's: grad_x_hat = x0_fake - x0_real = sigma (eps_real - eps_fake) (descent direction
-grad). The loss below has exactly this gradient with respect to x_hat, and it flows into
the student through x_hat. (The public code multiplies the detached score difference by
x_t - x_hat = sigma eps, which does not depend on the student: zero gradient.)
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from scorelidar_cli.diffusion import Schedule, add_noise, guided_eps, lidiff_loss

Denoiser = Callable[..., torch.Tensor]


def student_sample(
    student: Denoiser,
    x_t: torch.Tensor,
    batch: torch.Tensor,
    cond: torch.Tensor,
    cond_batch: torch.Tensor,
    schedule: Schedule,
    t: int | None = None,
) -> torch.Tensor:
    """The student's sample from x_t at timestep t (default T, the one-step sample
    x_hat = x_T - sigma_T eps_G(x_T, T)): its x_0 estimate, differentiable."""
    t = schedule.steps - 1 if t is None else t
    bsz = int(batch.max()) + 1
    tt = torch.full((bsz,), t, dtype=torch.long, device=x_t.device)
    eps = student(x_t, batch, tt, cond, cond_batch)
    return x_t - float(schedule.sigmas()[t]) * eps


def vsd_gradient(
    x_hat: torch.Tensor,
    eps_real: torch.Tensor,
    eps_fake: torch.Tensor,
    sigma: torch.Tensor,
    batch: torch.Tensor,
    x_t: torch.Tensor,
) -> torch.Tensor:
    """grad = w (x0_fake - x0_real), w = 1 / mean|x_hat - x0_real| per scene (DMD's
    normaliser, which makes the step size independent of t)."""
    x0_real = x_t - sigma[:, None] * eps_real
    x0_fake = x_t - sigma[:, None] * eps_fake
    bsz = int(batch.max()) + 1
    err = (x_hat.detach() - x0_real).abs().mean(1)
    per_scene = torch.zeros(bsz, dtype=err.dtype, device=err.device).index_add_(0, batch, err)
    count = torch.bincount(batch, minlength=bsz).clamp_min(1)
    weight = 1.0 / (per_scene / count).clamp_min(1e-6)
    return weight[batch][:, None] * (x0_fake - x0_real)


def vsd_loss(x_hat: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """A scalar whose gradient with respect to x_hat is grad / N (grad is detached)."""
    return (grad.detach() * x_hat).sum(1).mean()


def distillation_term(
    x_hat: torch.Tensor,
    batch: torch.Tensor,
    cond: torch.Tensor,
    cond_batch: torch.Tensor,
    real: Denoiser,
    fake: Denoiser,
    schedule: Schedule,
    t: torch.Tensor,
    noise: torch.Tensor,
    guidance: float = 1.0,
) -> torch.Tensor:
    """The VSD loss of a student sample x_hat at diffusion time t (B,)."""
    with torch.no_grad():
        x_t = add_noise(x_hat.detach(), t, batch, schedule, noise)
        sigma = schedule.sigmas().to(x_hat.device, x_hat.dtype)[t][batch]
        eps_real = guided_eps(real, x_t, batch, t, cond, cond_batch, guidance)
        eps_fake = fake(x_t, batch, t, cond, cond_batch)
        grad = vsd_gradient(x_hat, eps_real, eps_fake, sigma, batch, x_t)
    return vsd_loss(x_hat, grad)


def fake_score_loss(
    fake: Denoiser,
    x_hat: torch.Tensor,
    batch: torch.Tensor,
    cond: torch.Tensor,
    cond_batch: torch.Tensor,
    schedule: Schedule,
    t: torch.Tensor,
    noise: torch.Tensor,
) -> torch.Tensor:
    """The plain denoising loss on (detached) student samples: the fake score tracks the
    student's distribution."""
    x_t = add_noise(x_hat.detach(), t, batch, schedule, noise)
    return lidiff_loss(fake(x_t, batch, t, cond, cond_batch), noise)


def public_code_term(
    x_hat: torch.Tensor, eps_real: torch.Tensor, eps_fake: torch.Tensor, x_t: torch.Tensor
) -> torch.Tensor:
    """The distillation term of the public ScoreLiDAR code, for comparison in tests:
    detached scores times (x_t - x_hat), which is sigma * noise and carries no gradient
    to the student."""
    return ((eps_fake - eps_real).detach() * (x_t - x_hat)).mean()
