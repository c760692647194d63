"""SemanticKITTI-layout sequences and LiDiff's ground truth.

Ground truth of a frame: the static points of every scan of its sequence, moved into the
world by the poses, accumulated, deduplicated at 0.1 m, moved into the frame's sensor
coordinates and cut to 50 m around it (LiDiff's convention).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from scorelidar_cli.io import check_scan, read_calib, read_kitti_bin, read_labels, read_poses
from shared.errors import InputError

MOVING_MIN = 252  # SemanticKITTI: classes 252..259 are moving objects
KITTI_TRAIN = ["00", "01", "02", "03", "04", "05", "06", "07", "09", "10"]
KITTI_VAL = ["08"]


def is_static(semantic: np.ndarray) -> np.ndarray:
    """Labelled (not unlabeled 0 / outlier 1) and not moving."""
    return (semantic > 1) & (semantic < MOVING_MIN)


def voxel_dedup(points: np.ndarray, voxel: float) -> np.ndarray:
    """One point per occupied voxel (the first one), so density no longer depends on
    how often a surface was seen."""
    keys = np.floor(points / voxel).astype(np.int64)
    _, first = np.unique(keys, axis=0, return_index=True)
    return points[np.sort(first)]


def transform(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    return points @ pose[:3, :3].T + pose[:3, 3]


def crop(points: np.ndarray, radius: float) -> np.ndarray:
    return points[np.linalg.norm(points[:, :2], axis=1) <= radius]


# Named splits (SemanticKITTI's official ones); kitti-train/kitti-val are older spellings.
SPLITS = {
    "train": KITTI_TRAIN, "kitti-train": KITTI_TRAIN, "val": KITTI_VAL, "kitti-val": KITTI_VAL
}  # fmt: skip
LAYOUT = "sequences/XX/velodyne/*.bin, labels/*.label, poses.txt, calib.txt"


def parse_sequences(spec: str) -> list[str] | None:
    """'00,02,05-07' -> ['00', '02', '05', '06', '07']; 'all' -> None; 'train', 'val' (and
    'kitti-train', 'kitti-val') -> the official split."""
    spec = spec.strip().lower()
    if spec == "all":
        return None
    if spec in SPLITS:
        return list(SPLITS[spec])
    out = []
    for part in spec.split(","):
        part = part.strip()
        if "-" in part:
            a, b = part.split("-", 1)
            if not (a.strip().isdigit() and b.strip().isdigit()):
                raise InputError(f"--sequences {spec!r}: a range is two numbers, e.g. 00-07")
            out += [f"{i:02d}" for i in range(int(a), int(b) + 1)]
        elif part:
            out.append(f"{int(part):02d}" if part.isdigit() else part)
    if not out:
        raise InputError(f"--sequences {spec!r}: name train, val, all or a list such as 00-07,09")
    return out


@dataclass
class Sequence:
    """One sequence directory: frame files, velodyne-frame poses and (lazily) its world map."""

    path: Path
    scans: list[Path]
    poses: np.ndarray
    dedup: float = 0.1
    _world: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | Path, dedup: float = 0.1) -> Sequence:
        path = Path(path)
        scans = sorted((path / "velodyne").glob("*.bin"))
        if not scans:
            raise InputError(f"{path}: no velodyne/*.bin scans")
        cam_poses = read_poses(path / "poses.txt")
        tr = read_calib(path / "calib.txt")["Tr"]
        if len(cam_poses) != len(scans):
            raise InputError(f"{path}: {len(cam_poses)} poses for {len(scans)} scans")
        # poses.txt is in camera-0 coordinates; the velodyne pose is Tr^-1 @ P @ Tr
        poses = np.linalg.inv(tr) @ cam_poses @ tr
        return cls(path, scans, poses, dedup)

    def __len__(self) -> int:
        return len(self.scans)

    def labels_path(self, i: int) -> Path:
        return self.path / "labels" / (self.scans[i].stem + ".label")

    def scan(self, i: int, drop_moving: bool = True) -> np.ndarray:
        """Points (N, 3) of frame i in its sensor frame (moving objects removed if labelled)."""
        pts = read_kitti_bin(self.scans[i])[:, :3]
        if drop_moving and self.labels_path(i).exists():
            sem = read_labels(self.labels_path(i), len(pts))
            pts = pts[sem < MOVING_MIN]
        return check_scan(pts, str(self.scans[i]))

    def world_map(self) -> np.ndarray:
        """The static points of all scans in world coordinates, deduplicated."""
        if self._world is None:
            parts = []
            for i in range(len(self)):
                if not self.labels_path(i).exists():
                    raise InputError(
                        f"{self.labels_path(i)}: missing; ground truth needs labels/*.label"
                    )
                pts = read_kitti_bin(self.scans[i])[:, :3]
                sem = read_labels(self.labels_path(i), len(pts))
                parts.append(transform(pts[is_static(sem)].astype(np.float64), self.poses[i]))
            self._world = voxel_dedup(np.concatenate(parts), self.dedup)
        return self._world

    def ground_truth(self, i: int, radius: float = 50.0) -> np.ndarray:
        """Dense static scene around frame i, in its sensor frame, cut to `radius` metres."""
        local = transform(self.world_map(), np.linalg.inv(self.poses[i]))
        return crop(local, radius).astype(np.float32)


def sequences_dir(root: str | Path) -> Path:
    """The `sequences/` folder of a SemanticKITTI root: `root/sequences` (root is the download's
    `dataset/`), `root` itself when it holds XX/velodyne/, or `root/dataset/sequences`."""
    root = Path(root)
    for base in (root / "sequences", root / "dataset" / "sequences"):
        if base.is_dir():
            return base
    if root.is_dir() and any((p / "velodyne").is_dir() for p in root.iterdir()):
        return root
    raise InputError(f"{root}: no sequences/ directory (SemanticKITTI layout expected: {LAYOUT})")


def has_labels(path: Path) -> bool:
    return (path / "labels").is_dir()


def open_dataset(
    root: str | Path, sequences: str | list[str] | None = None, dedup: float = 0.1
) -> list[Sequence]:
    """Labelled sequences of a SemanticKITTI root (ground truth needs labels/*.label).

    `sequences`: a list of names (each must exist and be labelled), 'train' / 'val' (the
    official split's sequences that are present; at least one must be), 'all' or None (every
    labelled sequence: the unlabelled test sequences 11-21 are skipped), or a spec string as
    parse_sequences reads it.
    """
    base = sequences_dir(root)
    spec = sequences.strip().lower() if isinstance(sequences, str) else None
    names = parse_sequences(sequences) if isinstance(sequences, str) else sequences
    present = sorted(p.name for p in base.iterdir() if p.is_dir())
    if names is None:
        names = [n for n in present if has_labels(base / n)]
        if not names:
            raise InputError(f"{base}: no labelled sequences (XX/labels/*.label)")
    elif spec in SPLITS:
        # a partial download (or a simulated set) trains on the part of the split it holds
        names = [n for n in names if n in present]
        if not names:
            split = ", ".join(SPLITS[spec])
            raise InputError(f"{base}: none of the {spec} split's sequences ({split}) is present")
    missing = [n for n in names if not (base / n).is_dir()]
    if missing:
        raise InputError(f"{root}: missing sequences {', '.join(missing)}")
    if not names:
        raise InputError(f"{root}: no sequences")
    unlabelled = [n for n in names if not has_labels(base / n)]
    if unlabelled:
        raise InputError(
            f"{base}: sequences {', '.join(unlabelled)} have no labels/ (SemanticKITTI's test "
            "sequences 11-21 have none); ground truth needs labels: use --sequences train or val"
        )
    return [Sequence.open(base / n, dedup) for n in names]


def frames(seqs: list[Sequence], every: int = 1) -> list[tuple[Sequence, int]]:
    return [(s, i) for s in seqs for i in range(0, len(s), every)]
