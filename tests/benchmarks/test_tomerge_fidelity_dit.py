"""The MMDiT fidelity benchmark at its smallest setting (an untrained model, a few samples):
merging acts in both settings (importance from its own map with CFG, from the step delta
without), the intervals are bootstrap intervals around the mean, and the paired verdict
compares the two methods on the same samples."""

from __future__ import annotations

import pytest
import torch

from benchmarks import tomerge_fidelity_dit as bench


@pytest.fixture(scope="module")
def model() -> bench.DigitsMMDiT:
    torch.manual_seed(0)
    return bench.DigitsMMDiT(size=16, layers=4, heads=2, head_dim=8, embed=16).eval()


@pytest.mark.parametrize(
    ("guidance", "methods", "kind"),
    [
        (3.0, {"importance": {"mode": "importance", "importance": "cfg"}}, "importance"),
        (1.0, {"step-delta": {"mode": "importance", "importance": "step-delta"}}, "importance"),
    ],
)
def test_both_settings_merge_with_their_own_importance(model, guidance, methods, kind) -> None:
    labels = torch.arange(4)
    methods = {**methods, "grid": {"mode": "tome"}}
    res = bench.run_setting(
        model, lambda x: torch.zeros(len(x), dtype=torch.long), labels,
        guidance=guidance, steps=5, ratios=(0.5,), methods=methods, seed=0, log=lambda _: None,
    )  # fmt: skip
    name = next(iter(methods))
    stats = res[f"{name} 0.5"]["merge_stats"]
    assert stats["merged_calls"] > 0 and stats["tokens_kept"] < stats["tokens_in"]
    assert stats["partitions"][kind] > 0  # importance merging really ran in later steps
    assert res["grid 0.5"]["merge_stats"]["partitions"]["importance"] == 0
    for key in (f"{name} 0.5", "grid 0.5"):
        r = res[key]
        assert r["psnr_low"] <= r["psnr"] <= r["psnr_high"]
        assert len(r["psnr_per_sample"]) == len(labels)
        assert not torch.equal(res["images"][key], res["images"]["unmerged"])  # merging acted
    _check_paired(res, f"{name} 0.5", "grid 0.5")


def _check_paired(res: dict, first: str, second: str) -> None:
    """The paired row is the per-sample difference of the two methods on the same samples,
    its interval around it and a verdict that follows the interval."""
    a, b = res[first]["psnr_per_sample"], res[second]["psnr_per_sample"]
    p = res["paired 0.5"]
    assert p["diff"] == pytest.approx(sum(x - y for x, y in zip(a, b, strict=True)) / len(a))
    assert p["low"] <= p["diff"] <= p["high"]
    expected = "higher" if p["low"] > 0 else "lower" if p["high"] < 0 else "on par"
    assert p["verdict"] == expected


def test_bootstrap_mean_of_a_constant_has_no_width() -> None:
    assert bench.bootstrap_mean([3.0] * 10) == (3.0, 3.0, 3.0)
    mean, low, high = bench.bootstrap_mean([0.0, 10.0] * 10)
    assert low < mean == 5.0 < high


def test_the_mlp_setting_compares_merging_the_feed_forward_against_attention_only(model) -> None:
    labels = torch.arange(4)
    importance = {"mode": "importance", "importance": "cfg"}
    methods = {"importance + MLP": {**importance, "merge_mlp": True}, "importance": importance}
    res = bench.run_setting(
        model, lambda x: torch.zeros(len(x), dtype=torch.long), labels,
        guidance=3.0, steps=5, ratios=(0.5,), methods=methods, seed=0, log=lambda _: None,
    )  # fmt: skip
    both, attn = res["images"]["importance + MLP 0.5"], res["images"]["importance 0.5"]
    assert not torch.equal(both, attn)  # the MLP's merge changed the samples
    _check_paired(res, "importance + MLP 0.5", "importance 0.5")


@pytest.mark.parametrize(("layers", "merged"), [(6, 6), (8, 4)])
def test_the_report_counts_the_blocks_the_default_merges(layers, merged) -> None:
    """Fewer than 8 DiT blocks are all merged by default; from 8 the middle half."""
    m = bench.DigitsMMDiT(size=16, layers=layers, heads=2, head_dim=8, embed=16).eval()
    assert bench.blocks_merged(m) == merged
