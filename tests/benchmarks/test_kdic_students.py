"""The kdic students benchmark: its paired verdict (both the t interval over seeds and the
bootstrap over photos must exclude 0 before one arm beats another) on constructed per-photo
numbers, and a tiny end-to-end run of the real `kdic` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from benchmarks import kdic_students as bench
from tests.helpers import REPO

SEEDS, PHOTOS = 3, 13


def _base() -> torch.Tensor:
    """Per-(seed, photo) RD costs of a reference arm: photos differ a lot, as real ones do."""
    gen = torch.Generator().manual_seed(0)
    photo = 1 + 4 * torch.rand(PHOTOS, generator=gen, dtype=torch.float64)
    return photo.expand(SEEDS, PHOTOS) + 0.05 * torch.randn(
        SEEDS, PHOTOS, generator=gen, dtype=torch.float64
    )


def _noise(scale: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(SEEDS, PHOTOS, generator=gen, dtype=torch.float64)


def test_clearly_lower_cost_beats_and_the_other_side_is_worse() -> None:
    control = _base()
    kd = control - 0.3 + _noise(0.02, 1)
    res = bench.compare(kd, control, lower_is_better=True)
    assert res["t"]["high"] < 0 and res["bootstrap"]["high"] < 0
    assert res["verdict"] == "beats"
    assert res["diff"] == pytest.approx(float((kd - control).mean()))
    assert bench.compare(control, kd, lower_is_better=True)["verdict"] == "worse"
    # PSNR: higher is better, so the same numbers read the other way
    assert bench.compare(kd, control, lower_is_better=False)["verdict"] == "worse"


def test_noise_alone_is_on_par() -> None:
    control = _base()
    kd = control + _noise(0.05, 2)
    res = bench.compare(kd, control, lower_is_better=True)
    assert res["t"]["low"] < 0 < res["t"]["high"]
    assert res["bootstrap"]["low"] < 0 < res["bootstrap"]["high"]
    assert res["verdict"] == "on par"


def test_one_interval_excluding_zero_is_not_enough() -> None:
    control = _base()
    # the same small gain on every photo, but the seeds disagree: the bootstrap over photos
    # excludes 0, the t interval over 3 seeds does not
    seed_shift = torch.tensor([-0.6, -0.1, 0.4], dtype=torch.float64)[:, None]
    kd = control - 0.1 + seed_shift + _noise(0.005, 3)
    res = bench.compare(kd, control, lower_is_better=True)
    assert res["bootstrap"]["verdict"] == "beats"
    assert res["t"]["verdict"] == "on par"
    assert res["verdict"] == "on par"
    # the other way round: every seed gives the same mean gain, but the photos disagree
    photo = torch.linspace(-1.5, 1.5, PHOTOS, dtype=torch.float64) - 0.1
    kd = control + photo.expand(SEEDS, PHOTOS)
    res = bench.compare(kd, control, lower_is_better=True)
    assert res["t"]["verdict"] == "beats"
    assert res["bootstrap"]["verdict"] == "on par"
    assert res["verdict"] == "on par"


def test_one_seed_has_no_t_interval_and_is_on_par() -> None:
    control = _base()[:1]
    res = bench.compare(control - 1.0, control, lower_is_better=True)
    assert res["t"]["low"] is None and res["bootstrap"]["verdict"] == "beats"
    assert res["verdict"] == "on par"


def test_plan_gives_every_arm_the_same_steps_and_seed(tmp_path) -> None:
    steps = dict(bench.plan(tmp_path / "t.safetensors", 0.013, 4, 24, 12, tmp_path))

    def value(args: list[str], flag: str) -> str:
        return args[args.index(flag) + 1]

    assert all(value(a, "--seed") == "4" for a in steps.values())
    total = {a: int(value(steps[a], "--steps")) for a in ("control", "scratch")}
    total["KD"] = int(value(steps["kd-distill"], "--steps")) + int(value(steps["kd"], "--steps"))
    assert total == {"control": 36, "scratch": 36, "KD": 36}
    init = str(tmp_path / "init")
    assert value(steps["control"], "--model") == value(steps["scratch"], "--model") == init
    assert "--scratch" in steps["scratch"] and "--scratch" not in steps["control"]
    assert value(steps["kd-distill"], "--student") == init


def test_a_finished_step_is_reused_without_running(tmp_path) -> None:
    (tmp_path / "kd").mkdir()
    (tmp_path / "kd" / bench.MODEL).write_bytes(b"")
    logged: list[str] = []
    assert bench.step(tmp_path / "kd", ["no-such-command"], logged.append) is None
    assert logged and "reused" in logged[0]


@pytest.mark.slow
def test_tiny_end_to_end_run(tmp_path) -> None:
    """About 2 minutes on one core: 10 kdic commands and 7 codecs on 13 photos."""
    env = {**os.environ, "TOOLKIT_RESULTS_DIR": str(tmp_path / "results"),
           "OMP_NUM_THREADS": "1"}  # fmt: skip
    cmd = [sys.executable, "-m", "benchmarks.kdic_students", "--scale", "0.005",
           "--seeds", "0", "1", "--work", str(tmp_path / "work"), "--allow-dirty"]  # fmt: skip
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    out = tmp_path / "results" / "kdic"
    for ext in ("json", "md", "png"):
        assert (out / f"students.{ext}").stat().st_size > 0
    data = json.loads((out / "students.json").read_text())
    assert data["protocol"]["seeds"] == [0, 1]
    assert len(data["protocol"]["photos"]) == PHOTOS
    assert data["protocol"]["steps"] == {"distill": 12, "finetune": 6, "total": 18}
    assert data["protocol"]["distinct_inits"] == 2  # build-student's crops follow the seed
    assert set(data["arms"]) == set(bench.ARMS)
    for arm in bench.ARMS:
        seeds = data["arms"][arm]["seeds"]
        assert sorted(seeds) == ["0", "1"]
        for s in seeds.values():
            assert len(s["images"]) == PHOTOS
            assert all(r["J"] > r["payload_bpp"] > 0 for r in s["images"])
    assert len(data["stats"]["pairs"]) == 2 * len(bench.PAIRS)
    md = (out / "students.md").read_text()
    assert "Verdict rule" in md and data["protocol"]["teacher"]["sha256"] in md
    # --report-only rewrites the md from the json, keeping the measuring run's provenance
    rerun = subprocess.run(cmd + ["--report-only"], cwd=REPO, env=env, check=True,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert "measured by" in (out / "students.md").read_text(), rerun.stdout[-2000:]
