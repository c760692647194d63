"""The timing protocol behind every scorelidar speed figure (scorelidar_cli/timing.py), with a
fake clock and fake runs: rotation, statistics from the same rounds, ratios, intervals."""

from __future__ import annotations

from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from scorelidar_cli.timing import rotation, speedup_text, summarize, time_runs


class FakeClock:
    """Time moves only when a fake run says it worked."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def work(self, seconds: float) -> None:
        self.now += seconds


def solver_run(clock: FakeClock, steps: int, per_step: float, load=None, noise=None):
    """A fake completion: `steps` solver steps of `per_step` seconds, scaled by the frame's
    size, by the machine's load at that moment and by a little noise."""

    def run(frame: float) -> str:
        factor = (load() if load else 1.0) * (noise() if noise else 1.0)
        clock.work(steps * per_step * frame * factor)
        return f"{steps}x{frame}"

    return run


def test_every_run_takes_every_position_equally_often() -> None:
    clock = FakeClock()
    runs = {n: solver_run(clock, 1, 0.1) for n in ("a", "b", "c")}
    timing = time_runs(runs, [1.0, 2.0, 3.0], rounds=2, clock=clock)
    positions = Counter(
        (name, pos) for rnd in timing.order for calls in rnd for pos, name in enumerate(calls)
    )
    assert set(positions.values()) == {2}  # 3 runs x 3 positions, 6 calls per run
    assert len(positions) == 9
    # rotated from round to round on the same frame too
    assert timing.order[0][0] != timing.order[1][0]
    assert rotation(["a", "b", "c"], 1, 1) == ["c", "a", "b"]
    # every run on every frame in every round
    assert all(sorted(calls) == ["a", "b", "c"] for rnd in timing.order for calls in rnd)


def test_times_are_per_call_and_exclude_prepare_and_outputs() -> None:
    clock = FakeClock()
    seen: list[tuple[str, int, str]] = []
    runs = {"slow": solver_run(clock, 4, 0.5), "fast": solver_run(clock, 1, 0.5)}

    def prepare(frame: float) -> float:
        clock.work(100.0)  # reading a file: never timed
        return frame

    def keep(name: str, f: int, out: str) -> None:
        clock.work(50.0)  # scoring: never timed
        seen.append((name, f, out))

    timing = time_runs(runs, [1.0, 2.0], rounds=3, prepare=prepare, on_output=keep, clock=clock)
    assert timing.seconds["slow"] == [[2.0, 4.0]] * 3
    assert timing.seconds["fast"] == [[0.5, 1.0]] * 3
    # outputs of the first round only, each run on each frame once
    assert sorted(seen) == [("fast", 0, "1x1.0"), ("fast", 1, "1x2.0"),
                            ("slow", 0, "4x1.0"), ("slow", 1, "4x2.0")]  # fmt: skip


def test_medians_and_ratios_come_from_the_same_rounds() -> None:
    clock = FakeClock()
    # the shared machine is 3x slower during round 1 and 10% slower in round 2
    round_load = iter([1.0] * 4 + [3.0] * 4 + [1.1] * 4)
    load = partial(next, round_load)
    runs = {
        "teacher": solver_run(clock, 50, 0.01, load),
        "student": solver_run(clock, 8, 0.01, load),
    }
    timing = time_runs(runs, [1.0, 3.0], rounds=3, clock=clock)
    stats = summarize(timing)
    teacher = np.asarray(timing.seconds["teacher"]).mean(axis=1)
    student = np.asarray(timing.seconds["student"]).mean(axis=1)
    assert stats["teacher"]["s_per_frame"] == pytest.approx(np.median(teacher))
    assert stats["student"]["s_per_frame"] == pytest.approx(np.median(student))
    assert stats["student"]["s_min"] == pytest.approx(student.min())
    assert stats["student"]["s_max"] == pytest.approx(3.0 * student.min())
    # the slow round hits both runs: every statistic of the ratio is the step ratio
    for key in ("speedup", "speedup_low", "speedup_high", "speedup_round_min",
                "speedup_round_max"):  # fmt: skip
        assert stats["student"][key] == pytest.approx(50 / 8)
    assert stats["student"]["speedup"] == pytest.approx(
        stats["teacher"]["s_per_frame"] / stats["student"]["s_per_frame"]
    )
    assert stats["teacher"]["speedup"] == 1.0
    assert stats["student"]["rounds"] == 3 and stats["student"]["frames"] == 2


@pytest.mark.parametrize("seed", range(5))
def test_twice_slower_per_step_gives_ratio_two_inside_its_interval(seed: int) -> None:
    clock = FakeClock()
    rng = np.random.default_rng(seed)
    noise = partial(rng.uniform, 0.9, 1.1)
    runs = {
        "slow net": solver_run(clock, 8, 0.02, noise=noise),
        "fast net": solver_run(clock, 8, 0.01, noise=noise),
    }
    frames = list(rng.uniform(0.5, 2.0, size=16))  # frames of different sizes
    stats = summarize(time_runs(runs, frames, rounds=3, clock=clock))["fast net"]
    assert stats["speedup"] == pytest.approx(2.0, rel=0.05)
    assert stats["speedup_low"] <= stats["speedup"] <= stats["speedup_high"]
    assert stats["speedup_low"] <= 2.0 <= stats["speedup_high"]
    assert stats["speedup_high"] - stats["speedup_low"] < 0.2  # paired: frame sizes cancel
    assert speedup_text(stats).startswith(f"{stats['speedup']:.2f}x (")


def test_baseline_choice_and_bad_arguments() -> None:
    clock = FakeClock()
    runs = {"a": solver_run(clock, 2, 0.1), "b": solver_run(clock, 4, 0.1)}
    timing = time_runs(runs, [1.0], rounds=2, clock=clock)
    assert summarize(timing, baseline="b")["a"]["speedup"] == pytest.approx(2.0)
    one = summarize(timing)["b"]  # one frame: the bootstrap has nothing to resample
    assert one["speedup_low"] == one["speedup"] == one["speedup_high"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="baseline"):
        summarize(timing, baseline="c")
    with pytest.raises(ValueError, match="rounds"):
        time_runs(runs, [1.0], rounds=0)
    with pytest.raises(ValueError, match="frames"):
        time_runs(runs, [], rounds=1)
    with pytest.raises(ValueError, match="runs"):
        time_runs({}, [1.0], rounds=1)


def test_completions_are_timed_under_the_protocol(untrained: Path, sim: Path) -> None:
    """api.time_completions (what evaluate, the benchmark and the demo call) on a real,
    untrained tiny model: every run on every frame, first-round outputs handed back."""
    from scorelidar_cli.api import pick_frames, read_frame, time_completions
    from scorelidar_cli.pipeline import load_model

    net = load_model(untrained)[0]
    frames = pick_frames(sim, "all", 2)
    outputs: dict[tuple[str, int], np.ndarray] = {}

    def keep(name: str, f: int, pred: np.ndarray) -> None:
        outputs[name, f] = pred

    runs = {"2 steps": (net, 2, None), "1 step": (net, 1, None)}
    timing = time_completions(runs, frames, 2, read=read_frame, on_output=keep)
    assert sorted(outputs) == [("1 step", 0), ("1 step", 1), ("2 steps", 0), ("2 steps", 1)]
    assert all(p.ndim == 2 and p.shape[1] == 3 and np.isfinite(p).all() for p in outputs.values())
    stats = summarize(timing)
    assert all(s["s_per_frame"] > 0 and s["rounds"] == 2 and s["frames"] == 2
               for s in stats.values())  # fmt: skip
