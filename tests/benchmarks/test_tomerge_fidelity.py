"""The UNet fidelity benchmark's statistics and its three merging arms (tomesd, tome,
importance) on the shipped 16 px digits UNet."""

from __future__ import annotations

import pytest
import torch

from benchmarks import tomerge_fidelity as bench


def test_compare_pairs_importance_with_each_method_per_sample() -> None:
    g = torch.Generator().manual_seed(0)
    base = torch.rand(40, 1, 8, 8, generator=g)
    labels = torch.arange(10).repeat(4)
    near = (base + 0.01 * torch.randn(base.shape, generator=g)).clamp(0, 1)
    far = (base + 0.1 * torch.randn(base.shape, generator=g)).clamp(0, 1)
    outputs = {
        "tomesd 0.5": (base.clone(), 1.0),
        "tome 0.5": (far, 1.0),
        "importance 0.5": (near, 1.0),
    }
    res = bench.compare(base, 2.0, outputs, labels, predict=lambda x: labels)
    rows = {(r["method"], r["ratio"]): r for r in res["rows"]}
    assert rows[("tomesd", 0.5)]["psnr"] == bench.PSNR_CAP  # identical samples: capped, not inf
    low, high = rows[("importance", 0.5)]["psnr_interval"]
    assert low <= rows[("importance", 0.5)]["psnr"] <= high
    assert rows[("unmerged", 0.0)]["accuracy"] == 100.0
    verdicts = {p["other"]: p["verdict"] for p in res["paired"]}
    assert verdicts == {"tome": "closer", "tomesd": "farther"}
    assert len(res["psnr_per_sample"]["tome 0.5"]) == 40


@pytest.mark.slow  # samples the shipped UNet three times per arm
@pytest.mark.parametrize("method", bench.METHODS)
def test_each_arm_merges_and_its_removal_restores_the_unmerged_samples(method: str) -> None:
    from tomerge_cli.demo import patch, sample
    from tomerge_cli.references import reference_model

    model = reference_model("digits-unet-16px")
    labels = torch.arange(4)
    base = sample(model, labels, seed=0, steps=4, guidance=3.0)
    remove = patch(model.unet, method, 0.5)
    merged = sample(model, labels, seed=0, steps=4, guidance=3.0)
    remove()
    assert not torch.equal(merged, base)
    assert torch.equal(sample(model, labels, seed=0, steps=4, guidance=3.0), base)
