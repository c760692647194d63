"""The merging algorithm on plain tensors: partitions, matching, merge / unmerge."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tomerge_cli.merge import (
    check_ratio,
    grid_partition,
    importance_map,
    importance_partition,
    match_tokens,
    pool_size,
    resize_importance,
    token_grid,
)


def _tokens(b: int = 2, n: int = 64, c: int = 16, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, n, c, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.7, 0.75])
@pytest.mark.parametrize("kind", ["grid", "importance"])
def test_merged_token_count_is_n_minus_int_n_ratio(ratio: float, kind: str) -> None:
    x = _tokens(n=64)
    g = torch.Generator().manual_seed(0)
    if kind == "grid":
        part = grid_partition(8, 8, g)
    else:
        part = importance_partition(torch.rand(2, 64, generator=g), ratio, g)
    merge = match_tokens(x, part, int(64 * ratio))
    merged = merge.merge(x)
    assert merged.shape == (2, 64 - int(64 * ratio), 16)
    assert merge.unmerge(merged).shape == x.shape


def test_merge_averages_each_group_and_unmerge_copies_it_back() -> None:
    x = _tokens(n=64)
    merge = match_tokens(x, grid_partition(8, 8, torch.Generator().manual_seed(1)), 30)
    merged = merge.merge(x)
    for b in range(2):
        for k in range(merged.shape[1]):
            group = (merge.slot[b] == k).nonzero().flatten()
            assert len(group) >= 1
            torch.testing.assert_close(merged[b, k], x[b, group].mean(0))
    back = merge.unmerge(merged)
    torch.testing.assert_close(back, merged.gather(1, merge.slot[..., None].expand(-1, -1, 16)))
    # kept tokens that absorbed nothing come back exactly
    alone = [t for t in range(64) if (merge.slot[0] == merge.slot[0, t]).sum() == 1]
    assert alone and torch.equal(back[0, alone], x[0, alone])


def test_pruning_drops_tokens_without_averaging() -> None:
    x = _tokens(n=64)
    merge = match_tokens(x, grid_partition(8, 8), 20, average=False)
    assert torch.equal(merge.merge(x), x.gather(1, merge.kept[..., None].expand(-1, -1, 16)))


def test_the_most_similar_tokens_are_merged() -> None:
    """Sources that duplicate a destination are the ones merged (and come back exact)."""
    x = _tokens(b=1, n=64)
    part = grid_partition(8, 8)
    dup = part.src[0, :10]
    x[0, dup] = x[0, part.dst[0, 0]].clone()
    merge = match_tokens(x, part, 10)
    assert set(merge.merged[0].tolist()) == set(dup.tolist())
    torch.testing.assert_close(merge.unmerge(merge.merge(x)), x)


def test_grid_partition_has_one_destination_per_2x2_cell() -> None:
    part = grid_partition(8, 6, torch.Generator().manual_seed(3))
    ys, xs = part.dst[0] // 6, part.dst[0] % 6
    cells = set(zip((ys // 2).tolist(), (xs // 2).tolist(), strict=True))
    assert len(cells) == part.dst.shape[1] == 12
    assert sorted(part.dst[0].tolist() + part.src[0].tolist()) == list(range(48))


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_tokens_outside_the_importance_pool_are_never_kept(ratio: float) -> None:
    n = 256
    g = torch.Generator().manual_seed(0)
    imp = torch.rand(2, n, generator=g)
    part = importance_partition(imp, ratio, g)
    m = pool_size(n, ratio)
    pool = [set(imp[b].topk(m).indices.tolist()) for b in range(2)]
    assert all(set(part.dst[b].tolist()) <= pool[b] for b in range(2))
    assert part.dst.shape[1] == n // 4
    merge = match_tokens(_tokens(n=n), part, int(n * ratio))
    for b in range(2):
        kept = set(merge.kept[b].tolist())
        assert kept <= pool[b]
        assert len(kept) == n - int(n * ratio)


def test_importance_destinations_follow_the_generator() -> None:
    imp = torch.rand(1, 256, generator=torch.Generator().manual_seed(0))
    a = importance_partition(imp, 0.5, torch.Generator().manual_seed(5))
    b = importance_partition(imp, 0.5, torch.Generator().manual_seed(5))
    c = importance_partition(imp, 0.5, torch.Generator().manual_seed(6))
    assert torch.equal(a.dst, b.dst) and not torch.equal(a.dst, c.dst)
    top = importance_partition(imp, 0.5, dst_choice="topk")
    assert set(top.dst[0].tolist()) == set(imp[0].topk(64).indices.tolist())


def test_importance_map_is_the_cfg_difference_at_latent_shape() -> None:
    uncond, cond = torch.randn(2, 4, 8, 6), torch.randn(2, 4, 8, 6)
    imp = importance_map(torch.cat([uncond, cond]))
    assert imp.shape == (2, 8, 6)
    torch.testing.assert_close(imp, (cond - uncond).abs().mean(1))
    # learned sigma: only the first channels are noise
    sigma = torch.cat([torch.cat([uncond, cond]), 100 * torch.randn(4, 4, 8, 6)], dim=1)
    torch.testing.assert_close(importance_map(sigma, channels=4), imp)
    # video: (2B, C, F, H, W) -> one map per frame
    video = torch.randn(4, 4, 3, 8, 6)
    assert importance_map(video).shape == (2 * 3, 8, 6)
    assert resize_importance(imp, 4, 3).shape == (2, 12)


def test_token_grid_finds_the_downsample_level() -> None:
    assert token_grid(64 * 64, (64, 64)) == (1, 64, 64)
    assert token_grid(32 * 32, (64, 64)) == (2, 32, 32)
    assert token_grid(16 * 16, (32, 32), patch=2) == (1, 16, 16)
    assert token_grid(8 * 7, (15, 13)) == (2, 8, 7)
    assert token_grid(77, (64, 64)) is None


@pytest.mark.parametrize("ratio", [-0.1, 0.8, float("nan")])
def test_bad_ratio_is_refused(ratio: float) -> None:
    with pytest.raises(ValueError, match="ratio must be in"):
        check_ratio(ratio)


def test_similarity_runs_in_bfloat16_only_for_float32_on_a_bf16_cpu() -> None:
    from tomerge_cli.merge import _cpu_has_bf16, similarity_dtype

    native = _cpu_has_bf16()
    assert similarity_dtype(torch.zeros(1, 4, 8)) == (torch.bfloat16 if native else torch.float32)
    assert similarity_dtype(torch.zeros(1, 4, 8, dtype=torch.float64)) == torch.float64
    assert similarity_dtype(torch.zeros(1, 4, 8, dtype=torch.bfloat16)) == torch.bfloat16


def test_a_cpu_partition_matches_tokens_on_another_device() -> None:
    # partitions are drawn on the CPU; a GPU pipeline's tokens live elsewhere ("meta" stands
    # in for cuda here: it refuses mixed devices the same way)
    x = torch.randn(2, 64, 8, device="meta")
    merge = match_tokens(x, grid_partition(8, 8), 20)
    assert merge.n_kept == 44 and merge.merge(x).shape == (2, 44, 8)


class _OpCount(TorchDispatchMode):
    """Counts the ops that do work (views excluded): on a GPU each is a kernel launch."""

    VIEWS = {"view", "_unsafe_view", "expand", "slice", "select", "transpose", "t", "alias"}

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        name = func._schema.name.split("::")[-1]
        if name not in self.VIEWS:
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


def _one_block(x: torch.Tensor, part, r: int) -> list[str]:
    with torch.no_grad(), _OpCount() as count:
        merge = match_tokens(x, part, r)
        merge.unmerge(merge.merge(x))
    return count.ops


@pytest.mark.parametrize("kind", ["grid", "importance"])
def test_a_merged_block_runs_few_ops_once_the_step_has_laid_out_its_partition(kind: str) -> None:
    """The partition's flat indices are laid out on its first matching and reused by every
    later block of the step: a merged block then runs at most 28 ops (matching, merge and
    unmerge; 44 when each block recomputed its offsets), none of which reads a value back
    to the host (no sync on a GPU)."""
    x = _tokens(n=64)
    g = torch.Generator().manual_seed(0)
    part = (
        grid_partition(8, 8, g)
        if kind == "grid"
        else importance_partition(torch.rand(1, 64), 0.5, g)
    )
    first = _one_block(x, part, 32)
    later = _one_block(x, part, 32)
    assert len(later) <= 28 and len(first) > len(later)
    assert not {"_local_scalar_dense", "nonzero", "equal", "item"} & set(later)
    assert _one_block(x, part, 32) == later
