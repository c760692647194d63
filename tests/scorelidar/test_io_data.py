"""Scan files, the SemanticKITTI layout, simulated scenes and ground-truth accumulation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scorelidar_cli.dataset import Sequence, open_dataset, parse_sequences
from scorelidar_cli.io import check_scan, read_scan, write_kitti_bin, write_pcd, write_ply
from scorelidar_cli.simulate import MOVING_CAR, simulate_sequence, write_sequence
from shared.errors import InputError
from tests.helpers import KITTI_SCAN


@pytest.fixture
def cloud() -> np.ndarray:
    return np.random.default_rng(0).normal(0, 10, (500, 3)).astype(np.float32)


def test_kitti_bin_round_trip(tmp_path: Path, cloud: np.ndarray) -> None:
    write_kitti_bin(tmp_path / "a.bin", cloud, np.linspace(0, 1, len(cloud)))
    assert (tmp_path / "a.bin").stat().st_size == 16 * len(cloud)
    np.testing.assert_array_equal(read_scan(tmp_path / "a.bin"), cloud)


@pytest.mark.parametrize("binary", [True, False])
def test_ply_and_pcd_round_trip(tmp_path: Path, cloud: np.ndarray, binary: bool) -> None:
    write_ply(tmp_path / "a.ply", cloud, binary=binary)
    write_pcd(tmp_path / "a.pcd", cloud, binary=binary)
    tol = 0 if binary else 1e-5
    np.testing.assert_allclose(read_scan(tmp_path / "a.ply"), cloud, atol=tol)
    np.testing.assert_allclose(read_scan(tmp_path / "a.pcd"), cloud, atol=tol)


def test_ply_with_double_and_extra_fields(tmp_path: Path, cloud: np.ndarray) -> None:
    header = (
        "ply\nformat binary_big_endian 1.0\nelement vertex 500\nproperty double x\n"
        "property uchar tag\nproperty double y\nproperty double z\nend_header\n"
    )
    rec = np.zeros(500, dtype=[("x", ">f8"), ("tag", "u1"), ("y", ">f8"), ("z", ">f8")])
    rec["x"], rec["y"], rec["z"] = cloud.T
    (tmp_path / "b.ply").write_bytes(header.encode() + rec.tobytes())
    np.testing.assert_allclose(read_scan(tmp_path / "b.ply"), cloud, atol=1e-6)


def test_npy_and_bad_files(tmp_path: Path, cloud: np.ndarray) -> None:
    np.save(tmp_path / "a.npy", cloud)
    np.testing.assert_array_equal(read_scan(tmp_path / "a.npy"), cloud)
    (tmp_path / "bad.bin").write_bytes(b"\x00" * 10)
    (tmp_path / "bad.ply").write_text("not a ply")
    for name in ("bad.bin", "bad.ply", "missing.ply", "a.xyz"):
        with pytest.raises(InputError, match=name.split(".")[0]):
            read_scan(tmp_path / name)


def test_scan_validation_errors(cloud: np.ndarray) -> None:
    with pytest.raises(InputError, match="empty"):
        check_scan(np.zeros((0, 3), np.float32), "s")
    nan = cloud.copy()
    nan[3, 1] = np.nan
    with pytest.raises(InputError, match="1 of 500 points are NaN"):
        check_scan(nan, "s")
    with pytest.raises(InputError, match="no point within 50 m"):
        check_scan(cloud + 1000, "s", max_range=50.0)
    assert check_scan(cloud, "s", max_range=50.0) is cloud


def test_reads_the_real_kitti_scan() -> None:
    pts = read_scan(KITTI_SCAN)
    assert pts.shape == (125773, 3)
    rng = np.linalg.norm(pts, axis=1)
    assert rng.min() > 1.0 and 60 < rng.max() < 120  # metres, sensor frame


def test_simulate_is_deterministic_by_seed() -> None:
    a = simulate_sequence(3, frames=2, azimuths=128)
    b = simulate_sequence(3, frames=2, azimuths=128)
    c = simulate_sequence(4, frames=2, azimuths=128)
    for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[2], c[2])
    assert len(a[0][0]) > 3000  # a 64 x 128 sensor sees most of its rays hit something


def test_ground_truth_accumulates_static_points(tmp_path: Path) -> None:
    scans, labels, poses = simulate_sequence(1, frames=4, azimuths=256)
    write_sequence(tmp_path, "00", scans, labels, poses)
    (seq,) = open_dataset(tmp_path, parse_sequences("00"))
    np.testing.assert_allclose(seq.poses, poses, atol=1e-6)  # camera-frame poses undone
    gt = seq.ground_truth(2)
    assert np.linalg.norm(gt[:, :2], axis=1).max() <= 50.0
    # denser than one scan, one point per 0.1 m voxel
    keys = np.floor(seq.world_map() / 0.1).astype(np.int64)
    assert len(np.unique(keys, axis=0)) == len(keys)
    assert len(gt) > len(scans[2])
    from scipy.spatial import cKDTree

    tree = cKDTree(gt)
    static = (labels[2] != MOVING_CAR) & (np.linalg.norm(scans[2][:, :2], axis=1) < 49)
    moving = labels[2] == MOVING_CAR
    assert tree.query(scans[2][static, :3])[0].max() < 0.1 * np.sqrt(3) + 1e-3
    # the moving car is not in the ground truth (it is elsewhere in other frames)
    assert moving.any() and np.median(tree.query(scans[2][moving, :3])[0]) > 0.05
    assert len(seq.scan(2)) == int((~moving).sum())


def test_dataset_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no sequences/"):
        open_dataset(tmp_path)
    (tmp_path / "sequences" / "00").mkdir(parents=True)
    with pytest.raises(InputError, match="missing sequences 08"):
        open_dataset(tmp_path, ["08"])
    with pytest.raises(InputError, match="no velodyne"):
        Sequence.open(tmp_path / "sequences" / "00")
    assert parse_sequences("00,02-04") == ["00", "02", "03", "04"]
    assert parse_sequences("kitti-val") == ["08"]
