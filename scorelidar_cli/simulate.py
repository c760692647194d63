"""Synthetic driving scenes in the SemanticKITTI layout, deterministic by seed.

A 64-beam sensor (HDL-64E elevations, -24.8 to +2 degrees) drives along a gently curving
road; every ray is cast against the ground plane and yawed boxes (parked cars, buildings,
poles, walls). One car drives along the road and is labelled moving (252), so the ground
truth's static-point filter is exercised exactly as on real data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scorelidar_cli.io import write_calib, write_kitti_bin, write_labels, write_poses

SENSOR_HEIGHT = 1.73
# SemanticKITTI classes used here
ROAD, SIDEWALK, CAR, BUILDING, FENCE, POLE, MOVING_CAR = 40, 48, 10, 50, 51, 80, 252
# KITTI's velodyne-to-camera rotation (x forward -> z forward), with a small offset.
KITTI_TR = np.array(
    [[0.0, -1.0, 0.0, -0.01], [0.0, 0.0, -1.0, -0.07], [1.0, 0.0, 0.0, -0.27], [0, 0, 0, 1]]
)


@dataclass
class Boxes:
    """Yawed boxes: centre (B, 3), half extents (B, 3), yaw (B,), label (B,)."""

    centre: np.ndarray
    half: np.ndarray
    yaw: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    def concat(self, other: Boxes) -> Boxes:
        return Boxes(
            *(np.concatenate([a, b]) for a, b in zip(self.astuple(), other.astuple(), strict=True))
        )

    def astuple(self) -> tuple[np.ndarray, ...]:
        return self.centre, self.half, self.yaw, self.label


def beam_directions(beams: int = 64, azimuths: int = 512) -> np.ndarray:
    """Unit ray directions (beams * azimuths, 3) in the sensor frame."""
    elev = np.deg2rad(np.linspace(-24.8, 2.0, beams))
    azim = np.linspace(-np.pi, np.pi, azimuths, endpoint=False)
    el, az = np.meshgrid(elev, azim, indexing="ij")
    return np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1).reshape(
        -1, 3
    )


def drive_path(frames: int, spacing: float, rng: np.random.Generator) -> np.ndarray:
    """Sensor poses (F, 4, 4) in the world along a road of slowly varying curvature."""
    curvature = rng.uniform(-0.02, 0.02)
    heading, pos, poses = rng.uniform(-np.pi, np.pi), np.zeros(2), []
    for _ in range(frames):
        pose = np.eye(4)
        c, s = np.cos(heading), np.sin(heading)
        pose[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
        pose[:3, 3] = [pos[0], pos[1], SENSOR_HEIGHT]
        poses.append(pose)
        pos = pos + spacing * np.array([c, s])
        heading += curvature * spacing
    return np.stack(poses)


def _along(poses: np.ndarray, n: int, rng: np.random.Generator, side: tuple[float, float]):
    """n points beside the road: (xy (n, 2), road heading (n,))."""
    idx = rng.integers(0, len(poses), n)
    heading = np.arctan2(poses[idx, 1, 0], poses[idx, 0, 0])
    along = rng.uniform(-30, 30, n)
    lateral = rng.uniform(*side, n) * rng.choice([-1.0, 1.0], n)
    fwd = np.stack([np.cos(heading), np.sin(heading)], 1)
    left = np.stack([-np.sin(heading), np.cos(heading)], 1)
    xy = poses[idx, :2, 3] + along[:, None] * fwd + lateral[:, None] * left
    return xy, heading


def scene_boxes(poses: np.ndarray, rng: np.random.Generator) -> Boxes:
    """Static objects along the path: parked cars, buildings, walls, poles."""
    parts = []
    for count, side, size, height, label in (
        (14, (4.5, 6.0), (2.2, 0.9), 0.75, CAR),
        (10, (14.0, 24.0), (6.0, 5.0), 5.0, BUILDING),
        (8, (8.0, 11.0), (7.0, 0.15), 1.0, FENCE),
        (16, (5.5, 8.0), (0.15, 0.15), 3.5, POLE),
    ):
        xy, heading = _along(poses, count, rng, side)
        jitter = rng.uniform(0.7, 1.3, (count, 2))
        half = np.column_stack([size[0] * jitter[:, 0], size[1] * jitter[:, 1], np.full(count, 0)])
        half[:, 2] = height * rng.uniform(0.8, 1.2, count)
        centre = np.column_stack([xy, half[:, 2]])
        yaw = heading + rng.normal(0, 0.05, count)
        parts.append(Boxes(centre, half, yaw, np.full(count, label)))
    boxes = parts[0]
    for part in parts[1:]:
        boxes = boxes.concat(part)
    return boxes


def moving_car(poses: np.ndarray, frame: int, rng_seed: int) -> Boxes:
    """One car driving ahead in the opposite lane, faster than the sensor."""
    rng = np.random.default_rng(rng_seed)
    offset = rng.uniform(8, 15)
    idx = min(frame * 2 % len(poses), len(poses) - 1)
    pose = poses[idx]
    heading = np.arctan2(pose[1, 0], pose[0, 0])
    left = np.array([-np.sin(heading), np.cos(heading)])
    xy = pose[:2, 3] + offset * np.array([np.cos(heading), np.sin(heading)]) + 2.5 * left
    return Boxes(
        np.array([[xy[0], xy[1], 0.75]]),
        np.array([[2.2, 0.9, 0.75]]),
        np.array([heading]),
        np.array([MOVING_CAR]),
    )


def ray_cast(
    origin: np.ndarray, dirs: np.ndarray, boxes: Boxes, max_range: float
) -> tuple[np.ndarray, np.ndarray]:
    """Distance of the first hit of each ray (inf where none) and the hit's label."""
    best = np.full(len(dirs), np.inf)
    label = np.zeros(len(dirs), np.int32)
    down = dirs[:, 2] < -1e-6
    t_ground = np.where(down, -origin[2] / np.where(down, dirs[:, 2], -1.0), np.inf)
    best = np.minimum(best, t_ground)
    label[np.isfinite(best)] = ROAD
    for centre, half, yaw, lab in zip(*boxes.astuple(), strict=True):
        # slab test in the box frame (rotate rays by -yaw around z)
        c, s = np.cos(yaw), np.sin(yaw)
        rel = origin - centre
        o = np.array([c * rel[0] + s * rel[1], -s * rel[0] + c * rel[1], rel[2]])
        d = np.column_stack(
            [c * dirs[:, 0] + s * dirs[:, 1], -s * dirs[:, 0] + c * dirs[:, 1], dirs[:, 2]]
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-half - o) / d
            t2 = (half - o) / d
        t_near = np.nanmax(np.minimum(t1, t2), axis=1)
        t_far = np.nanmin(np.maximum(t1, t2), axis=1)
        hit = (t_near <= t_far) & (t_near > 0) & (t_near < best)
        best[hit] = t_near[hit]
        label[hit] = lab
    miss = best > max_range
    best[miss] = np.inf
    label[miss] = 0
    return best, label


def simulate_sequence(
    seed: int,
    frames: int = 10,
    spacing: float = 2.0,
    beams: int = 64,
    azimuths: int = 512,
    max_range: float = 80.0,
    noise: float = 0.01,
) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """Scans (sensor frame, (N, 4) with intensity), labels and velodyne poses (F, 4, 4)."""
    rng = np.random.default_rng(seed)
    poses = drive_path(frames, spacing, rng)
    static = scene_boxes(poses, rng)
    dirs_sensor = beam_directions(beams, azimuths)
    scans, labels = [], []
    for f, pose in enumerate(poses):
        boxes = static.concat(moving_car(poses, f, seed * 1000 + 7))
        dirs = dirs_sensor @ pose[:3, :3].T
        dist, lab = ray_cast(pose[:3, 3], dirs, boxes, max_range)
        keep = np.isfinite(dist)
        dist = dist[keep] + rng.normal(0, noise, keep.sum())
        pts = dirs_sensor[keep] * dist[:, None]
        lab = lab[keep]
        # the road is 7 m wide around the path; beyond it the ground is sidewalk
        world = pts @ pose[:3, :3].T + pose[:3, 3]
        lateral = _distance_to_path(world[:, :2], poses)
        lab[(lab == ROAD) & (lateral > 3.5)] = SIDEWALK
        intensity = np.clip(0.3 + 0.05 * rng.standard_normal(len(pts)) + 0.002 * lab, 0, 1)
        scans.append(np.column_stack([pts, intensity]).astype(np.float32))
        labels.append(lab.astype(np.int32))
    return scans, labels, poses


def _distance_to_path(xy: np.ndarray, poses: np.ndarray) -> np.ndarray:
    from scipy.spatial import cKDTree

    path = poses[:, :2, 3]
    # densify the path to 0.5 m so the lateral distance is accurate between poses
    fine = np.concatenate(
        [np.linspace(a, b, 5, endpoint=False) for a, b in zip(path[:-1], path[1:], strict=True)]
        + [path[-1:]]
    )
    return cKDTree(fine).query(xy)[0]


def write_sequence(
    root: str | Path,
    sequence: str,
    scans: list[np.ndarray],
    labels: list[np.ndarray],
    velo_poses: np.ndarray,
) -> Path:
    """SemanticKITTI layout: velodyne/*.bin, labels/*.label, poses.txt (camera frame), calib."""
    seq = Path(root) / "sequences" / sequence
    (seq / "velodyne").mkdir(parents=True, exist_ok=True)
    (seq / "labels").mkdir(parents=True, exist_ok=True)
    for i, (scan, lab) in enumerate(zip(scans, labels, strict=True)):
        write_kitti_bin(seq / "velodyne" / f"{i:06d}.bin", scan[:, :3], scan[:, 3])
        write_labels(seq / "labels" / f"{i:06d}.label", lab)
    tr, tr_inv = KITTI_TR, np.linalg.inv(KITTI_TR)
    # KITTI stores camera-frame poses: P_cam = Tr @ P_velo @ Tr^-1
    write_poses(seq / "poses.txt", tr @ velo_poses @ tr_inv)
    write_calib(seq / "calib.txt", tr)
    return seq
