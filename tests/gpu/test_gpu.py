"""Checks that need CUDA (`make gpu-check`); skipped with the reason where none is present.

They cover what CPU tests cannot: the trainer's AMP step on a GPU, NCCL reductions over two
GPUs, latency timing that waits for the GPU (an unsynchronised timer measures only the
kernel launch), and each tool's Slurm example job run on the GPU that `--device auto` picks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO

pytestmark = pytest.mark.gpu


def test_trainer_amp_step_updates_weights_in_reduced_precision() -> None:
    from shared.train import Trainer

    dev = torch.device("cuda")
    model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
    model.to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    trainer = Trainer(3, device=dev, amp=True).track(model=model, opt=opt)
    before = [p.detach().clone() for p in model.parameters()]
    dtypes: list[torch.dtype] = []

    def step(s: int) -> dict:
        x = torch.randn(32, 64, device=dev)
        with trainer.autocast():
            y = model(x)
            dtypes.append(y.dtype)
            loss = y.float().pow(2).mean()
        trainer.optimize(loss, opt)
        return {"loss": loss}

    result = trainer.fit(step)
    assert result["steps"] == 3 and torch.isfinite(torch.tensor(result["final_loss"]))
    assert set(dtypes) <= {torch.bfloat16, torch.float16}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_latency_timing_waits_for_the_gpu() -> None:
    from shared.profiling import measure_latency

    cycles = 50_000_000  # ~25-50 ms of GPU time on current GPUs

    class Sleeper(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            torch.cuda._sleep(cycles)
            return x

    x = torch.zeros(1, device="cuda")
    kernel = []  # event-timed, after the same warm-up: an idle GPU's clock is lower at first
    for _ in range(4):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        torch.cuda._sleep(cycles)
        end.record()
        torch.cuda.synchronize()
        kernel.append(start.elapsed_time(end))
    kernel_ms = min(kernel[1:])
    ms = measure_latency(Sleeper(), x, warmup=1, iters=3, device="cuda")["median_ms"]
    # unsynchronised, the timer would see only the launch (~0.01 ms)
    assert ms >= 0.8 * kernel_ms, (ms, kernel)


_NCCL_WORKER = """
import json, sys, torch
from shared import distributed as D
env = D.init("cuda")
dev = torch.device("cuda", env.local_rank)
t = torch.tensor([float(env.rank + 1)], device=dev)
s = D.all_reduce(t.clone(), "sum").item()
m = D.all_reduce(t.clone(), "mean").item()
backend = torch.distributed.get_backend()
D.cleanup()
print(json.dumps({"rank": env.rank, "sum": s, "mean": m, "backend": backend}))
"""


@pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs"
)
def test_nccl_two_rank_reduction(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(_NCCL_WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-port", str(port), str(script)],
        cwd=REPO, capture_output=True, text=True, timeout=180,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    import json

    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert sorted(r["rank"] for r in rows) == [0, 1]
    assert all(r["backend"] == "nccl" and r["sum"] == 3.0 and r["mean"] == 1.5 for r in rows)


# each tool's Slurm example job (tests/test_slurm_examples.py), run as on a cluster node:
# `--device auto` must pick the GPU, which the run folder's log records
SLURM_JOBS = {
    "vbp": "test_vbp_job_finetunes_from_a_local_teacher_checkpoint",
    "kdic": "test_kdic_job_distils_a_tiny_student",
    "scorelidar": "test_scorelidar_job_distils_on_the_folder_holding_sequences",
    "hello": "test_hello_job_distils_the_projector",
    "tomerge": "test_tomerge_job_generates_and_a_requeued_job_starts_over",
}


def run_slurm_job(tool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run `tool`'s example job on GPU 0 (its own assertions included); the run folder's log."""
    from tests import test_slurm_examples as jobs

    monkeypatch.setattr(jobs, "JOB_CUDA_VISIBLE_DEVICES", "0")
    getattr(jobs, SLURM_JOBS[tool])(tmp_path)
    return (jobs._out(tmp_path, tool) / "log.txt").read_text()


@pytest.mark.parametrize("tool", sorted(SLURM_JOBS))
def test_each_tool_runs_a_short_job_on_the_gpu(
    tool: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert "device: cuda" in run_slurm_job(tool, tmp_path, monkeypatch)


# The example jobs' tiny models are below the merging break-even, so they do not merge; these
# merge every block on the GPU (partitions drawn on the CPU, tokens on the GPU).
@pytest.mark.parametrize("family", ["sd", "flux"])
def test_tomerge_merges_tokens_on_the_gpu(family: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import tomerge_cli
    from tomerge_cli import cost, tiny

    monkeypatch.setattr(cost, "MIN_WORK_CUDA", 0)
    if family == "sd":
        from tests.tomerge.conftest import call_kwargs

        pipe = tiny.tiny_sd().to("cuda")
        kw = call_kwargs(pipe, 4, seed=0)
        kw = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in kw.items()}

        def run() -> torch.Tensor:
            kw["generator"] = torch.Generator("cuda").manual_seed(0)
            return pipe(**kw).images
    else:
        from tests.tomerge.test_dit import _embeds, _flux, _flux_pipeline

        pipe = _flux_pipeline(_flux()).to("cuda")
        embeds = {k: v.cuda() for k, v in _embeds(negative=False).items()}

        def run() -> torch.Tensor:
            return pipe(
                **embeds, height=64, width=64, num_inference_steps=4, output_type="latent",
                generator=torch.Generator("cuda").manual_seed(1),
            ).images  # fmt: skip

    plain = run()
    tomerge_cli.apply_patch(pipe, ratio=0.5)
    merged = run()
    merger = tomerge_cli.get_merger(pipe.unet if family == "sd" else pipe.transformer)
    assert merger.stats["merged_calls"] > 0 and merged.is_cuda and torch.isfinite(merged).all()
    assert not torch.equal(merged, plain)
    tomerge_cli.remove_patch(pipe)
    assert torch.equal(run(), plain)
