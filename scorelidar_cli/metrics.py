"""Scene-completion metrics in LiDiff's conventions (metric coordinates, +-50 m).

CD: [mean_g d(g, P) + mean_p d(p, G)] / 2 with unsquared Euclidean nearest-neighbour
distances; JSD: Jensen-Shannon distance of BEV occupancy histograms (0.5 m cells);
precision / recall / F-score: area under the curve over 100 thresholds in 5-10 cm;
IoU: occupied voxels at 0.5 / 0.2 / 0.1 m.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

RANGE = 50.0
IOU_VOXELS = (0.5, 0.2, 0.1)


def nn_distances(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """For every point of src, the distance to its nearest point in dst."""
    return cKDTree(np.asarray(dst, np.float64)).query(np.asarray(src, np.float64), workers=1)[0]


def chamfer_distance(pred: np.ndarray, gt: np.ndarray) -> float:
    return float((nn_distances(gt, pred).mean() + nn_distances(pred, gt).mean()) / 2)


def bev_jsd(pred: np.ndarray, gt: np.ndarray, cell: float = 0.5, extent: float = RANGE) -> float:
    from scipy.spatial.distance import jensenshannon

    bins = int(round(2 * extent / cell))
    edges = np.linspace(-extent, extent, bins + 1)
    hists = []
    for pts in (pred, gt):
        h, _, _ = np.histogram2d(pts[:, 0], pts[:, 1], bins=[edges, edges])
        hists.append(h.ravel() / max(h.sum(), 1.0))
    if hists[0].sum() == 0 or hists[1].sum() == 0:
        return 1.0
    return float(jensenshannon(hists[0], hists[1], base=2))


def precision_recall_fscore(
    pred: np.ndarray, gt: np.ndarray, low: float = 0.05, high: float = 0.1, n: int = 100
) -> dict[str, float]:
    """Areas under the precision, recall and F-score curves over thresholds in [low, high]
    (normalised by the threshold span, so 1 is perfect)."""
    thresholds = np.linspace(low, high, n)
    d_pred = nn_distances(pred, gt)
    d_gt = nn_distances(gt, pred)
    precision = (d_pred[None, :] <= thresholds[:, None]).mean(axis=1)
    recall = (d_gt[None, :] <= thresholds[:, None]).mean(axis=1)
    denom = np.where(precision + recall > 0, precision + recall, 1.0)
    fscore = 2 * precision * recall / denom
    return {
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "fscore": float(fscore.mean()),
    }


def _occupied(points: np.ndarray, voxel: float, extent: float) -> set[tuple[int, int, int]]:
    inside = np.all(np.abs(points) <= extent, axis=1)
    keys = np.unique(np.floor(points[inside] / voxel).astype(np.int64), axis=0)
    return set(map(tuple, keys))


def voxel_iou(pred: np.ndarray, gt: np.ndarray, voxel: float, extent: float = RANGE) -> float:
    """IoU of the occupied voxel sets inside +-extent metres (metric, not index, space)."""
    a, b = _occupied(pred, voxel, extent), _occupied(gt, voxel, extent)
    union = len(a | b)
    return len(a & b) / union if union else 1.0


def completion_metrics(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Every metric of one frame."""
    out = {"cd": chamfer_distance(pred, gt), "jsd": bev_jsd(pred, gt)}
    out |= precision_recall_fscore(pred, gt)
    for v in IOU_VOXELS:
        out[f"iou_{v:g}m"] = voxel_iou(pred, gt, v)
    return out


def kept_share(scan: np.ndarray, completion: np.ndarray, within: float = 0.05) -> float:
    """Share of the input scan's points that the completion keeps within `within` metres."""
    return float((nn_distances(scan, completion) <= within).mean())
