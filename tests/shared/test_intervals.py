"""shared.intervals: the intervals and verdicts every results table uses."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from shared import intervals


def test_t_interval_matches_scipy() -> None:
    values = [1.0, 2.5, 2.0, 3.5, 1.5]
    mean, low, high = intervals.t_interval(values)
    ref = stats.t.interval(0.95, len(values) - 1, loc=mean, scale=stats.sem(values))
    assert mean == pytest.approx(2.1)
    assert (low, high) == pytest.approx(ref)
    one = intervals.t_interval([4.0])
    assert one[0] == 4.0 and math.isnan(one[1]) and math.isnan(one[2])


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_items() -> None:
    g = torch.Generator().manual_seed(0)
    small = torch.randn(20, generator=g, dtype=torch.float64)
    large = torch.randn(2000, generator=g, dtype=torch.float64)
    m, lo, hi = intervals.bootstrap_mean(small)
    assert lo < m < hi
    m2, lo2, hi2 = intervals.bootstrap_mean(large)
    assert (hi2 - lo2) < (hi - lo) / 5  # ~ 1/sqrt(n): 10x more items per 100x
    assert intervals.bootstrap_mean([3.0] * 10) == (3.0, 3.0, 3.0)
    # the same index pairs two variants on the same resampled items
    idx = intervals.resample_index(20, seed=1)
    a = intervals.bootstrap_mean(small, index=idx)
    b = intervals.bootstrap_mean(small + 1, index=idx)
    assert b[1] == pytest.approx(a[1] + 1) and b[2] == pytest.approx(a[2] + 1)


@pytest.mark.parametrize("method", ["t", "bootstrap"])
def test_paired_takes_a_side_only_when_the_interval_excludes_zero(method: str) -> None:
    g = torch.Generator().manual_seed(0)
    b = torch.randn(30, generator=g, dtype=torch.float64)
    noise = torch.randn(30, generator=g, dtype=torch.float64) * 0.1
    assert intervals.paired(b + 1 + noise, b, method)["verdict"] == "beats"
    assert intervals.paired(b - 1 + noise, b, method)["verdict"] == "worse"
    # a large shared spread does not hide a consistent paired difference ...
    assert intervals.paired(100 * b + 0.5 + noise, 100 * b, method)["verdict"] == "beats"
    # ... and a difference that is pure noise is "on par"
    centred = noise - noise.mean()
    assert intervals.paired(b + centred, b, method)["verdict"] == "on par"
    with pytest.raises(ValueError, match="same seeds"):
        intervals.paired([1.0, 2.0], [1.0], method)


def test_ratio_spread_of_interleaved_rounds() -> None:
    base = [2.0, 2.2, 4.0]  # the third round ran on a loaded machine: both sides slower
    variant = [1.0, 1.1, 2.0]
    r = intervals.ratio_spread(base, variant)
    assert r["median"] == pytest.approx(2.0) and r["min"] == pytest.approx(2.0)
    assert r["max"] == pytest.approx(2.0) and r["rounds"] == 3
    r = intervals.ratio_spread([2.0, 2.0, 2.0, 2.0], [1.0, 1.25, 1.0, 1.25])
    assert r["low"] < r["median"] < r["high"] and r["min"] == pytest.approx(1.6)
    with pytest.raises(ValueError):
        intervals.ratio_spread([1.0], [])
