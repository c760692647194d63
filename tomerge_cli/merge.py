"""Token merging: which tokens to keep, and the merge / unmerge around a block's layers.

Two steps, so that the expensive part is shared:
1. a *partition* (destination and source tokens) is drawn once per denoising step and
   token resolution and reused by every block at that resolution:
   - `grid_partition`: ToMe for SD's baseline, one random destination per 2x2 cell;
   - `importance_partition`: the paper's method, destinations drawn from the pool of the
     most important tokens, every source token outside the pool marked for merging;
2. a *matching* per block (`match_tokens`): each source token's most cosine-similar
   destination on the block input; the `r` most redundant sources (and always the ones
   outside the importance pool) are merged into their destination (mean) or dropped.

`Merge.merge` maps (B, N, C) -> (B, N - r, C) and `Merge.unmerge` copies each kept token's
output back to every token merged into it, (B, N - r, C) -> (B, N, C).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from tomerge_cli.constants import MAX_RATIO

POOL_FACTOR = 1.4  # the importance pool holds 1.4x as many tokens as are kept


def tokens_removed(n: int, ratio: float) -> int:
    """r = int(N * ratio): the number of tokens a merged layer does not compute."""
    return int(n * ratio)


def check_ratio(ratio: float) -> float:
    if not (0.0 <= ratio <= MAX_RATIO) or math.isnan(ratio):
        raise ValueError(
            f"ratio must be in [0, {MAX_RATIO}] (a quarter of the tokens are destinations), "
            f"got {ratio}"
        )
    return float(ratio)


@dataclass
class Partition:
    """Destination and source token indices; `forced` marks sources that must be merged.

    Shapes are (P, n) with P = 1 (shared by the whole batch) or one row per image of the
    importance map; `match_tokens` repeats them to the block's batch.
    """

    dst: torch.Tensor  # (P, n_dst) int64
    src: torch.Tensor  # (P, n_src) int64
    forced: torch.Tensor | None = None  # (P, n_src) bool: outside the importance pool
    _layouts: dict[tuple[int, int, int], _Layout] = field(
        default_factory=dict, init=False, repr=False, compare=False
    )

    def to(self, device: torch.device) -> Partition:
        """On `device` (itself when already there): partitions are drawn on the CPU, the
        tokens they index may live on a GPU."""
        if self.dst.device == device:
            return self
        forced = None if self.forced is None else self.forced.to(device)
        return Partition(self.dst.to(device), self.src.to(device), forced)

    def layout(self, b: int, n: int, r: int) -> _Layout:
        """The index tensors every block's matching on (b, n) tokens with r merged shares,
        made once per partition (once per step) instead of once per block."""
        key = (b, n, r)
        if key not in self._layouts:
            self._layouts[key] = _Layout(self, b, n, r)
        return self._layouts[key]


class _Layout:
    """A partition's indices for a batch of b sequences of n tokens, flat over b * n rows
    (row i of image j is j * n + i), so that each block gathers and scatters with single
    `index_select` / `index_copy_` calls and needs no per-block offset arithmetic: on a
    GPU every op is a kernel launch, and launches are most of a small merge's cost."""

    def __init__(self, partition: Partition, b: int, n: int, r: int) -> None:
        device = partition.dst.device
        rows = torch.arange(b, device=device)[:, None]
        self.src = _expand(partition.src, b) + rows * n  # (b, n_src)
        self.dst = _expand(partition.dst, b) + rows * n  # (b, n_dst)
        self.forced = None if partition.forced is None else _expand(partition.forced, b)
        n_kept = partition.src.shape[1] - r + partition.dst.shape[1]
        # row of the merged output each kept token fills: kept sources first, destinations last
        self.kept_rows = torch.arange(b * n_kept, device=device)
        # a merged token's destination, numbered within the destinations, plus this offset
        self.into_offset = partition.src.shape[1] - r + rows * n_kept


def grid_partition(
    h: int, w: int, generator: torch.Generator | None = None, sx: int = 2, sy: int = 2
) -> Partition:
    """One destination per (sy, sx) cell, at a random place in it (top-left without a
    generator); everything else is a source. Cells that do not fit are all sources."""
    hs, ws = h // sy, w // sx
    if generator is None:
        pick = torch.zeros(hs, ws, dtype=torch.long)
    else:
        pick = torch.randint(sy * sx, (hs, ws), generator=generator, device=generator.device)
        pick = pick.cpu()
    cell_y, cell_x = pick // sx, pick % sx
    ys = torch.arange(hs).view(-1, 1) * sy + cell_y
    xs = torch.arange(ws).view(1, -1) * sx + cell_x
    dst = (ys * w + xs).flatten()
    is_dst = torch.zeros(h * w, dtype=torch.bool)
    is_dst[dst] = True
    src = torch.nonzero(~is_dst).flatten()
    return Partition(dst=dst.sort().values[None], src=src[None])


def pool_size(n: int, ratio: float) -> int:
    """M = min(int((N - r) * 1.4), N) most important tokens form the pool."""
    return min(int((n - tokens_removed(n, ratio)) * POOL_FACTOR), n)


def importance_partition(
    importance: torch.Tensor,
    ratio: float,
    generator: torch.Generator | None = None,
    dst_choice: str = "random",
) -> Partition:
    """The paper's partition from an importance score per token, (P, N).

    Pool = the M most important tokens; destinations = N // 4 of them (drawn at random with
    `generator`, or the top ones for dst_choice="topk"); sources = the rest, with every
    source outside the pool marked `forced` (always merged, so it is never kept).
    """
    p, n = importance.shape
    m = pool_size(n, ratio)
    n_dst = n // 4
    order = importance.argsort(dim=1, descending=True)  # sorted once per step
    pool, outside = order[:, :m], order[:, m:]
    if dst_choice == "topk":
        pick = torch.arange(m, device=importance.device).expand(p, m)
    elif dst_choice == "random":
        noise = torch.rand(p, m, generator=generator, device=_gen_device(generator))
        pick = noise.to(importance.device).argsort(dim=1)
    else:
        raise ValueError(f"dst_choice must be 'random' or 'topk', got {dst_choice!r}")
    pool = pool.gather(1, pick)
    dst, pool_src = pool[:, :n_dst], pool[:, n_dst:]
    src = torch.cat([outside, pool_src], dim=1)
    forced = torch.zeros(p, src.shape[1], dtype=torch.bool, device=importance.device)
    forced[:, : outside.shape[1]] = True
    return Partition(dst=dst, src=src, forced=forced)


def _gen_device(generator: torch.Generator | None) -> torch.device | str:
    return generator.device if generator is not None else "cpu"


class Merge:
    """The merge / unmerge pair one block uses (`r` tokens merged into destinations).

    Indices are flat over batch * tokens: one `index_select` / `index_add_` over the rows
    is several times faster on CPU than `gather` / `scatter_reduce` with an expanded
    (B, N, C) index, and these ops run around every merged layer.
    """

    def __init__(
        self,
        kept: torch.Tensor,
        merged: torch.Tensor,
        into: torch.Tensor,
        slot: torch.Tensor,
        average: bool,
    ) -> None:
        self.batch, self.tokens = slot.shape
        self._kept = kept.flatten()  # (B * (N - r)) rows of x kept, destinations last
        self._merged = merged.flatten()  # (B * r) rows of x merged away
        self._into = into.flatten()  # (B * r) row of the merged output each one joins
        self._slot = slot.flatten()  # (B * N) row of the merged output every token reads
        self.average = average
        if average:  # 1 / group size, for the mean of each destination and its sources
            count = torch.ones(self._kept.shape[0], device=slot.device)
            count.index_add_(0, self._into, torch.ones_like(self._into, dtype=torch.float))
            self._scale = count.reciprocal_().view(self.batch, -1, 1)

    @property
    def n_kept(self) -> int:
        return self._kept.shape[0] // self.batch

    @property
    def flat_kept(self) -> torch.Tensor:
        """(B * (N - r)) kept rows of the (B * N, C) tokens."""
        return self._kept

    # per-image positions, (B, .): for rotary tables and tests, not for merging itself
    @property
    def kept(self) -> torch.Tensor:
        return row_positions(self._kept, self.batch, self.tokens)

    @property
    def merged(self) -> torch.Tensor:
        return row_positions(self._merged, self.batch, self.tokens)

    @property
    def into(self) -> torch.Tensor:
        return row_positions(self._into, self.batch, self.n_kept)

    @property
    def slot(self) -> torch.Tensor:
        return row_positions(self._slot, self.batch, self.n_kept)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        flat = x.reshape(-1, c)
        out = flat.index_select(0, self._kept)
        if self.average and self._merged.numel():
            out.index_add_(0, self._into, flat.index_select(0, self._merged))
            return out.view(b, -1, c) * self._scale.to(x.dtype)
        return out.view(b, -1, c)

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        b, _, c = y.shape
        return y.reshape(-1, c).index_select(0, self._slot).view(b, -1, c)


def row_positions(flat: torch.Tensor, rows: int, n: int) -> torch.Tensor:
    """Flat indices over rows * n back to positions within each row, (rows, -1)."""
    out = flat.view(rows, -1)
    if rows == 1:
        return out
    return out - torch.arange(rows, device=flat.device)[:, None] * n


def _cpu_has_bf16() -> bool:
    try:  # oneDNN's own check; builds without oneDNN lack the op
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_CPU_BF16 = _cpu_has_bf16()  # probed once, at import: under torch.compile a constant


def similarity_dtype(metric: torch.Tensor) -> torch.dtype:
    """The dtype of the source x destination similarity product, the largest cost of the
    matching. A float32 model on a CPU with native bfloat16 gets bfloat16 (5x faster here,
    27 -> 5.5 ms at N=4096, C=320, B=2): only the choice of partners depends on it, the
    merged values stay in the model's dtype (tomesd in a float16 pipeline matches in float16
    likewise). Elsewhere the metric's own dtype."""
    if metric.device.type == "cpu" and metric.dtype == torch.float32 and _CPU_BF16:
        return torch.bfloat16
    return metric.dtype


def match_tokens(metric: torch.Tensor, partition: Partition, r: int, average: bool = True) -> Merge:
    """Merge the `r` source tokens most similar (cosine on `metric`, (B, N, C)) to a
    destination, forced sources first; `average=False` drops them instead (pruning)."""
    b, n, c = metric.shape
    partition = partition.to(metric.device)
    r = min(r, partition.src.shape[1])
    lay = partition.layout(b, n, r)
    with torch.no_grad():
        unit = F.normalize(metric, dim=-1).to(similarity_dtype(metric)).reshape(-1, c)
        src = unit.index_select(0, lay.src.flatten()).view(b, -1, c)
        dst = unit.index_select(0, lay.dst.flatten()).view(b, -1, c)
        best, best_dst = (src @ dst.transpose(1, 2)).max(dim=-1)
        best = best.float()
        if lay.forced is not None:
            best = best.masked_fill(lay.forced, float("inf"))
        # stable: equal similarities (frequent in bfloat16) keep a fixed order
        order = best.argsort(dim=1, descending=True, stable=True)
        merged_pos, kept_pos = order[:, :r], order[:, r:]
        merged = lay.src.gather(1, merged_pos)
        kept = torch.cat([lay.src.gather(1, kept_pos), lay.dst], dim=1)
        into = best_dst.gather(1, merged_pos) + lay.into_offset
        slot = torch.empty(b, n, dtype=torch.long, device=metric.device)
        flat_slot = slot.view(-1)
        flat_slot.index_copy_(0, kept.flatten(), lay.kept_rows)
        flat_slot.index_copy_(0, merged.flatten(), into.flatten())
    return Merge(kept=kept, merged=merged, into=into, slot=slot, average=average)


def _expand(t: torch.Tensor, b: int) -> torch.Tensor:
    """Rows of a partition for a batch of `b`: shared (1 row) or tiled (the CFG halves
    and video frames repeat the importance map's images)."""
    if t.shape[0] == b:
        return t
    if t.shape[0] == 1:
        return t.expand(b, -1)
    if b % t.shape[0]:
        raise ValueError(f"partition for {t.shape[0]} images cannot serve a batch of {b}")
    return t.repeat(b // t.shape[0], 1)


def token_grid(
    n_tokens: int, latent_hw: tuple[int, int], patch: int = 1
) -> tuple[int, int, int] | None:
    """(downsample level, h, w) of a block with `n_tokens` tokens on a latent of size
    latent_hw (level 1 = the finest token grid), or None when no grid fits."""
    lh, lw = latent_hw[0] // patch, latent_hw[1] // patch
    level = int(math.ceil(math.sqrt(lh * lw / n_tokens)))
    h, w = math.ceil(lh / level), math.ceil(lw / level)
    return (level, h, w) if h * w == n_tokens else None


def importance_map(eps: torch.Tensor, channels: int | None = None) -> torch.Tensor:
    """|eps_cond - eps_uncond| averaged over channels, from a CFG batch [uncond; cond].

    eps: (2B, C, H, W) or a video (2B, C, F, H, W); channels: keep only the first ones
    (a DiT with learned sigma predicts noise and variance). Returns (B, H, W) or
    (B * F, H, W), frames of one video consecutive (the order of AnimateDiff's spatial
    layers)."""
    if channels is not None:
        eps = eps[:, :channels]
    uncond, cond = eps.float().chunk(2)
    imp = (cond - uncond).abs().mean(dim=1)
    return imp.flatten(0, 1) if imp.ndim == 4 else imp


def resize_importance(imp: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Area-downsample a (P, H, W) map to a (P, h * w) token grid."""
    if imp.shape[-2:] != (h, w):
        imp = F.adaptive_avg_pool2d(imp[:, None], (h, w))[:, 0]
    return imp.flatten(1)
