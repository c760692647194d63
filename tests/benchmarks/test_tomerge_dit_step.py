"""The whole-step DiT benchmark at tiny widths and 8 blocks, on the CPU: every variant is
timed in one interleaved run, 'every block' merges more block calls than the default middle
half (the zero-cost bound as many), and the report names every variant."""

from __future__ import annotations

import pytest

from benchmarks import tomerge_dit_speed as blocks
from benchmarks import tomerge_dit_step as bench
from tests.tomerge.test_compile import NEEDS_COMPILER


@pytest.fixture(scope="module")
def run() -> dict:
    s = blocks.Settings(tiny=True, ratios=(0.5,), repeats=2, size=64, frames=2, memory=False)
    return bench.measure(s)


def test_every_variant_is_timed_and_every_block_merges_more(run: dict) -> None:
    assert set(run["families"]) == set(blocks.FAMILIES)
    for family, fam in run["families"].items():
        names = [r["model"] for r in fam["rows"]]
        assert names[0] == "unmerged" and len(names) == 6, names
        stats = fam["merge_stats"]
        for method in ("importance", "tome"):
            default = stats[f"{method} 0.5, default"]["merged_calls"]
            every = stats[f"{method} 0.5, every block"]["merged_calls"]
            assert 0 < default < every, (family, method, default, every)
        # the zero-cost bound replaces the matching of the same block calls
        bound = stats["bound 0.5, every block"]["merged_calls"]
        assert bound == stats["tome 0.5, every block"]["merged_calls"]
        for r in fam["rows"]:
            q = r["speedup_rounds"]
            assert r["ms_per_batch"] > 0 and q["min"] <= q["median"] <= q["max"]


def test_report_names_every_variant(run: dict) -> None:
    text = "\n".join(f"{h}\n{body}" for h, body in bench.report(run))
    for fam in run["families"].values():
        for r in fam["rows"]:
            assert f"| {r['model']} |" in text


@pytest.mark.slow
@NEEDS_COMPILER
def test_compiled_variants_still_merge() -> None:
    """--compile: the variants are one class differing only in hooks, which torch.compile
    does not guard by default; each must run its own code (the patched ones merging)."""
    s = blocks.Settings(tiny=True, ratios=(0.5,), repeats=1, size=64, frames=2, memory=False,
                        families=("wan",), methods=("importance",), compile=True)  # fmt: skip
    stats = bench.measure(s)["families"]["wan"]["merge_stats"]
    assert stats["unmerged"] is None
    assert stats["importance 0.5, default"]["merged_calls"] > 0
    assert (
        stats["importance 0.5, default"]["merged_calls"]
        < (stats["importance 0.5, every block"]["merged_calls"])
    )
