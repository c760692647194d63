"""LiDAR files: single scans (.bin, .ply binary/ASCII, .npy, .pcd) and the SemanticKITTI layout.

Every reader returns float32 points (N, 3) in metres (sensor frame for scans); bad files and
degenerate scans raise InputError with one line naming the file.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from shared.errors import InputError
from shared.io import write_bytes, write_text

SCAN_SUFFIXES = (".bin", ".ply", ".npy", ".pcd")
_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


def _exists(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    return path


def read_scan(path: str | Path) -> np.ndarray:
    """Points (N, 3) float32 of one scan, by suffix; intensity and other fields are dropped."""
    path = _exists(path)
    suffix = path.suffix.lower()
    if suffix == ".bin":
        points = read_kitti_bin(path)[:, :3]
    elif suffix == ".ply":
        points = read_ply(path)
    elif suffix == ".npy":
        points = _read_npy(path)
    elif suffix == ".pcd":
        points = read_pcd(path)
    else:
        raise InputError(f"{path}: unknown scan format (use one of {', '.join(SCAN_SUFFIXES)})")
    return np.ascontiguousarray(points[:, :3], dtype=np.float32)


def check_scan(points: np.ndarray, name: str, max_range: float | None = None) -> np.ndarray:
    """A usable scan: (N, 3), finite, not empty and (with max_range) with points in range."""
    if points.ndim != 2 or points.shape[1] < 3:
        raise InputError(f"{name}: expected points of shape (N, 3), got {tuple(points.shape)}")
    if len(points) == 0:
        raise InputError(f"{name}: the scan is empty")
    bad = ~np.isfinite(points[:, :3]).all(axis=1)
    if bad.any():
        raise InputError(f"{name}: {int(bad.sum())} of {len(points)} points are NaN or infinite")
    if max_range is not None:
        dist = np.linalg.norm(points[:, :2], axis=1)
        if not (dist <= max_range).any():
            raise InputError(
                f"{name}: no point within {max_range:g} m of the sensor "
                f"(nearest at {dist.min():.1f} m): wrong units or not a sensor-frame scan?"
            )
    return points


# -- KITTI .bin / .label / poses.txt / calib.txt ---------------------------------------------
def read_kitti_bin(path: str | Path) -> np.ndarray:
    """(N, 4) float32 x, y, z, intensity."""
    path = _exists(path)
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % 4:
        raise InputError(f"{path}: size is not a multiple of 16 bytes (float32 x, y, z, i)")
    return raw.reshape(-1, 4)


def write_kitti_bin(path: str | Path, points: np.ndarray, intensity: np.ndarray | None = None):
    pts = np.asarray(points, dtype=np.float32)[:, :3]
    inten = np.zeros(len(pts), np.float32) if intensity is None else intensity
    data = np.concatenate([pts, np.asarray(inten, np.float32)[:, None]], axis=1)
    write_bytes(path, np.ascontiguousarray(data).tobytes())


def read_labels(path: str | Path, count: int | None = None) -> np.ndarray:
    """Semantic class per point (the low 16 bits of the uint32 label)."""
    path = _exists(path)
    labels = np.fromfile(path, dtype=np.uint32)
    if count is not None and len(labels) != count:
        raise InputError(f"{path}: {len(labels)} labels for {count} points")
    return (labels & 0xFFFF).astype(np.int32)


def write_labels(path: str | Path, semantic: np.ndarray, instance: np.ndarray | None = None):
    inst = np.zeros(len(semantic), np.uint32) if instance is None else instance.astype(np.uint32)
    write_bytes(path, ((inst << 16) | semantic.astype(np.uint32)).astype(np.uint32).tobytes())


def read_poses(path: str | Path) -> np.ndarray:
    """(F, 4, 4) poses from KITTI's 12-numbers-a-line file."""
    path = _exists(path)
    try:
        rows = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise InputError(f"{path}: unreadable poses ({exc})") from None
    if rows.shape[1] != 12:
        raise InputError(f"{path}: expected 12 numbers per line, got {rows.shape[1]}")
    poses = np.tile(np.eye(4), (len(rows), 1, 1))
    poses[:, :3, :] = rows.reshape(-1, 3, 4)
    return poses


def write_poses(path: str | Path, poses: np.ndarray) -> None:
    buf = io.StringIO()
    np.savetxt(buf, np.asarray(poses)[:, :3, :].reshape(len(poses), 12), fmt="%.9e")
    write_text(path, buf.getvalue())


def read_calib(path: str | Path) -> dict[str, np.ndarray]:
    """Every `KEY: 12 numbers` line as a 4x4 matrix (Tr maps velodyne to camera 0)."""
    path = _exists(path)
    calib = {}
    for line in path.read_text().splitlines():
        if ":" not in line:
            continue
        key, values = line.split(":", 1)
        nums = np.array(values.split(), dtype=np.float64)
        if nums.size == 12:
            mat = np.eye(4)
            mat[:3, :] = nums.reshape(3, 4)
            calib[key.strip()] = mat
    if "Tr" not in calib:
        raise InputError(f"{path}: no 'Tr:' line (velodyne-to-camera transform)")
    return calib


def write_calib(path: str | Path, tr: np.ndarray) -> None:
    p0 = "P0: " + " ".join(["7.18856e+02", "0", "6.071928e+02", "0", "0", "7.18856e+02"])
    p0 += " 1.852157e+02 0 0 0 1 0"
    line = "Tr: " + " ".join(f"{v:.9e}" for v in np.asarray(tr)[:3, :].ravel())
    write_text(path, p0 + "\n" + line + "\n")


def _write_points(path: str | Path, header: str, points: np.ndarray, binary: bool) -> None:
    """A PLY/PCD file: its header, then x, y, z as little-endian float32 or one text line per
    point."""
    pts = np.asarray(points, dtype=np.float32)[:, :3]
    if binary:
        body = pts.astype("<f4").tobytes()
    else:
        buf = io.BytesIO()
        np.savetxt(buf, pts, fmt="%.6f")
        body = buf.getvalue()
    write_bytes(path, header.encode("ascii") + body)


def _records(
    path: Path, data: bytes, offset: int, dtype: np.dtype, count: int, what: str
) -> dict[str, np.ndarray]:
    """The fields of `count` binary records of `dtype` starting at byte `offset` of a PLY/PCD
    file; a body shorter than announced is refused."""
    if len(data) - offset < count * dtype.itemsize:
        raise InputError(f"{path}: truncated ({count} {what} announced)")
    rec = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
    return {name: rec[name] for name in dtype.names or ()}


def _xyz(cols: dict[str, np.ndarray]) -> np.ndarray:
    return np.stack([cols["x"], cols["y"], cols["z"]], axis=1).astype(np.float32)


# -- PLY ---------------------------------------------------------------------------------------
def read_ply(path: str | Path) -> np.ndarray:
    """x, y, z of the vertex element of a binary (either endianness) or ASCII PLY."""
    path = _exists(path)
    data = path.read_bytes()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise InputError(f"{path}: not a PLY file (no 'ply' magic or no end_header)")
    body_start = data.index(b"\n", end) + 1
    header = data[:end].decode("ascii", "replace").splitlines()
    fmt, count, props, element = None, 0, [], None
    elements_before = 0  # bytes of elements before 'vertex' are not supported in binary
    for line in header:
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "format":
            fmt = parts[1]
        elif parts[0] == "element":
            element = parts[1]
            if element == "vertex":
                count = int(parts[2])
            elif count == 0:
                elements_before += 1
        elif parts[0] == "property" and element == "vertex":
            if parts[1] == "list":
                raise InputError(f"{path}: list properties on vertices are not supported")
            if parts[1] not in _PLY_TYPES:
                raise InputError(f"{path}: unknown PLY type {parts[1]!r}")
            props.append((parts[2], _PLY_TYPES[parts[1]]))
    names = [n for n, _ in props]
    if not all(axis in names for axis in "xyz"):
        raise InputError(f"{path}: the vertex element has no x, y, z properties")
    if elements_before:
        raise InputError(f"{path}: elements before 'vertex' are not supported")
    if fmt == "ascii":
        text = data[body_start:].decode("ascii", "replace").split("\n")[:count]
        try:
            table = np.array([line.split()[: len(props)] for line in text], dtype=np.float64)
        except ValueError:
            raise InputError(f"{path}: malformed ASCII vertex rows") from None
        if table.shape != (count, len(props)):
            raise InputError(f"{path}: expected {count} vertex rows of {len(props)} values")
        cols = {n: table[:, i] for i, n in enumerate(names)}
    elif fmt in ("binary_little_endian", "binary_big_endian"):
        order = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(n, order + t) for n, t in props])
        cols = _records(path, data, body_start, dtype, count, "vertices")
    else:
        raise InputError(f"{path}: unknown PLY format {fmt!r}")
    return _xyz(cols)


def write_ply(path: str | Path, points: np.ndarray, binary: bool = True) -> None:
    fmt = "binary_little_endian" if binary else "ascii"
    header = (
        f"ply\nformat {fmt} 1.0\ncomment written by scorelidar\nelement vertex {len(points)}\n"
        "property float x\nproperty float y\nproperty float z\nend_header\n"
    )
    _write_points(path, header, points, binary)


# -- NPY and PCD ---------------------------------------------------------------------------------
def _read_npy(path: Path) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise InputError(f"{path}: not a plain numeric .npy array ({exc})") from None
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise InputError(f"{path}: expected an array of shape (N, 3+), got {arr.shape}")
    return arr[:, :3].astype(np.float32)


def read_pcd(path: str | Path) -> np.ndarray:
    """x, y, z of an ASCII or binary (uncompressed) PCD file."""
    path = _exists(path)
    data = path.read_bytes()
    fields, sizes, types, counts, points, fmt = [], [], [], [], 0, None
    pos = 0
    while pos < len(data):
        nl = data.find(b"\n", pos)
        nl = len(data) if nl < 0 else nl
        line = data[pos:nl].decode("ascii", "replace").strip()
        pos = nl + 1
        if not line or line.startswith("#"):
            continue
        key, *vals = line.split()
        key = key.upper()
        if key == "FIELDS":
            fields = vals
        elif key == "SIZE":
            sizes = [int(v) for v in vals]
        elif key == "TYPE":
            types = vals
        elif key == "COUNT":
            counts = [int(v) for v in vals]
        elif key == "POINTS":
            points = int(vals[0])
        elif key == "DATA":
            fmt = vals[0].lower()
            break
    if not all(axis in fields for axis in "xyz"):
        raise InputError(f"{path}: not a PCD file with x, y, z fields")
    counts = counts or [1] * len(fields)
    if fmt == "ascii":
        rows = [r.split() for r in data[pos:].decode("ascii", "replace").splitlines() if r.strip()]
        table = np.array(rows[:points], dtype=np.float64)
        starts = np.cumsum([0, *counts])
        cols = {f: table[:, starts[i]] for i, f in enumerate(fields)}
    elif fmt == "binary":
        kinds = {"F": "f", "I": "i", "U": "u"}
        dtype = np.dtype(
            [
                (f, f"<{kinds[t]}{s}", (c,)) if c > 1 else (f, f"<{kinds[t]}{s}")
                for f, s, t, c in zip(fields, sizes, types, counts, strict=True)
            ]
        )
        cols = _records(path, data, pos, dtype, points, "points")
    else:
        raise InputError(f"{path}: PCD DATA {fmt!r} is not supported (ascii or binary)")
    return _xyz(cols)


def write_pcd(path: str | Path, points: np.ndarray, binary: bool = True) -> None:
    n = len(points)
    header = (
        "# .PCD v0.7\nVERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
        f"WIDTH {n}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS {n}\n"
        f"DATA {'binary' if binary else 'ascii'}\n"
    )
    _write_points(path, header, points, binary)


def write_scan(path: str | Path, points: np.ndarray) -> None:
    """By suffix: .ply (binary), .pcd, .npy or .bin."""
    suffix = Path(path).suffix.lower()
    if suffix == ".ply":
        write_ply(path, points)
    elif suffix == ".pcd":
        write_pcd(path, points)
    elif suffix == ".npy":
        buf = io.BytesIO()
        np.save(buf, np.asarray(points, np.float32))
        write_bytes(path, buf.getvalue())
    elif suffix == ".bin":
        write_kitti_bin(path, points)
    else:
        raise InputError(f"{path}: unknown scan format (use one of {', '.join(SCAN_SUFFIXES)})")
