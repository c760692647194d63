"""Completion metrics and the structural loss on clouds with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scorelidar_cli.metrics import (
    bev_jsd,
    chamfer_distance,
    completion_metrics,
    kept_share,
    precision_recall_fscore,
    voxel_iou,
)
from scorelidar_cli.structural import chamfer_loss, key_points, pointwise_loss


@pytest.fixture
def grid() -> np.ndarray:
    """Points 1 m apart, so a shift of a few cm keeps every nearest neighbour."""
    g = np.stack(np.meshgrid(*[np.arange(-5.0, 5.0)] * 3, indexing="ij"), -1).reshape(-1, 3)
    return g + 0.3


def test_chamfer_self_and_shift(grid: np.ndarray) -> None:
    assert chamfer_distance(grid, grid) == 0.0
    d = np.array([0.03, -0.04, 0.0])
    assert chamfer_distance(grid, grid + d) == pytest.approx(0.05, abs=1e-9)
    torch_cd = chamfer_loss(torch.tensor(grid + d), torch.tensor(grid))
    assert float(torch_cd) == pytest.approx(0.05, abs=1e-6)


def test_jsd_iou_fscore_identical_and_different(grid: np.ndarray) -> None:
    full = completion_metrics(grid, grid)
    assert full["jsd"] == 0.0 and full["cd"] == 0.0
    assert full["iou_0.5m"] == full["iou_0.2m"] == full["iou_0.1m"] == 1.0
    assert full["fscore"] == 1.0
    far = grid + np.array([20.0, 0, 0])
    assert bev_jsd(grid, far) == pytest.approx(1.0)  # disjoint histograms, base-2 distance
    assert voxel_iou(grid, far, 0.5) == 0.0
    # shifted by 7.5 cm: inside the 5-10 cm threshold band half of the time
    prf = precision_recall_fscore(grid + np.array([0.075, 0, 0]), grid)
    assert 0.4 < prf["fscore"] < 0.6


def test_iou_is_metric_not_voxel_index(grid: np.ndarray) -> None:
    # points between 25 and 50 m count (an old LiDiff version dropped them at 0.5 m voxels)
    far = grid + np.array([40.0, 0, 0])
    near = grid
    assert voxel_iou(np.concatenate([near, far]), near, 0.5) == pytest.approx(0.5)


def test_kept_share(grid: np.ndarray) -> None:
    assert kept_share(grid, grid) == 1.0
    assert kept_share(grid, grid[: len(grid) // 2]) == 0.5


def test_key_points_are_edges_and_pointwise_loss_ignores_order() -> None:
    rng = np.random.default_rng(0)
    plane = np.column_stack([rng.uniform(-5, 5, (2000, 2)), np.zeros(2000)])
    pole = np.column_stack([rng.normal(0, 0.05, (60, 2)) + 2, rng.uniform(0, 3, 60)])
    gt = np.concatenate([plane, pole])
    keys = key_points(gt, fraction=60 / len(gt))
    # the pole and where it meets the ground, never the open flat ground
    assert (np.linalg.norm(gt[keys, :2] - 2.0, axis=1) < 1.0).all()
    assert (keys >= len(plane)).mean() > 0.5
    gt_t = torch.tensor(gt)
    k = torch.as_tensor(keys)
    # correspondences by nearest neighbour, not by array index: a shuffled copy scores 0
    shuffled = gt_t[torch.randperm(len(gt_t))]
    assert float(pointwise_loss(shuffled, gt_t, k)) == 0.0
    pred = gt_t.clone()
    pred[len(plane) :, 2] *= 1.5  # stretch the pole
    loss = pointwise_loss(pred.requires_grad_(), gt_t, k)
    loss.backward()
    assert float(loss.detach()) > 1e-3 and pred.grad[len(plane) :].abs().sum() > 0
