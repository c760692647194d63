"""The vbp speed benchmark on tiny ViTs: the variants' widths and MACs, the rotated order of
the interleaved rounds, and a whole CLI run writing md/json/png with one speed-up interval
per pruned variant and batch size."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from benchmarks import vbp_speed as bench
from benchmarks.common import REPO
from shared.profiling import count_macs, round_order
from vbp_cli.mlps import find_mlps

HIDDEN, DEPTH = 256, 3


@pytest.fixture(scope="module")
def tiny_variants() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    dense = VisionTransformer(
        img_size=32, patch_size=8, embed_dim=64, depth=DEPTH, num_heads=2, num_classes=10
    ).eval()
    return bench.variants_of(dense, img_size=32)


def _widths(model: torch.nn.Module) -> list[int]:
    return [r.hidden for r in find_mlps(model)]


def test_variants_have_the_expected_widths(tiny_variants: dict[str, torch.nn.Module]) -> None:
    assert list(tiny_variants) == ["dense", "VBP", "VBP round-to 64", "uniform 55%"]
    assert _widths(tiny_variants["dense"]) == [HIDDEN] * DEPTH
    total = HIDDEN * DEPTH
    # one global ranking: the kept total is fixed, the split between blocks free
    assert sum(_widths(tiny_variants["VBP"])) == total - round(bench.RATIO * total)
    assert all(w % 64 == 0 and 0 < w <= HIDDEN for w in _widths(tiny_variants["VBP round-to 64"]))
    # uniform: the same share out of every block
    assert _widths(tiny_variants["uniform 55%"]) == [HIDDEN - round(bench.RATIO * HIDDEN)] * DEPTH


def test_pruned_variants_cost_fewer_macs(tiny_variants: dict[str, torch.nn.Module]) -> None:
    x = torch.randn(1, 3, 32, 32)
    macs = {k: count_macs(m, x) for k, m in tiny_variants.items()}
    assert all(macs[k] < macs["dense"] for k in macs if k != "dense")
    # VBP and uniform keep the same number of neurons (to rounding): the same MACs within 1%
    assert macs["VBP"] == pytest.approx(macs["uniform 55%"], rel=0.01)
    for m in tiny_variants.values():  # still a working model
        assert m(x).shape == (1, 10)


def test_rotation_lets_every_variant_lead_once() -> None:
    names = ["dense", "a", "b", "c"]
    rounds = [round_order(names, i) for i in range(len(names))]
    assert sorted(r[0] for r in rounds) == sorted(names)
    assert all(sorted(r) == sorted(names) for r in rounds)
    assert round_order(names, len(names) + 1) == rounds[1]


class _Logged(torch.nn.Module):
    def __init__(self, name: str, log: list[str]) -> None:
        super().__init__()
        self.name, self.log = name, log

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.log.append(self.name)
        return x


def test_time_rounds_runs_the_rotated_order_after_warmup() -> None:
    log: list[str] = []
    names = ["dense", "a", "b"]
    models = {n: _Logged(n, log) for n in names}
    times, inner = bench.time_rounds(models, torch.zeros(1), repeats=4, inner=2)
    assert inner == 2 and all(len(t) == 4 for t in times.values())
    assert log[:3] == names  # warm-up, once each
    expected = [n for i in range(4) for n in round_order(names, i) for _ in range(2)]
    assert log[3:] == expected


@pytest.mark.slow
def test_cli_writes_one_interval_per_variant_and_batch(tmp_path: Path) -> None:
    env = {**os.environ, "TOOLKIT_RESULTS_DIR": str(tmp_path), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "benchmarks.vbp_speed", "--models", "vit_tiny_patch16_224"]
    cmd += ["--img-size", "32", "--repeats", "2", "--batches", "1", "2", "--threads", "1"]
    cmd += ["--overhead-model", "vit_tiny_patch16_224", "--name", "tiny", "--allow-dirty"]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "vbp"
    assert (out / "tiny.png").stat().st_size > 0
    md = (out / "tiny.md").read_text()
    assert "random" in md and "![speed-up per variant](tiny.png)" in md
    data = json.loads((out / "tiny.json").read_text())
    assert data["threads"] == 1 and data["repeats"] == 2
    rows = data["rows"]
    pruned = [(r["variant"], r["batch"]) for r in rows if r["speedup"] is not None]
    assert sorted(pruned) == sorted(
        (v, b) for v in ("VBP", "VBP round-to 64", "uniform 55%") for b in (1, 2)
    )
    for r in rows:
        assert len(r["times_s"]) == 2
        s = r["speedup"]
        if s is None:
            assert r["variant"] == "dense" and r["mac_bound"] == 1
            continue
        assert s["rounds"] == 2 and math.isfinite(s["low"]) and s["low"] <= s["high"]
        assert s["min"] <= s["median"] <= s["max"] and r["mac_bound"] > 1
        dense = next(d for d in rows if d["variant"] == "dense" and d["batch"] == r["batch"])
        ratios = [a / b for a, b in zip(dense["times_s"], r["times_s"], strict=True)]
        assert s["min"] == pytest.approx(min(ratios)) and s["max"] == pytest.approx(max(ratios))
    assert data["stats_overhead"][0]["overhead"]["rounds"] == 2
