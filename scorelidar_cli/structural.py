"""ScoreLiDAR's structural loss: scene-wise Chamfer to the ground truth and point-wise
agreement of pairwise distances between the ground truth's highest-curvature key points
and their nearest neighbours in the completion (not index-aligned: point sets are unordered).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial import cKDTree


def _nn_index(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    tree = cKDTree(dst.detach().cpu().double().numpy())
    idx = tree.query(src.detach().cpu().double().numpy(), workers=1)[1]
    return torch.as_tensor(idx, dtype=torch.long, device=src.device)


def chamfer_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Differentiable CD (unsquared, both directions averaged): KD-tree neighbours, then a
    gather, so the gradient flows to `pred` (and `gt` if it requires one)."""
    d_pg = (pred - gt[_nn_index(pred, gt)]).pow(2).sum(1).add(1e-12).sqrt().mean()
    d_gp = (gt - pred[_nn_index(gt, pred)]).pow(2).sum(1).add(1e-12).sqrt().mean()
    return (d_pg + d_gp) / 2


def surface_variation(points: np.ndarray, k: int = 16) -> np.ndarray:
    """lambda_min / sum(lambda) of each point's k-NN covariance (0 on planes, up to 1/3)."""
    k = min(k, len(points))
    idx = cKDTree(points).query(points, k=k, workers=1)[1]
    nbrs = points[idx] - points[idx].mean(axis=1, keepdims=True)
    cov = np.einsum("nki,nkj->nij", nbrs, nbrs) / k
    eig = np.linalg.eigvalsh(cov)  # ascending
    return eig[:, 0] / np.maximum(eig.sum(axis=1), 1e-12)


def key_points(gt: np.ndarray, fraction: float = 1 / 30, k: int = 16) -> np.ndarray:
    """Indices of the `fraction` of ground-truth points with the highest curvature."""
    count = max(2, int(round(len(gt) * fraction)))
    return np.argsort(-surface_variation(gt, k))[:count]


def pointwise_loss(pred: torch.Tensor, gt: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """MSE between the distance matrix of the key points and that of their nearest
    completion points."""
    key_gt = gt[keys]
    matched = pred[_nn_index(key_gt, pred)]
    return torch.nn.functional.mse_loss(torch.cdist(matched, matched), torch.cdist(key_gt, key_gt))


def structural_loss(
    pred: torch.Tensor,
    gt: torch.Tensor,
    keys: torch.Tensor,
    scene_weight: float = 0.5,
    point_weight: float = 0.01,
) -> tuple[torch.Tensor, dict[str, float]]:
    scene = chamfer_loss(pred, gt)
    point = pointwise_loss(pred, gt, keys) if point_weight > 0 else pred.new_zeros(())
    total = scene_weight * scene + point_weight * point
    return total, {"scene_cd": float(scene.detach()), "pointwise": float(point.detach())}
