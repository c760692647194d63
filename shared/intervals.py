"""Intervals and paired verdicts for the numbers the demos and benchmarks report.

One place for the statistics every results table uses, so that "beats" means the same thing
everywhere: a side is taken only when the 95% interval of the paired differences excludes 0;
otherwise the verdict is "on par".

- `t_interval`: mean and Student-t interval over a few independent runs (seeds, rounds).
- `bootstrap_mean`: mean and percentile-bootstrap interval over many items (images, windows).
- `paired`: the same two ways, for per-seed or per-item differences a - b, with a verdict.
- `ratio_spread`: a speed ratio from interleaved rounds: median of per-round ratios, their
  range and the t interval of their mean.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import torch

LEVEL = 0.95
RESAMPLES = 2000


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean (n - 1 degrees of freedom);
    (mean, nan, nan) for a single value."""
    from scipy import stats

    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def resample_index(n: int, resamples: int = RESAMPLES, seed: int = 0) -> torch.Tensor:
    """(resamples, n) item indices drawn with replacement; share one between several
    variants to keep their bootstrap intervals paired on the same resampled items."""
    return torch.randint(n, (resamples, n), generator=torch.Generator().manual_seed(seed))


def percentile_bounds(means: torch.Tensor, level: float = LEVEL) -> tuple[float, float]:
    """The central `level` percentile range of bootstrap means."""
    tail = (1 - level) / 2
    q = torch.tensor([tail, 1 - tail], dtype=means.dtype)
    low, high = torch.quantile(means, q)
    return float(low), float(high)


def bootstrap_mean(
    values: Sequence[float] | torch.Tensor,
    seed: int = 0,
    level: float = LEVEL,
    index: torch.Tensor | None = None,
) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap over the items (`index` from
    `resample_index`, or drawn here with `seed`)."""
    v = torch.as_tensor(values, dtype=torch.float64)
    idx = resample_index(len(v), seed=seed) if index is None else index
    return (float(v.mean()), *percentile_bounds(v[idx].mean(1), level))


def verdict(low: float, high: float, above: str = "beats", below: str = "worse") -> str:
    """`above` when the interval of a - b lies above 0, `below` when below, else 'on par'."""
    if low > 0:
        return above
    return below if high < 0 else "on par"


def paired(
    a: Sequence[float] | torch.Tensor,
    b: Sequence[float] | torch.Tensor,
    method: str = "t",
    level: float = LEVEL,
    seed: int = 0,
    index: torch.Tensor | None = None,
) -> dict[str, Any]:
    """a - b over the same seeds ("t": a Student-t interval, for a few runs) or the same
    items ("bootstrap", for many): mean difference, its interval and the verdict for a
    ('beats' where higher is better and the interval is above 0; flip the sign of both
    sides for lower-is-better measures, or read 'worse')."""
    da = torch.as_tensor(a, dtype=torch.float64)
    db = torch.as_tensor(b, dtype=torch.float64)
    if da.shape != db.shape:
        raise ValueError("a paired comparison needs the same seeds or items on both sides")
    d = da - db
    if method == "t":
        mean, low, high = t_interval(d.tolist(), level)
    elif method == "bootstrap":
        mean, low, high = bootstrap_mean(d, seed, level, index)
    else:
        raise ValueError(f"unknown method {method!r}; valid: t, bootstrap")
    return {"diff": mean, "low": low, "high": high, "verdict": verdict(low, high), "n": len(d)}


def ratio_spread(
    baseline_s: Sequence[float], variant_s: Sequence[float], level: float = LEVEL
) -> dict[str, float]:
    """Speed-up of a variant over the baseline from interleaved rounds (round i of both
    measured back to back): per-round ratios baseline/variant, their median, range and
    the t interval of their mean. Rounds share the machine's state, so the per-round ratio
    cancels most of the drift a shared host adds to both."""
    if len(baseline_s) != len(variant_s) or not baseline_s:
        raise ValueError("one variant time per baseline round is needed")
    ratios = [b / v for b, v in zip(baseline_s, variant_s, strict=True)]
    mean, low, high = t_interval(ratios, level)
    return {
        "median": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
        "mean": mean,
        "low": low,
        "high": high,
        "rounds": len(ratios),
    }
