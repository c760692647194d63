"""When merging pays: a measured threshold below which a block is left unmerged.

Merging a block costs a nearly fixed amount (the matching's similarity product, argsort and
the gather / scatter around the layer: a few dozen small kernels) and saves the work of the
tokens it removes, which grows with ratio x batch x tokens x width on a CPU and x width^2 on a
GPU (the "work" below). Below some work the fixed cost wins and merging makes a small image
slower than not merging.
`apply_patch(skip_unprofitable=True)` (the default) leaves a block call unmerged when its
work is below `MIN_WORK` (`MIN_WORK_CUDA` on a CUDA GPU), the tokens being those its
attention runs over (one image; every frame for Wan, whose attention spans them; one frame
for AnimateDiff's spatial blocks); `default_min_tokens` turns that into a token count, and
`min_tokens=` sets a fixed token threshold instead.

CPU (`block_costs`, then `break_even_tokens`): one self-attention + MLP block, batch 2,
SDPA, float32, ratio 0.5, attention merged (the default), timed unmerged vs merged (matching
included) on 16 ... 1024 tokens, on this project's CPU with one thread. Break-even: width 64
at 576 tokens (at 256 merged was 6% slower), width 320 at 64 tokens, width 1536 at 16 or
fewer (1.22x faster at 16): tokens x width of 20k-37k, so 32768 at ratio 0.5 and batch 2,
i.e. MIN_WORK = 32768. Since a step lays out its partition's indices once (fewer ops per
merged block), one recalibration put width 64 at 256 tokens (merged 1.08x there), the others
as before: work 16k-25k, so MIN_WORK is now a little conservative at small widths.
Real models merge at every size they are used at (SD 1.5 with CFG,
width 320: from 103 tokens; Flux, width 3072, batch 1: from 22); tiny test models (width 32:
from 1024 tokens) are left alone.

CUDA: on a GPU the matching's cost is mostly fixed per block call (its few dozen small
kernels are launched by the host: ~1.2 ms per call on an H200, see below), while what merging
saves is GPU time, dominated by the linear layers: ratio x batch x tokens x width^2. So on a
CUDA device the work is counted with width squared, and MIN_WORK_CUDA comes from whole
diffusion transformers at full depth on an NVIDIA H200 in bf16
(benchmarks/results/tomerge/dit_step-cuda.md and dit_step-cuda-wan21.md, every block merged,
median per-step speed-up at ratio 0.3 / 0.5 / 0.7): Flux.1 at 1024^2 (batch 1, 4096 tokens,
width 3072) merging skipped at 0.3 (the block run, dit_speed-cuda.md, measured 0.93x there),
1.14x at 0.5, 1.29x at 0.7; SD3.5-medium at 1024^2 (CFG batch 2, width 1536) 0.88x at 0.5
and 0.7: slower; Wan 2.1 at 21 frames (32760 tokens, width 1536, batch 1) 1.40x, 1.79x,
2.23x. The threshold is the smallest faster point, Flux at ratio 0.5 (0.5 x 1 x 4096 x
3072^2); every slower point lies below it (SD3.5 at 0.7: 0.7 x 2 x 4096 x 1536^2 is 0.70 of
it) and every faster one on or above it (Wan at 0.3: 1.17 of it). Counting width once, as on
the CPU, cannot separate these: SD3.5 at 0.5 has the same ratio x batch x tokens x width as
Flux at 0.5. A bare attention + MLP block, each call between two synchronises
(`python -m tomerge_cli.cost --device cuda --dtype bf16`), breaks even later still (9216
tokens at widths 1280 to 3072, batch 2): merged it costs 1.45 ms at 256 tokens where the
unmerged block takes 0.28 ms, the fixed cost above; in a whole model the host launches ahead
and hides part of it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

import torch

MIN_WORK = 32768  # ratio x batch x tokens x width: measured CPU break-even, see above
MIN_WORK_CUDA = 4096 * 3072**2 // 2  # ratio x batch x tokens x width^2 on a CUDA GPU (H200, bf16)


def min_work(device: torch.device | str = "cpu") -> tuple[int, int]:
    """The break-even work on this kind of device and the power of the width it counts:
    (MIN_WORK, 1) on CPUs, (MIN_WORK_CUDA, 2) on CUDA GPUs (see the module's text)."""
    return (MIN_WORK_CUDA, 2) if torch.device(device).type == "cuda" else (MIN_WORK, 1)


def default_min_tokens(
    width: int, device: torch.device | str = "cpu", ratio: float = 0.5, batch: int = 2
) -> int:
    """The fewest tokens per sample a block of this width (channels) merges with a gain."""
    least, power = min_work(device)
    return math.ceil(least / (max(ratio, 1e-6) * max(batch, 1) * max(width, 1) ** power))


def merge_pays(n_tokens: int, min_tokens: int) -> bool:
    """The per-block decision: merge a call with `n_tokens` image tokens only
    from the break-even on (`min_tokens`: `default_min_tokens` or the user's)."""
    return n_tokens >= min_tokens


def break_even_tokens(costs: Mapping[int, tuple[float, float]]) -> int | None:
    """The smallest token count N such that merging was faster (merged < unmerged seconds)
    at N and at every larger measured count; None when it is not faster at the largest.
    `costs`: N -> (unmerged seconds, merged seconds)."""
    found = None
    for n in sorted(costs, reverse=True):
        unmerged, merged = costs[n]
        if merged >= unmerged:
            break
        found = n
    return found


def block_costs(
    sides: Sequence[int],
    width: int,
    *,
    ratio: float = 0.5,
    batch: int = 2,
    repeats: int = 5,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[int, tuple[float, float]]:
    """Median seconds of one attention + MLP block on side x side token grids (keys: the
    token counts), unmerged vs attention merged at `ratio` (matching included): the input of
    `break_even_tokens`. Random weights: the work does not depend on the values."""
    import torch.nn.functional as F

    from tomerge_cli.merge import Partition, grid_partition, match_tokens, tokens_removed

    g = torch.Generator().manual_seed(0)
    weights = [
        torch.randn(width, k * width, generator=g).div(width**0.5).to(device, dtype)
        for k in (3, 1, 4)
    ]
    weights.append(torch.randn(4 * width, width, generator=g).div(width**0.5).to(device, dtype))
    cuda = torch.device(device).type == "cuda"
    heads = max(width // 64, 1)

    def attention(x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = (t.view(b, n, heads, -1).transpose(1, 2) for t in (x @ weights[0]).chunk(3, -1))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        return out @ weights[1]

    def mlp(x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x @ weights[2]) @ weights[3]

    def timed(fn: Callable[[], torch.Tensor]) -> float:
        fn()  # warm-up
        if cuda:
            torch.cuda.synchronize()
        seconds = []
        for _ in range(repeats):  # on a GPU each call between two synchronises: pessimistic
            start = clock()  # for a pipeline, whose host launches ahead of the GPU
            fn()
            if cuda:
                torch.cuda.synchronize()
            seconds.append(clock() - start)
        return sorted(seconds)[len(seconds) // 2]

    out: dict[int, tuple[float, float]] = {}
    with torch.no_grad():
        for side in sides:
            n = side * side
            x = torch.randn(batch, n, width, generator=g).to(device, dtype)

            # drawn once, as a patched model draws one per step for all its blocks
            part = grid_partition(side, side, g).to(x.device)

            def merged(x: torch.Tensor = x, part: Partition = part) -> torch.Tensor:
                merge = match_tokens(x, part, tokens_removed(x.shape[1], ratio))
                return mlp(merge.unmerge(attention(merge.merge(x))))

            out[n] = (timed(lambda x=x: mlp(attention(x))), timed(merged))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Print, as JSON, `block_costs` and the break-even of each width on this machine:
    e.g. `python -m tomerge_cli.cost --device cuda --dtype bf16 --widths 320 640 1536 3072`."""
    import argparse
    import json

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=sorted(dtypes), default="fp32")
    p.add_argument("--widths", nargs="+", type=int, default=[64, 320, 640, 1280, 1536, 3072])
    p.add_argument("--sides", nargs="+", type=int, default=[4, 8, 16, 24, 32, 48, 64])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    out = {"device": args.device, "dtype": args.dtype, "batch": args.batch, "widths": {}}
    for width in args.widths:
        costs = block_costs(
            args.sides,
            width,
            batch=args.batch,
            repeats=args.repeats,
            device=args.device,
            dtype=dtypes[args.dtype],
        )
        n = break_even_tokens(costs)
        out["widths"][width] = {
            "seconds": {k: list(v) for k, v in costs.items()},  # tokens: (unmerged, merged)
            "speedup": {k: round(a / b, 3) for k, (a, b) in costs.items()},
            "break_even_tokens": n,
            # comparable with min_work(device) (block_costs runs at ratio 0.5)
            "break_even_work": None
            if n is None
            else 0.5 * args.batch * n * width ** min_work(args.device)[1],
        }
        print(width, out["widths"][width]["speedup"], "break-even:", n, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
