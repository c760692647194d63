"""The DiT speed benchmark at its smallest setting (tiny widths, in-process): every variant
is timed, merging really shortens the attention's input, importance merges from its map in
the timed steps, and the ratios in the report come from the same run's samples."""

from __future__ import annotations

import statistics
from dataclasses import asdict

import pytest

import tomerge_cli
from benchmarks import tomerge_dit_speed as bench
from tomerge_cli.merge import tokens_removed


@pytest.fixture(scope="module")
def run() -> dict:
    s = bench.Settings(tiny=True, ratios=(0.5,), repeats=2, size=64, frames=2, memory=False)
    return bench.measure(s)


def test_every_family_times_every_variant_on_merged_attention_inputs(run: dict) -> None:
    names = bench.variant_names(bench.Settings(ratios=(0.5,)))
    assert set(run["families"]) == set(bench.FAMILIES)
    for family, fam in run["families"].items():
        n, text = fam["image_tokens"], fam["text_tokens"]
        kept = n - tokens_removed(n, 0.5)
        per_block = fam["summary"]["per_block"]
        assert list(per_block) == names
        for name in names:
            for kind, d in per_block[name].items():
                with_text = text if kind == "single" else 0  # Flux single: [text; image]
                expected = n if name == "unmerged" else kept
                assert d["attention_tokens"] == expected + with_text, (family, name, kind)
        # importance merged from its map in every timed step, never the grid
        parts = fam["partitions"]["importance 0.5"]
        assert parts["importance"] > 0 and parts["grid"] == parts["grid_prune"] == 0


def test_speedups_are_paired_ratios_of_the_same_run(run: dict) -> None:
    fam = run["families"]["flux"]
    seconds = fam["blocks_seconds"]
    for i, kind in enumerate(fam["kinds"]):
        pairs = [u / v for u, v in zip(seconds["unmerged"][i], seconds["tome 0.5"][i], strict=True)]
        got = fam["summary"]["per_block"]["tome 0.5"][kind]["speedup"]
        assert got["median"] == pytest.approx(statistics.median(pairs))
        assert got["min"] <= got["median"] <= got["max"]
    step = fam["summary"]["per_step"]["importance 0.5"]["all"]
    assert "over_bound" in step and step["seconds"]["median"] > 0


def test_report_names_every_variant_and_the_targets(run: dict) -> None:
    text = "\n".join(f"{h}\n{body}" for h, body in bench.report(run))
    for name in bench.variant_names(bench.Settings(ratios=(0.5,))):
        assert f"| {name} |" in text
    assert "Targets" in text and "EXTRAPOLATION" in text


@pytest.mark.parametrize("loop", ["cfg", "no-cfg"])
def test_memory_child_reports_its_own_peak(loop) -> None:
    s = bench.Settings(tiny=True, ratios=(0.5,), frames=2, memory=False)
    out = bench.memory_child("wan", "importance 0.5", s, loop)
    assert out["rss_peak_kib"] >= out["rss_built_kib"] > 0 and out["rss_file_kib"] > 0


@pytest.mark.parametrize(("loop", "calls", "maps"), [("cfg", 4, 1), ("no-cfg", 3, 1)])
def test_wan_sampling_draws_importance_from_its_map(loop, calls, maps) -> None:
    """The memory children sample as WanPipeline: with CFG two calls per step and the map
    from the first pair; without, step-delta's map from the first two calls."""
    s = bench.Settings(tiny=True, ratios=(0.5,), frames=2, memory=False)
    geo = bench.build("wan", s)
    model = bench.make_variant(geo.model, "importance 0.5", s)
    seen: list[int] = []
    model.register_forward_pre_hook(lambda m, a: seen.append(1))
    bench.wan_sampling(model, geo.inputs, loop)
    merger = tomerge_cli.get_merger(model)
    assert len(seen) == calls and merger.stats["partitions"]["importance"] == maps


def test_no_cfg_rows_pair_with_the_unmerged_child_without_cfg() -> None:
    mem = {
        "unmerged": {"rss_built_kib": [100], "rss_peak_kib": [200], "rss_file_kib": [10]},
        "unmerged (no CFG)": {"rss_built_kib": [100], "rss_peak_kib": [100]},
        "importance 0.5 (no CFG)": {"rss_built_kib": [100], "rss_peak_kib": [110]},
    }
    row = next(r for r in bench._memory_table(mem).splitlines() if "importance" in r)
    assert "| 1.100 [1.100, 1.100] |" in row and "| n/a |" in row
    variants = bench.memory_variants(bench.Settings(methods=("importance", "tome")))
    assert [v[1:] for v in variants] == [
        ("unmerged", "cfg"), ("importance 0.5", "cfg"), ("tome 0.5", "cfg"),
        ("importance+mlp 0.5", "cfg"), ("unmerged", "no-cfg"), ("importance 0.5", "no-cfg"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("variant", "mlp_merged"), [("importance 0.5", False), ("importance+mlp 0.5", True)]
)
def test_the_mlp_row_merges_the_feed_forward_input(variant, mlp_merged) -> None:
    """The "+mlp" memory row shortens the MLP's input like the attention's; the plain
    importance row leaves the MLP (Wan's peak) at full length."""
    s = bench.Settings(tiny=True, ratios=(0.5,), frames=2, memory=False)
    geo = bench.build("wan", s)
    model = bench.make_variant(geo.model, variant, s)
    block = model.blocks[0]
    seen: dict[str, list[int]] = {"attn1": [], "ffn": []}
    for name in seen:
        getattr(block, name).register_forward_pre_hook(
            lambda m, a, k, name=name: seen[name].append(
                (a[0] if a else k["hidden_states"]).shape[1]
            ),
            with_kwargs=True,
        )
    bench.wan_sampling(model, geo.inputs, "cfg")
    n = geo.image_tokens
    assert seen["attn1"][-1] == n - tokens_removed(n, 0.5)
    assert seen["ffn"][-1] == (seen["attn1"][-1] if mlp_merged else n)


def test_memory_table_pairs_each_round_with_the_unmerged_one() -> None:
    mem = {
        "unmerged": {"rss_built_kib": [100, 100], "rss_peak_kib": [200, 300]},
        "importance 0.5": {"rss_built_kib": [100, 100], "rss_peak_kib": [220, 270]},
    }
    row = next(r for r in bench._memory_table(mem).splitlines() if "importance" in r)
    # per round 220/200 = 1.1 and 270/300 = 0.9; above the model 120/100 and 170/200
    assert "| 1.000 [0.900, 1.100] |" in row and "| 1.025 [0.850, 1.200] |" in row


@pytest.mark.parametrize("threshold", [None, 65536])
def test_peak_rss_children_get_the_fixed_mmap_threshold(monkeypatch, threshold) -> None:
    import subprocess

    seen: list[dict] = []

    def fake_run(cmd, env=None, **kwargs):  # noqa: ANN001, ANN202
        seen.append(env)
        return subprocess.CompletedProcess(cmd, 0, '{"rss_built_kib": 1, "rss_peak_kib": 2}\n')

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    monkeypatch.setattr(bench.subprocess, "run", fake_run)
    s = bench.Settings(tiny=True, methods=("tome",), memory_repeats=2, mmap_threshold=threshold)
    out = bench.peak_rss("wan", s)
    # per round: unmerged and tome with CFG, unmerged without (tome has no map to change)
    assert out["tome 0.5"]["rss_peak_kib"] == [2, 2] and len(seen) == 2 * 3
    want = None if threshold is None else str(threshold)
    assert all(env.get("MALLOC_MMAP_THRESHOLD_") == want for env in seen)
    title = dict(bench.report({"settings": asdict(s), "families": {}, "memory": {"wan": out}}))
    assert title["How to read"].startswith("Nothing timed")
    heading = next(h for h in title if "peak memory" in h)
    assert ("mmap threshold fixed at 65536" in heading) == (threshold is not None)
