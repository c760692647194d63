"""The hello benchmark's validation protocol: the tuning digits come from the train split
only (never a test digit, never an image something is fitted on), the choices are made from
tuning rows with tuning seeds only, and the paired verdict follows the interval of the
per-seed differences."""

from __future__ import annotations

import argparse
import json
import sys

import pytest
import torch

from benchmarks import common
from benchmarks import hello_storage as bench
from shared.builtin_data import load_digits_tensors


def test_tuning_split_is_disjoint_from_fit_and_test_digits() -> None:
    x, y = load_digits_tensors("train", 8, channels=1)
    xv, _ = load_digits_tensors("val", 8, channels=1)
    fit, tune = bench.carve_tuning_split(y, 360, seed=2026)
    assert len(tune) == 360
    assert set(fit.tolist()).isdisjoint(tune.tolist())
    assert sorted(fit.tolist() + tune.tolist()) == list(range(len(y)))
    # no tuning image is a test image (pixel for pixel)
    assert not (torch.cdist(x[tune].flatten(1), xv.flatten(1)) == 0).any()
    # each class in proportion to its count (within one digit)
    share = 360 * torch.bincount(y) / len(y)
    assert (torch.bincount(y[tune], minlength=10) - share).abs().max() < 1
    again = bench.carve_tuning_split(y, 360, seed=2026)[1]
    other = bench.carve_tuning_split(y, 360, seed=1)[1]
    assert torch.equal(tune, again) and not torch.equal(tune, other)


def test_t_interval_matches_the_t_quantile() -> None:
    mean, lo, hi = bench.t_interval([1.0, 2.0, 3.0])
    # sd 1, n 3: t(0.975, 2) = 4.303
    assert mean == pytest.approx(2.0)
    assert hi - mean == pytest.approx(4.303 / 3**0.5, abs=1e-3)
    assert mean - lo == pytest.approx(hi - mean)


@pytest.mark.parametrize(
    ("a", "b", "verdict"),
    [
        ([60.0, 62.0, 61.0, 63.0, 60.5], [50.0, 51.0, 52.0, 50.5, 51.0], "beats"),
        ([50.0, 51.0, 52.0, 50.5, 51.0], [60.0, 62.0, 61.0, 63.0, 60.5], "worse"),
        # the means differ by 4 points but the seeds disagree in sign: not a win
        ([60.0, 50.0, 70.0, 45.0, 65.0], [55.0, 56.0, 54.0, 50.0, 55.0], "on par"),
        ([70.0], [50.0], "on par"),  # one seed gives no interval
    ],
)
def test_paired_verdict_follows_the_interval_of_the_differences(a, b, verdict) -> None:
    out = bench.paired_verdict(a, b)
    assert out["verdict"] == verdict
    assert out["differences"] == [x - y for x, y in zip(a, b, strict=True)]


def test_paired_verdict_needs_the_same_seeds() -> None:
    with pytest.raises(ValueError):
        bench.paired_verdict([1.0, 2.0], [1.0])


def _row(label: str, epochs: int, seed: int, top1: float) -> dict:
    return {"ipc": 10, "labels": label, "epochs": epochs, "seed": seed, "tuning_top1": top1}


def test_choose_takes_the_best_tuning_mean_and_the_fewer_epochs_on_ties() -> None:
    rows = [
        _row(bench.PROJECTOR, 30, 0, 40.0),
        _row(bench.PROJECTOR, 30, 1, 44.0),
        _row(bench.PROJECTOR, 60, 0, 50.0),
        _row(bench.PROJECTOR, 60, 1, 46.0),
        _row(bench.PROJECTOR_SYN, 30, 0, 45.0),
        _row(bench.PROJECTOR_SYN, 30, 1, 45.0),
        _row(bench.PROJECTOR_SYN, 60, 0, 44.0),
        _row(bench.PROJECTOR_SYN, 60, 1, 46.0),
        _row(bench.HARD, 30, 0, 30.0),
        _row(bench.HARD, 60, 0, 20.0),
    ]
    out = bench.choose(rows)
    assert out["epochs"] == {bench.PROJECTOR: 60, bench.PROJECTOR_SYN: 30, bench.HARD: 30}
    assert out["projector"] == bench.PROJECTOR  # 48 > 45


def test_overlapping_tuning_and_reported_seeds_are_refused() -> None:
    args = argparse.Namespace(tune_seeds=[0, 1], seeds=[1, 2, 3])
    with pytest.raises(SystemExit, match="must differ"):
        bench.run_validation_protocol(args)


@pytest.mark.slow
def test_tiny_validation_run_chooses_from_tuning_rows_only(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(common, "RESULTS", tmp_path)
    argv = ["hello_storage", "--protocol", "validation", "--ipc", "1", "--epoch-grid", "1", "2",
            "--tune-seeds", "7", "--seeds", "1", "2", "--projector-epochs", "1",
            "--synthetic-epochs", "1", "--name", "tiny", "--allow-dirty"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    torch.set_num_threads(1)
    bench.main()
    data = json.loads((tmp_path / "hello" / "tiny.json").read_text())
    tuning, students = data["tuning"], data["students"]
    assert {r["seed"] for r in tuning} == {7}
    assert {r["seed"] for r in students} == {1, 2}
    assert all("student_top1" not in r for r in tuning)
    chosen = bench.choose(tuning)
    assert data["synthetic_sets"][0]["chosen"]["epochs"] == chosen["epochs"]
    for r in students:
        assert r["epochs"] == chosen["epochs"][r["labels"]]
    summary = data["summary"]["1"]
    assert set(summary["sources"]) == {r["labels"] for r in students}
    first = next(iter(summary["paired"]))
    assert first.startswith(chosen["projector"])
    assert (tmp_path / "hello" / "tiny.md").read_text().count("95% t interval") == 2
