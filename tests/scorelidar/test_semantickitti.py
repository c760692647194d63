"""A real SemanticKITTI download, in miniature: sequences 00-10 labelled, 11-12 (the test set)
without labels/. The default --sequences is the official train split (00-07, 09, 10), `val`
is 08, `all` skips the unlabelled test sequences, the data root may be the folder holding
sequences/ or sequences/ itself, and `complete` reads an unlabelled test scan."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from scorelidar_cli.api import DistillOptions, EvaluateOptions, TrainTeacherOptions
from scorelidar_cli.dataset import KITTI_TRAIN, open_dataset, sequences_dir
from scorelidar_cli.io import write_calib, write_kitti_bin, write_labels, write_poses
from shared.errors import InputError
from tests.helpers import run_cli

ROAD = 40  # a static SemanticKITTI class
TRAIN = [f"{i:02d}" for i in (0, 1, 2, 3, 4, 5, 6, 7, 9, 10)]


def _write_sequence(base: Path, name: str, frames: int, labelled: bool, seed: int) -> None:
    """Ground plane and a wall, a sensor driving 1 m per frame along x (identity Tr)."""
    rng = np.random.default_rng(seed)
    seq = base / name
    poses = np.tile(np.eye(4), (frames, 1, 1))
    poses[:, 0, 3] = np.arange(frames, dtype=np.float64)
    for f in range(frames):
        ground = np.c_[rng.uniform(-20, 20, (400, 2)), np.full(400, -1.7)]
        wall = np.c_[rng.uniform(-20, 20, 200), np.full(200, 8.0), rng.uniform(-1.7, 2, 200)]
        pts = np.concatenate([ground, wall]).astype(np.float32)
        write_kitti_bin(seq / "velodyne" / f"{f:06d}.bin", pts)
        if labelled:
            write_labels(seq / "labels" / f"{f:06d}.label", np.full(len(pts), ROAD))
    write_poses(seq / "poses.txt", poses)  # SemanticKITTI ships poses for 11-21 too
    write_calib(seq / "calib.txt", np.eye(4))


@pytest.fixture(scope="module")
def kitti(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<root>/dataset/sequences/00..12: one frame each, two in 08 (so val is recognisable),
    no labels/ in 11 and 12."""
    root = tmp_path_factory.mktemp("semantickitti") / "dataset"
    for i in range(13):
        name = f"{i:02d}"
        _write_sequence(root / "sequences", name, 2 if name == "08" else 1, i <= 10, i)
    return root


def _names(seqs: list) -> list[str]:
    return [s.path.name for s in seqs]


def test_default_is_the_official_train_split() -> None:
    assert KITTI_TRAIN == TRAIN
    for options in (TrainTeacherOptions, DistillOptions, EvaluateOptions):
        assert options.__dataclass_fields__["sequences"].default == "train"
    from scorelidar_cli.api import TrainRefineOptions

    assert TrainRefineOptions.__dataclass_fields__["sequences"].default == "train"


def test_named_splits_and_unlabelled_test_sequences(kitti: Path) -> None:
    assert _names(open_dataset(kitti, "train")) == TRAIN
    assert _names(open_dataset(kitti, "kitti-train")) == TRAIN
    assert _names(open_dataset(kitti, "val")) == ["08"]
    assert _names(open_dataset(kitti, "all")) == [f"{i:02d}" for i in range(11)]  # no 11, 12
    assert _names(open_dataset(kitti, "00,08-09")) == ["00", "08", "09"]
    with pytest.raises(InputError, match=r"sequences 11, 12 have no labels/.*train or val"):
        open_dataset(kitti, "10-12")
    # the ground truth of a train frame exists (labels read, static points accumulated)
    (seq,) = open_dataset(kitti, "00")
    assert len(seq.ground_truth(0)) > 100


def test_a_partial_download_uses_the_part_of_the_split_it_holds(tmp_path: Path) -> None:
    _write_sequence(tmp_path / "sequences", "03", 1, True, 0)
    _write_sequence(tmp_path / "sequences", "11", 1, False, 1)
    assert _names(open_dataset(tmp_path, "train")) == ["03"]
    with pytest.raises(InputError, match=r"none of the val split's sequences \(08\)"):
        open_dataset(tmp_path, "val")
    with pytest.raises(InputError, match="missing sequences 05"):
        open_dataset(tmp_path, "03,05")


def test_data_root_levels(kitti: Path, tmp_path: Path) -> None:
    base = kitti / "sequences"
    # the download's dataset/, sequences/ itself, and the folder above dataset/
    assert sequences_dir(kitti) == sequences_dir(base) == sequences_dir(kitti.parent) == base
    assert _names(open_dataset(base, "val")) == ["08"]
    (tmp_path / "elsewhere" / "00").mkdir(parents=True)  # no velodyne/ inside
    for wrong in (tmp_path / "elsewhere", tmp_path / "nowhere", base / "00" / "velodyne"):
        with pytest.raises(InputError, match="no sequences/ directory") as info:
            sequences_dir(wrong)
        assert "\n" not in str(info.value) and "velodyne/*.bin" in str(info.value)


def test_bad_sequence_lists_are_one_line(kitti: Path, tmp_path: Path) -> None:
    for spec, message in [("00-x", "a range is two numbers"), (" , ", "train, val, all")]:
        res = run_cli(
            "scorelidar", "train-teacher", "--data", kitti, "--sequences", spec, "--out", "x",
            cwd=tmp_path,
        )  # fmt: skip
        assert res.code == 2 and message in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_cli_default_split_trains_and_evaluates_and_completes_a_test_scan(
    kitti: Path, untrained: Path, tmp_path: Path
) -> None:
    def ok(*args: str | Path) -> dict:
        res = run_cli("scorelidar", *args, "--json", cwd=tmp_path)
        assert res.code == 0, res.stderr[-2000:]
        return json.loads(res.stdout)

    # default --sequences: the ten train sequences, one frame each; 08 and 11-12 left out
    teacher = ok("train-teacher", "--data", kitti, "--preset", "tiny", "--steps", "1",
                 "--batch-size", "1", "--out", "teacher")  # fmt: skip
    assert teacher["frames"] == 10 and np.isfinite(teacher["final_loss"])
    rows = ok("evaluate", "--model", untrained, "--data", kitti, "-k", "1", "--max-frames", "0")
    assert rows["rows"][0]["frames"] == 10
    # val: 08's two frames, also through sequences/ itself as --data
    rows = ok("evaluate", "--model", untrained, "--data", kitti / "sequences", "-k", "1",
              "--sequences", "val")  # fmt: skip
    assert rows["rows"][0]["frames"] == 2
    # complete reads scans only: a test-set scan without labels completes
    scan = kitti / "sequences" / "11" / "velodyne" / "000000.bin"
    assert not (scan.parent.parent / "labels").exists()
    res = ok("complete", scan, "--model", untrained, "-k", "1", "--out", "test11")
    (row,) = res["scans"]
    assert row["input_points"] == 600 and row["output_points"] == 256 * 2
    assert len(list((tmp_path / "test11").glob("*.ply"))) == 1
