"""When merging pays: a measured threshold below which a block is left unmerged.

Merging a block costs a nearly fixed amount (the matching's similarity product, argsort and
the gather / scatter around the layer: a dozen small kernels) and saves the attention work
of the tokens it removes, which grows with tokens x width. Below some size the fixed cost
wins and merging makes a small image slower than not merging. `apply_patch(
skip_unprofitable=True)` (the default) leaves a block call unmerged when the image tokens
its attention runs over (one image; every frame for Wan, whose attention spans them; one
frame for AnimateDiff's spatial blocks) times its width are below `MIN_TOKEN_WIDTH`
(`MIN_TOKEN_WIDTH_CUDA` on a CUDA GPU), i.e. fewer than `default_min_tokens(width, device)`
tokens; `min_tokens=` sets a fixed token threshold instead.

Calibration (`block_costs`, then `break_even_tokens`): one self-attention + MLP block,
batch 2, SDPA, float32, ratio 0.5, attention merged (the default), timed unmerged vs merged
(matching included) on 16 ... 1024 tokens, on this project's CPU with one thread.
Break-even: width 64 at 576 tokens (at 256 merged is 6% slower), width 320 at 64 tokens,
width 1536 at 16 or fewer (1.22x faster at 16): tokens x width of 20k-37k, so the threshold
is 32768 (tokens x width). Real models merge at every size they are used at (SD 1.5, width
320: from 103 tokens; Flux, width 3072: from 11); tiny test models (width 32: from 1024
tokens) are left alone. GPUs run the attention far faster relative to the kernel-launch
cost of the matching; their threshold was not measured here, and the CPU one applies until
`block_costs(..., device="cuda")` is run on a GPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import torch

MIN_TOKEN_WIDTH = 32768  # measured break-even of tokens x width, see the module docstring
MIN_TOKEN_WIDTH_CUDA = MIN_TOKEN_WIDTH  # CUDA GPUs: the CPU value until a GPU calibration


def min_token_width(device: torch.device | str = "cpu") -> int:
    """The break-even of tokens x width on this kind of device."""
    return MIN_TOKEN_WIDTH_CUDA if torch.device(device).type == "cuda" else MIN_TOKEN_WIDTH


def default_min_tokens(width: int, device: torch.device | str = "cpu") -> int:
    """The fewest tokens a block of this width (channels) merges with a gain."""
    return -(-min_token_width(device) // max(width, 1))


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

    from tomerge_cli.merge import grid_partition, match_tokens, tokens_removed

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

    # On a GPU, calls run back to back between two synchronises, as a pipeline runs them: the
    # host launches ahead, so its launch overhead counts only where the GPU waits for it.
    calls = 5 if cuda else 1

    def timed(fn: Callable[[], torch.Tensor]) -> float:
        fn()  # warm-up
        if cuda:
            torch.cuda.synchronize()
        seconds = []
        for _ in range(repeats):
            start = clock()
            for _ in range(calls):
                fn()
            if cuda:
                torch.cuda.synchronize()
            seconds.append((clock() - start) / calls)
        return sorted(seconds)[len(seconds) // 2]

    out: dict[int, tuple[float, float]] = {}
    with torch.no_grad():
        for side in sides:
            n = side * side
            x = torch.randn(batch, n, width, generator=g).to(device, dtype)

            def merged(side: int = side, x: torch.Tensor = x) -> torch.Tensor:
                part = grid_partition(side, side, g).to(x.device)
                merge = match_tokens(x, part, tokens_removed(side * side, ratio))
                return mlp(merge.unmerge(attention(merge.merge(x))))

            out[n] = (timed(lambda x=x: mlp(attention(x))), timed(merged))
    return out


def main(argv: Sequence[str] | None = None) -> None:
    """Print, as JSON, `block_costs` and the break-even of each width on this machine:
    `python -m tomerge_cli.cost --device cuda --dtype bf16` calibrates a GPU."""
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
            "break_even_token_width": None if n is None else n * width,
        }
        print(width, out["widths"][width]["speedup"], "break-even:", n, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
