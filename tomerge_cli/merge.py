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

import functools
import math
from dataclasses import dataclass

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

    def to(self, device: torch.device) -> Partition:
        """On `device` (itself when already there): partitions are drawn on the CPU, the
        tokens they index may live on a GPU."""
        if self.dst.device == device:
            return self
        forced = None if self.forced is None else self.forced.to(device)
        return Partition(self.dst.to(device), self.src.to(device), forced)


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

    Indices are kept flat over batch * tokens: one `index_select` / `index_add_` over the
    rows is several times faster on CPU than `gather` / `scatter_reduce` with an expanded
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
        self.kept = kept  # (B, N - r) token indices kept, destinations last
        self.merged = merged  # (B, r) token indices merged away
        self.into = into  # (B, r) position (in the kept list) each merged token goes to
        self.slot = slot  # (B, N) position in the merged sequence every token reads back
        self.average = average
        b, n = slot.shape
        k = kept.shape[1]
        rows = torch.arange(b, device=slot.device)[:, None]
        self._kept = (kept + rows * n).flatten()
        self._merged = (merged + rows * n).flatten()
        self._into = (into + rows * k).flatten()
        self._slot = (slot + rows * k).flatten()
        if average:  # 1 / group size, for the mean of each destination and its sources
            count = torch.ones(b * k, device=slot.device).index_add_(
                0, self._into, torch.ones_like(self._into, dtype=torch.float)
            )
            self._scale = count.reciprocal().view(b, k, 1)

    @property
    def n_kept(self) -> int:
        return self.kept.shape[1]

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


@functools.cache
def _cpu_has_bf16() -> bool:
    try:  # oneDNN's own check; builds without oneDNN lack the op
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def similarity_dtype(metric: torch.Tensor) -> torch.dtype:
    """The dtype of the source x destination similarity product, the largest cost of the
    matching. A float32 model on a CPU with native bfloat16 gets bfloat16 (5x faster here,
    27 -> 5.5 ms at N=4096, C=320, B=2): only the choice of partners depends on it, the
    merged values stay in the model's dtype (tomesd in a float16 pipeline matches in float16
    likewise). Elsewhere the metric's own dtype."""
    if metric.device.type == "cpu" and metric.dtype == torch.float32 and _cpu_has_bf16():
        return torch.bfloat16
    return metric.dtype


def match_tokens(metric: torch.Tensor, partition: Partition, r: int, average: bool = True) -> Merge:
    """Merge the `r` source tokens most similar (cosine on `metric`, (B, N, C)) to a
    destination, forced sources first; `average=False` drops them instead (pruning)."""
    b, n, _ = metric.shape
    partition = partition.to(metric.device)
    dst, src = _expand(partition.dst, b), _expand(partition.src, b)
    n_dst, n_src = dst.shape[1], src.shape[1]
    r = min(r, n_src)
    with torch.no_grad():
        unit = F.normalize(metric, dim=-1).to(similarity_dtype(metric))
        best, best_dst = (_take(unit, src) @ _take(unit, dst).transpose(1, 2)).max(dim=-1)
        best = best.float()
        if partition.forced is not None:
            best = best.masked_fill(_expand(partition.forced, b), float("inf"))
        # stable: equal similarities (frequent in bfloat16) keep a fixed order
        order = best.argsort(dim=1, descending=True, stable=True)
        merged_pos, kept_pos = order[:, :r], order[:, r:]
        merged = src.gather(1, merged_pos)
        kept = torch.cat([src.gather(1, kept_pos), dst], dim=1)
        n_unm = n_src - r
        into = best_dst.gather(1, merged_pos) + n_unm
        slot = torch.empty(b, n, dtype=torch.long, device=metric.device)
        ar = torch.arange(n_unm + n_dst, device=metric.device).expand(b, -1)
        slot.scatter_(1, kept, ar)
        slot.scatter_(1, merged, into)
    return Merge(kept=kept, merged=merged, into=into, slot=slot, average=average)


def _take(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[b, idx[b]] for every b: (B, N, C), (B, K) -> (B, K, C)."""
    b, n, c = x.shape
    rows = torch.arange(b, device=x.device)[:, None] * n
    return x.reshape(-1, c).index_select(0, (idx + rows).flatten()).view(b, -1, c)


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
