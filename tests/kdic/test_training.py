"""The RD loss (compressai's) and the phase schedule of distill/finetune on the shared
trainer: per-phase optimizers chosen by step number, exact resume across a phase change."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.kdic.conftest import tiny


def test_rd_loss_is_compressais_rate_distortion_loss() -> None:
    """Our rd_loss is compressai's RateDistortionLoss (same lambda convention, bpp from the
    likelihoods, 255^2 * MSE): same numbers on the same codec output, and both equal the
    formula written out by hand."""
    from compressai.losses import RateDistortionLoss

    from kdic_cli.distill import bpp_from_likelihoods, rd_loss

    torch.manual_seed(0)
    model = tiny("mbt2018-mean").train()
    x = torch.rand(2, 3, 64, 64)
    out = model(x)
    ours = rd_loss(out, x, 0.013)
    theirs = RateDistortionLoss(lmbda=0.013)(out, x)
    assert torch.equal(ours["loss"], theirs["loss"])
    assert torch.equal(ours["bpp"], theirs["bpp_loss"])
    assert torch.equal(ours["mse"], theirs["mse_loss"])
    # written out: every likelihood 1/2 -> one bit per latent element
    lk = {"y": torch.full((2, 24, 4, 4), 0.5), "z": torch.full((2, 16, 1, 1), 0.5)}
    x_hat = x + 0.01
    got = rd_loss({"x_hat": x_hat, "likelihoods": lk}, x, 0.01)
    bits = 2 * 24 * 16 + 2 * 16
    assert got["bpp"].item() == pytest.approx(bits / (2 * 64 * 64))
    assert got["loss"].item() == pytest.approx(0.01 * 255**2 * 1e-4 + bits / (2 * 64 * 64))
    assert bpp_from_likelihoods(lk, 2 * 64 * 64).item() == pytest.approx(got["bpp"].item())
    assert math.isclose(bpp_from_likelihoods(out["likelihoods"], 2 * 64 * 64).item(),
                        ours["bpp"].item(), rel_tol=1e-6)  # fmt: skip


def test_stage_schedule() -> None:
    from kdic_cli.api import stage_schedule

    assert stage_schedule(4, 10) == [2, 2, 2, 4]  # the last stage takes the remainder
    assert stage_schedule(3, 2) == [1, 1, 1]  # every stage visited at least once
    assert stage_schedule(3, 0) == [0, 0, 0]
    assert sum(stage_schedule(11, 2000)) == 2000


class _Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)))


def _phases(model: _Toy, seen: list[tuple[int, str]], stop_at: int = 0, run=None) -> list:
    from kdic_cli.training import Phase

    def loss(name: str):
        def fn(x: torch.Tensor) -> dict[str, torch.Tensor]:
            seen.append((len(seen) + 1, name))
            if run is not None and len(seen) == stop_at:
                run.request_stop("SIGTERM")
            noise = 0.1 * torch.rand_like(x)  # global RNG: must be restored on resume
            return {"loss": model(x + noise).pow(2).mean()}

        return fn

    return [
        Phase("first", 2, list(model.a.parameters()), loss("first")),
        Phase("second", 3, list(model.b.parameters()), loss("second"), ddp_synced=False),
    ]


def _batches(step: int) -> torch.Tensor:
    return torch.randn(8, 4, generator=torch.Generator().manual_seed(step))


def _train(run=None, stop_at: int = 0) -> tuple[_Toy, list, list]:
    from kdic_cli.training import run_phases

    torch.manual_seed(0)
    model = _Toy()
    seen: list[tuple[int, str]] = []
    summary, _ = run_phases(_phases(model, seen, stop_at, run), _batches, model, lr=0.05,
                            aux_lr=1e-3, device="cpu", run=run)  # fmt: skip
    return model, seen, summary


def test_phases_follow_the_step_number_and_train_only_their_parameters() -> None:
    torch.manual_seed(0)
    start = {k: v.clone() for k, v in _Toy().state_dict().items()}
    model, seen, summary = _train()
    assert [name for _, name in seen] == ["first"] * 2 + ["second"] * 3
    assert [s["phase"] for s in summary] == ["first", "second"]
    assert all("loss" in s for s in summary)
    end = model.state_dict()
    assert not torch.equal(start["a.weight"], end["a.weight"])
    assert not torch.equal(start["b.weight"], end["b.weight"])


def test_resume_across_a_phase_change_is_exact(tmp_path) -> None:
    from shared.errors import Preempted
    from shared.runs import Run

    full, _, _ = _train()
    # stopped after step 3: in the second phase
    with pytest.raises(Preempted), Run(tmp_path, tool="kdic", command="test") as run:
        _train(run, stop_at=3)
    assert (tmp_path / "resume.pt").exists()
    with Run(tmp_path, tool="kdic", command="test", resume=True) as run:
        resumed, seen, summary = _train(run)
    assert [name for _, name in seen] == ["second"] * 2  # steps 4 and 5 only
    assert summary[0] == {"phase": "first"}  # finished before the resume
    a, b = full.state_dict(), resumed.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
