"""spconv on CPU against dense conv3d, the U-Net, the diffusion sampler and the distillation
gradient."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scorelidar_cli.diffusion import Schedule, make_scheduler, partial_sample, sample
from scorelidar_cli.distill import (
    distillation_term,
    public_code_term,
    student_sample,
    vsd_gradient,
)
from scorelidar_cli.model import PRESETS, build_model, conv_algo, patch_spconv_for_cpu
from shared.profiling import count_params

spconv = pytest.importorskip("spconv.pytorch")


def _sparse_input(n: int = 60, size: int = 8, channels: int = 4):
    g = torch.Generator().manual_seed(0)
    flat = torch.randperm(size**3, generator=g)[:n]
    idx = torch.stack([flat // size**2, flat // size % size, flat % size], 1)
    indices = torch.cat([torch.zeros(n, 1, dtype=torch.long), idx], 1).int()
    feats = torch.randn(n, channels, generator=g, dtype=torch.float64)
    dense = torch.zeros(1, channels, size, size, size, dtype=torch.float64)
    dense[0, :, idx[:, 0], idx[:, 1], idx[:, 2]] = feats.T
    return indices, feats, dense, idx


@pytest.mark.parametrize("kind", ["subm", "strided"])
def test_spconv_matches_dense_conv3d_forward_and_backward(kind: str) -> None:
    patch_spconv_for_cpu()
    indices, feats, dense, idx = _sparse_input()
    if kind == "subm":
        conv = spconv.SubMConv3d(4, 5, 3, algo=conv_algo(), bias=False)
    else:
        conv = spconv.SparseConv3d(4, 5, 2, 2, algo=conv_algo(), bias=False)
    conv = conv.double()
    feats.requires_grad_(True)
    out = conv(spconv.SparseConvTensor(feats, indices, [8, 8, 8], 1))
    weight = conv.weight.detach().clone().requires_grad_(True)  # (out, k, k, k, in)
    dense.requires_grad_(True)
    ref = F.conv3d(
        dense, weight.permute(0, 4, 1, 2, 3), padding=1 if kind == "subm" else 0,
        stride=1 if kind == "subm" else 2,
    )  # fmt: skip
    at = out.indices[:, 1:].long()
    ref_at = ref[0, :, at[:, 0], at[:, 1], at[:, 2]].T
    torch.testing.assert_close(out.features, ref_at, atol=1e-10, rtol=1e-10)
    if kind == "strided":  # every dense output touched by an input is an output site
        assert len(at) == len({tuple((i // 2).tolist()) for i in idx})
    probe = torch.randn_like(ref_at)
    (out.features * probe).sum().backward()
    (ref_at * probe).sum().backward()
    torch.testing.assert_close(conv.weight.grad, weight.grad, atol=1e-10, rtol=1e-10)
    dense_grad = dense.grad[0, :, idx[:, 0], idx[:, 1], idx[:, 2]].T
    torch.testing.assert_close(feats.grad, dense_grad, atol=1e-10, rtol=1e-10)


def _toy_batch(n: int = 600):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g) * torch.tensor([8.0, 8.0, 0.5])
    batch = (torch.arange(n) >= n // 2).long()
    return x, batch, x[::3].clone(), batch[::3].clone()


def test_unet_forward_backward_and_condition_dropout() -> None:
    net = build_model("tiny")
    x, batch, cond, cond_batch = _toy_batch()
    t = torch.tensor([5, 900])
    eps = net(x, batch, t, cond, cond_batch)
    assert eps.shape == x.shape and torch.isfinite(eps).all()
    eps.pow(2).mean().backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert sum(g is not None and bool(g.abs().sum() > 0) for g in grads) > 0.8 * len(grads)
    with torch.no_grad():
        # gates depend on the condition: different scans give different predictions
        other = net(x, batch, t, cond + 0.5, cond_batch)
        dropped = net(x, batch, t, cond, cond_batch, torch.tensor([True, False]))
        dropped_b = net(x, batch, t, cond + 0.5, cond_batch, torch.tensor([True, False]))
        eps = net(x, batch, t, cond, cond_batch)
    assert not torch.allclose(eps, other)
    half = batch == 0  # scene 0 dropped its condition: the scan no longer matters there
    torch.testing.assert_close(dropped[half], dropped_b[half])
    assert not torch.allclose(dropped[~half], dropped_b[~half])


def test_lidiff_preset_builds_with_published_size() -> None:
    net = build_model("lidiff")
    assert 20e6 < count_params(net) < 30e6  # LiDiff's MinkUNet: about 25 M
    assert PRESETS["lidiff"].voxel == 0.05 and PRESETS["lidiff"].n_cond * 10 == 180000


def test_sampler_with_an_exact_denoiser_reaches_the_target() -> None:
    """With the exact posterior-mean denoiser of a point set, DPM-Solver++ on offsets lands
    on that set; fewer steps land less precisely."""
    schedule = Schedule()
    sig = schedule.sigmas()
    g = torch.Generator().manual_seed(0)
    target = torch.randn(300, 3, generator=g, dtype=torch.float64) * 5

    def exact(x, batch, t, cond, cond_batch, drop=None):
        s = float(sig[int(t[0])])
        w = torch.softmax(-(torch.cdist(x, target) ** 2) / (2 * s * s), 1)
        return (x - w @ target) / s

    x_init = target[torch.randint(0, 300, (300,), generator=g)] + 0.3 * torch.randn(
        300, 3, generator=g, dtype=torch.float64
    )
    batch = torch.zeros(300, dtype=torch.long)
    errs = {}
    for steps in (4, 30):
        out = sample(exact, x_init, batch, target, batch, steps, schedule, generator=g)
        errs[steps] = torch.cdist(out, target).min(1).values.mean().item()
    assert errs[30] < 0.01 < errs[4]


def test_partial_sample_stops_where_the_full_sampler_passes() -> None:
    """`partial_sample` is the sampler cut short: 0 steps give the start x_init + sigma_T eps,
    all steps give `sample`'s completion, and a student sample from a cut point is that
    point's x_0 estimate x_t - sigma_t eps."""
    schedule = Schedule()
    sig = schedule.sigmas()
    target = torch.randn(50, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def exact(x, batch, t, cond, cond_batch, drop=None):
        s = float(sig[int(t[0])])
        w = torch.softmax(-(torch.cdist(x, target) ** 2) / (2 * s * s), 1)
        return (x - w @ target) / s

    x_init, batch = target + 0.2, torch.zeros(50, dtype=torch.long)

    def run(stop: int, steps: int = 8):
        g = torch.Generator().manual_seed(3)
        return partial_sample(exact, x_init, batch, target, batch, steps, stop, generator=g)

    start, t0 = run(0)
    noise = torch.randn(
        x_init.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    assert t0 == schedule.steps - 1
    torch.testing.assert_close(start, x_init + float(sig[-1]) * noise)
    full = sample(
        exact, x_init, batch, target, batch, 8, generator=torch.Generator().manual_seed(3)
    )
    end, t_end = run(8)
    assert t_end == 0 and torch.equal(end, full)
    scheduler = make_scheduler(schedule)
    scheduler.set_timesteps(8)
    mid, t_mid = run(4)
    assert t_mid == int(scheduler.timesteps[4]) and 0 < t_mid < t0
    err = {k: torch.cdist(v, target).min(1).values.mean().item() for k, v in
           {"start": start, "mid": mid, "end": end}.items()}  # fmt: skip
    assert err["end"] < err["mid"] < err["start"]
    x0 = student_sample(exact, mid, batch, target, batch, schedule, t_mid)
    torch.testing.assert_close(
        x0, mid - float(sig[t_mid]) * exact(mid, batch, torch.tensor([t_mid]), 0, 0)
    )


# -- the distillation gradient on a toy distribution ---------------------------------------
def _gaussian_eps(mean: torch.Tensor, spread: float, schedule: Schedule):
    """Exact eps-prediction of points ~ N(mean, spread^2 I) under x_t = x_0 + sigma eps."""
    sig = schedule.sigmas()

    def eps(x, batch, t, cond, cond_batch, drop=None):
        s = sig.to(x.dtype)[t][batch][:, None]
        return s * (x - mean) / (spread**2 + s**2)

    return eps


def test_distillation_term_alone_moves_student_toward_teacher() -> None:
    schedule = Schedule()
    g = torch.Generator().manual_seed(0)
    real_mean = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)  # the student's "weights"
    spread, n = 0.3, 400
    batch = torch.zeros(n, dtype=torch.long)
    z = torch.randn(n, 3, generator=g, dtype=torch.float64)
    real = _gaussian_eps(real_mean, spread, schedule)
    fake = _gaussian_eps(theta.detach(), spread, schedule)  # fake score fits the student
    t = torch.tensor([500])
    noise = torch.randn(n, 3, generator=g, dtype=torch.float64)
    x_hat = theta + spread * z
    loss = distillation_term(x_hat, batch, None, None, real, fake, schedule, t, noise)
    loss.backward()
    step = -theta.grad
    assert step.norm() > 0
    cos = torch.dot(step, real_mean) / (step.norm() * real_mean.norm())
    assert cos > 0.99  # points from the student's mean to the teacher's

    # a few plain SGD steps with the fake score refit each time close most of the gap
    with torch.no_grad():
        theta.zero_()
    for _ in range(20):
        theta.grad = None
        fake = _gaussian_eps(theta.detach(), spread, schedule)
        x_hat = theta + spread * z
        distillation_term(x_hat, batch, None, None, real, fake, schedule, t, noise).backward()
        with torch.no_grad():
            theta -= 0.2 * theta.grad
    assert (theta.detach() - real_mean).norm() < 0.2 * real_mean.norm()


def test_public_code_term_gives_exactly_zero_gradient() -> None:
    schedule = Schedule()
    real_mean = torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64)
    theta = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    n = 200
    batch = torch.zeros(n, dtype=torch.long)
    x_hat = theta + 0.3 * torch.randn(n, 3, dtype=torch.float64)
    sigma = schedule.sigmas()[500]
    x_t = x_hat + sigma * torch.randn(n, 3, dtype=torch.float64)  # noised with the graph
    t = torch.tensor([500])
    eps_real = _gaussian_eps(real_mean, 0.3, schedule)(x_t, batch, t, None, None)
    eps_fake = _gaussian_eps(theta.detach(), 0.3, schedule)(x_t, batch, t, None, None)
    public_code_term(x_hat, eps_real, eps_fake, x_t).backward()
    assert torch.count_nonzero(theta.grad) == 0
    # while ours, from the same scores, is not zero
    grad = vsd_gradient(x_hat, eps_real, eps_fake, sigma.expand(n), batch, x_t.detach())
    assert grad.abs().sum() > 0


def test_refinement_multiplies_points_and_learns_to_fill_a_surface() -> None:
    from scorelidar_cli.refine import RefineConfig, RefineNet, refine_loss
    from scorelidar_cli.structural import chamfer_loss

    g = torch.Generator().manual_seed(0)
    gt = torch.cat([torch.rand(2000, 2, generator=g) * 8, torch.zeros(2000, 1)], 1)
    coarse = gt[torch.randperm(2000, generator=g)[:200]] + 0.05 * torch.randn(200, 3, generator=g)
    batch = torch.zeros(200, dtype=torch.long)
    net = RefineNet(RefineConfig(channels=[8, 16]))
    refined, rb = net(coarse, batch)
    assert refined.shape == (1200, 3) and (rb == 0).all()  # x6 points
    assert (refined.view(200, 6, 3) - coarse[:, None]).abs().max() <= 0.3  # stays local
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(25):
        loss = refine_loss(net, coarse, batch, [gt])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(chamfer_loss(net(coarse, batch)[0], gt))
    assert after < 0.75 * float(chamfer_loss(coarse, gt))
