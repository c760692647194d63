"""The one timing protocol behind every scorelidar speed figure (`evaluate`, the benchmark and
the demo), so that their numbers mean the same thing.

Every run (a model at a step count) completes every frame in each of R rounds. On each frame
the runs go one right after another, their order rotated by one from frame to frame and
from round to round: each run takes each position equally often, a slow spell of a shared
machine hits all runs alike, and the two times of a pair (same frame, same round) are taken
seconds apart. Per run:
- s/frame: the median over rounds of the round's mean seconds per frame, with the range of
  those round means as its spread;
- speed-up: the baseline's s/frame over this run's (both from the same rounds), with a
  bootstrap interval over frames, paired (each resample draws the same frames for both
  runs), and the range of the per-round ratios.

Pure timing logic: the callers hand in the runs as callables and may pass `clock`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


def rotation(names: Sequence[str], round_index: int, frame_index: int) -> list[str]:
    """The order of the runs on one frame of one round."""
    shift = (round_index + frame_index) % len(names)
    return [*names[shift:], *names[:shift]]


@dataclass(frozen=True)
class Timing:
    """What time_runs measured: seconds[run][round][frame], and the order the runs went in."""

    seconds: dict[str, list[list[float]]]
    order: list[list[list[str]]]  # [round][frame] -> run names in call order

    @property
    def names(self) -> list[str]:
        return list(self.seconds)

    def array(self, name: str) -> np.ndarray:
        return np.asarray(self.seconds[name], dtype=np.float64)  # (rounds, frames)


def time_runs(
    runs: Mapping[str, Callable[[Any], Any]],
    frames: Sequence[Any],
    rounds: int,
    *,
    prepare: Callable[[Any], Any] | None = None,
    on_output: Callable[[str, int, Any], None] | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Time every run on every frame, `rounds` times, in the rotated order (module docstring).
    `prepare(frame)` turns a frame into the runs' input outside the timed call (once per
    frame and round); `on_output(run, frame index, output)` receives the first round's
    outputs, also untimed. Warm-up is the caller's: every call here is timed."""
    if not runs:
        raise ValueError("no runs to time")
    if not frames:
        raise ValueError("no frames to time on")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    names = list(runs)
    seconds = {n: [[0.0] * len(frames) for _ in range(rounds)] for n in names}
    order: list[list[list[str]]] = []
    for r in range(rounds):
        order.append([])
        for f, frame in enumerate(frames):
            item = frame if prepare is None else prepare(frame)
            calls = rotation(names, r, f)
            order[r].append(calls)
            for name in calls:
                start = clock()
                out = runs[name](item)
                seconds[name][r][f] = clock() - start
                if r == 0 and on_output is not None:
                    on_output(name, f, out)
    return Timing(seconds, order)


def _s_per_frame(sec: np.ndarray) -> np.ndarray:
    """Median over rounds (axis 0) of the round means over frames (last axis)."""
    return np.median(sec.mean(axis=-1), axis=0)


def summarize(
    timing: Timing,
    baseline: str | None = None,
    confidence: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Per run: s_per_frame, s_min, s_max (range of the round means), and the speed-up over
    `baseline` (default: the first run) with speedup_low/high (paired bootstrap over frames,
    `confidence`) and speedup_round_min/max (range of the per-round ratios)."""
    base_name = timing.names[0] if baseline is None else baseline
    if base_name not in timing.seconds:
        raise ValueError(f"baseline {base_name!r} is not one of the timed runs")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    base = timing.array(base_name)
    frames = base.shape[1]
    # the same frame draws for every run: the interval of a ratio of paired times
    draws = np.random.default_rng(seed).integers(0, frames, size=(resamples, frames))
    base_boot = _s_per_frame(base[:, draws])
    tail = (1 - confidence) / 2
    out: dict[str, dict[str, float]] = {}
    for name in timing.names:
        sec = timing.array(name)
        round_means = sec.mean(axis=1)
        s_per_frame = float(np.median(round_means))
        boot = base_boot / _s_per_frame(sec[:, draws])
        low, high = np.quantile(boot, [tail, 1 - tail])
        per_round = base.mean(axis=1) / round_means
        out[name] = {
            "s_per_frame": s_per_frame,
            "s_min": float(round_means.min()),
            "s_max": float(round_means.max()),
            "speedup": float(_s_per_frame(base)) / s_per_frame,
            "speedup_low": float(low),
            "speedup_high": float(high),
            "speedup_round_min": float(per_round.min()),
            "speedup_round_max": float(per_round.max()),
            "rounds": sec.shape[0],
            "frames": frames,
        }
    return out


def describe(rounds: int, frames: int, confidence: float = 0.95) -> str:
    """One sentence saying how the figures of `summarize` were measured (for tables)."""
    return (
        f"every run on each of {frames} frame(s), {rounds} round(s), runs back to back on each "
        "frame in an order rotated from frame to frame and round to round; s/frame: median "
        "over rounds of the round's mean (range: lowest-highest round mean); speed-up: over "
        f"the baseline from the same rounds, {confidence:.0%} paired bootstrap interval over "
        "frames"
    )


def speedup_text(row: Mapping[str, float]) -> str:
    """'6.10x (5.80-6.30)': a row of `summarize` as speed-up and interval."""
    return f"{row['speedup']:.2f}x ({row['speedup_low']:.2f}-{row['speedup_high']:.2f})"
