"""Never slower than not merging: the measured cost model that leaves small blocks unmerged.
No timing is asserted: the decision is tested on given costs and with a fake clock."""

from __future__ import annotations

import contextlib
import itertools

import pytest
import torch

import tomerge_cli
from tests.tomerge.conftest import CALIBRATED, CALIBRATED_CUDA, generate, no_hooks
from tomerge_cli import api, cost, tiny


@pytest.fixture
def calibrated(monkeypatch: pytest.MonkeyPatch) -> None:
    """The measured threshold, instead of the suite's merge-everything default."""
    monkeypatch.setattr(cost, "MIN_WORK", CALIBRATED)
    monkeypatch.setattr(cost, "MIN_WORK_CUDA", CALIBRATED_CUDA)


def test_break_even_is_the_smallest_size_from_which_merging_always_wins() -> None:
    costs = {16: (1.0, 3.0), 64: (2.0, 2.5), 256: (4.0, 3.0), 576: (9.0, 10.0), 1024: (20, 9)}
    assert cost.break_even_tokens(costs) == 1024  # 576 lost again: 256 does not count
    costs[576] = (9.0, 6.0)
    assert cost.break_even_tokens(costs) == 256
    assert cost.break_even_tokens({64: (1.0, 2.0)}) is None
    assert cost.merge_pays(256, 256) and not cost.merge_pays(255, 256)


def test_default_threshold_follows_the_width(calibrated: None) -> None:
    assert cost.MIN_WORK == 32768  # ratio 0.5 x batch 2 x tokens x width
    assert [cost.default_min_tokens(w) for w in (32, 320, 3072)] == [1024, 103, 11]


def test_default_threshold_follows_the_device_ratio_and_batch(calibrated: None) -> None:
    # the GPU's (H200, whole models at full depth): Flux at 1024^2 (batch 1, 4096 tokens,
    # width 3072) merges at ratio 0.5 (1.14x) and 0.7, not at 0.3 (0.93x in the block run)
    assert cost.MIN_WORK_CUDA == 0.5 * 1 * 4096 * 3072**2
    flux = [cost.default_min_tokens(3072, "cuda", r, batch=1) for r in (0.3, 0.5, 0.7)]
    assert flux == [6827, 4096, 2926]
    assert cost.default_min_tokens(3072, torch.device("cuda", 1), 0.5, batch=1) == 4096
    # SD3.5-medium at 1024^2 with CFG (batch 2, width 1536; 0.88x at 0.5 and 0.7) stays
    # unmerged at both: width counts squared on a GPU, so half the width needs 4x the tokens
    sd35 = [cost.default_min_tokens(1536, "cuda", r, batch=2) for r in (0.5, 0.7)]
    assert sd35 == [8192, 5852] and min(sd35) > 4096
    # Wan 2.1 at 21 frames (32760 tokens, width 1536, batch 1) merges from ratio 0.3 (1.40x)
    assert cost.default_min_tokens(1536, "cuda", 0.3, batch=1) <= 32760
    assert cost.default_min_tokens(320, "cpu", 0.25, batch=2) == 205
    assert cost.default_min_tokens(320, "meta") == 103  # anything but CUDA: the CPU's


def test_block_costs_times_each_size_with_the_given_clock() -> None:
    ticks = itertools.count()
    costs = cost.block_costs([2, 4], 8, repeats=1, clock=lambda: float(next(ticks)))
    assert costs == {4: (1.0, 1.0), 16: (1.0, 1.0)}  # one tick between start and stop


def _flux_run(model, **options) -> tuple[torch.Tensor, dict]:
    from tests.tomerge.test_dit import _flux_latents, _sample_flux

    tomerge_cli.apply_patch(model, ratio=0.5, importance="auto", **options)
    out = torch.stack(_sample_flux(model, _flux_latents(), steps=2))
    return out, dict(tomerge_cli.get_merger(model).stats)


def test_a_model_too_small_to_gain_runs_unmerged_by_default(calibrated: None) -> None:
    """Flux-shaped, width 16 and 16 tokens: far below the break-even (4096 tokens at that
    width). By default nothing is merged and the output is the unpatched one, bit for bit;
    forced, it merges."""
    from tests.tomerge.test_dit import _flux, _flux_latents, _sample_flux

    model = _flux()
    base = torch.stack(_sample_flux(model, _flux_latents(), steps=2))
    with pytest.warns(UserWarning, match="below the 4096 from which merging is faster"):
        out, stats = _flux_run(model)
    assert torch.equal(out, base)
    assert stats["merged_calls"] == 0 and stats["skipped_unprofitable"] == 2 * 2
    for forced in ({"skip_unprofitable": False}, {"min_tokens": 16}):
        out, stats = _flux_run(model, **forced)
        assert stats["merged_calls"] == 2 * 2 and stats["skipped_unprofitable"] == 0
        assert not torch.equal(out, base)
    with pytest.warns(UserWarning, match="below the 17"):
        out, stats = _flux_run(model, min_tokens=17)
    assert torch.equal(out, base) and stats["merged_calls"] == 0  # 16 tokens < 17
    tomerge_cli.remove_patch(model)
    assert no_hooks(model)


def _host_reads(model, latents: torch.Tensor) -> int:
    """Host syncs (item, equal) and copies (clone) in one Flux call, counted by the profiler."""
    from torch.profiler import ProfilerActivity, profile

    from tests.tomerge.test_dit import _sample_flux

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        _sample_flux(model, latents, steps=1)
    wanted = {"aten::item", "aten::equal", "aten::clone", "aten::_local_scalar_dense"}
    return sum(e.name in wanted for e in prof.events())


def test_a_shape_the_cost_model_skips_costs_no_per_step_work_after_one_step(
    calibrated: None,
) -> None:
    """Once a step on some input shape merged nothing because every block was below the
    break-even, later calls on that shape skip the per-step bookkeeping (timestep read, CFG
    check, copies: host syncs on a GPU): they run the ops of the unpatched model; a shape
    that pays merges again, and the small shape still gives the unpatched output."""
    from tests.tomerge.test_dit import _flux, _flux_latents, _sample_flux

    model, small = _flux(), _flux_latents()
    base = torch.stack(_sample_flux(model, small, steps=2))
    unpatched = _host_reads(model, small)
    tomerge_cli.apply_patch(model, ratio=0.5, importance="auto")
    first = _host_reads(model, small)  # a new shape: the step's bookkeeping runs once
    assert first > unpatched
    assert _host_reads(model, small) == unpatched
    stats = tomerge_cli.get_merger(model).stats
    assert stats["merged_calls"] == 0 and stats["skipped_unprofitable"] == 2 * 2
    # batch 256 of 16 tokens at width 16, ratio 0.5: 32768, the CPU break-even: it merges
    _sample_flux(model, _flux_latents(b=256), steps=1)
    assert stats["merged_calls"] == 2
    assert torch.equal(torch.stack(_sample_flux(model, small, steps=2)), base)
    assert stats["merged_calls"] == 2
    tomerge_cli.remove_patch(model)


@pytest.mark.slow  # a whole (tiny) pipeline
def test_a_tiny_unet_pipeline_is_left_unmerged_unless_forced(calibrated: None) -> None:
    pipe = tiny.tiny_sd()
    base = generate(pipe, 3, seed=0)
    for skip, merged in ((True, False), (False, True)):
        tomerge_cli.apply_patch(pipe, ratio=0.5, skip_unprofitable=skip)
        with pytest.warns(UserWarning, match="below") if skip else contextlib.nullcontext():
            out = generate(pipe, 3, seed=0)
        stats = tomerge_cli.get_merger(pipe).stats
        assert (stats["merged_calls"] > 0) == merged
        assert torch.equal(out, base) != merged
    tomerge_cli.apply_patch(pipe, ratio=0.0, skip_unprofitable=False)
    assert torch.equal(generate(pipe, 3, seed=0), base)


def test_command_line_flags_reach_apply_patch() -> None:
    cfg = api.GenerateOptions(pipeline="p", skip_unprofitable=False, min_tokens=64)
    opts = api.merge_options(cfg)
    assert opts["skip_unprofitable"] is False and opts["min_tokens"] == 64
    assert api.merge_options(api.GenerateOptions(pipeline="p"))["skip_unprofitable"] is True
    with pytest.raises(ValueError, match="min_tokens must be >= 0"):
        tomerge_cli.apply_patch(tiny.tiny_sd(), min_tokens=-1)
