"""tomerge speed: one Stable Diffusion 1.5 UNet step (built from its config, random weights)
with classifier-free guidance (batch 2), unmerged vs tomesd vs tomerge (importance and our
ToMe baseline), timed interleaved in one run, with SDPA and with math attention.

    python -m benchmarks.tomerge_speed            # 512x512, ratios 0.5 and 0.7 (slow on CPU)
    python -m benchmarks.tomerge_speed --quick    # 256x256, ratio 0.5, fewer repeats
    python -m benchmarks.tomerge_speed --device cuda --dtype fp16 --attention sdpa --bound

On a GPU the step is timed with a synchronise at both ends of each timed call (the host
launches ahead within it, as in a pipeline) and the two CPU-only tables (bookkeeping, layer
costs) are left out.

Random weights are fine for speed: the work done does not depend on the values. All
variants share one set of weights (no copies). Importance mode is timed in its steady
state (the map of the previous call exists), and the CFG batch has identical halves as in
a pipeline. A second table times the merge bookkeeping alone (matching + merge + unmerge
of one full-resolution attention call), the fixed cost that eats the SDPA gain.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from benchmarks import common
from benchmarks.tomerge_dit_speed import DTYPES
from shared.profiling import compare_speed

SD15_UNET = {"cross_attention_dim": 768, "sample_size": 64}  # the rest is diffusers' default
FULL_RES_BLOCKS = 5  # 2 in the first down block, 3 in the last up block


class Step(nn.Module):
    """One UNet call under the chosen attention backend."""

    def __init__(self, unet: nn.Module, math: bool) -> None:
        super().__init__()
        self.unet = unet
        self.math = math

    def forward(self, sample: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if self.math:
            with sdpa_kernel(SDPBackend.MATH):
                return self.unet(sample, 999, emb).sample
        return self.unet(sample, 999, emb).sample


def shared_copy(base: nn.Module) -> nn.Module:
    """A second UNet object on the same parameter tensors (no memory copy), so tomesd and
    tomerge can each patch their own instance."""
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        twin = UNet2DConditionModel.from_config(base.config)
    twin.load_state_dict(base.state_dict(), assign=True)
    return twin.eval()


def variants(
    base: nn.Module,
    ratios: list[float],
    ours_tome: bool,
    layers: dict[str, bool],
    bound_tokens: int | None = None,
) -> dict[str, nn.Module]:
    """The models to time; `layers` (merge_crossattn, merge_mlp) is given to every
    merging method alike."""
    import tomesd

    import tomerge_cli

    out = {"unmerged": base}
    for ratio in ratios:
        m = shared_copy(base)
        tomesd.apply_patch(m, ratio=ratio, **layers)
        out[f"tomesd {ratio}"] = m
        if ours_tome:
            m = shared_copy(base)
            tomerge_cli.apply_patch(m, ratio=ratio, mode="tome", **layers)
            out[f"tomerge tome {ratio}"] = m
        m = shared_copy(base)
        # steady state: importance merging from the second call (warm-up makes the map)
        tomerge_cli.apply_patch(
            m, ratio=ratio, mode="importance", prune_steps=0, importance_start=1, **layers
        )
        out[f"tomerge importance {ratio}"] = m
        if bound_tokens:
            out[f"bound: merged layers on N - r tokens, no matching {ratio}"] = free_merge_copy(
                base, ratio, layers, bound_tokens
            )
    return out


def free_merge_copy(base: nn.Module, ratio: float, layers: dict[str, bool], n: int) -> nn.Module:
    """The bound no matching scheme can beat: the merged layers of every full-resolution
    block see the first N - r tokens (a slice, no similarity, no averaging) and their output
    is copied back to all N by one index_select, so only the cost of the layers on N - r
    tokens remains. Its images are meaningless; only its time is."""
    from tomerge_cli.patch import spatial_blocks

    m = shared_copy(base)
    names = ["attn1"] + [
        n_ for n_, k in (("attn2", "merge_crossattn"), ("ff", "merge_mlp")) if layers[k]
    ]

    def squeeze(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        x = args[0] if args else kwargs["hidden_states"]
        module._squeezed = x.shape[1] == module._full_tokens
        if not module._squeezed:
            return None
        x = x[:, : module._full_tokens - int(module._full_tokens * ratio)]
        return ((x, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": x})

    def spread(module: nn.Module, args: tuple, out: torch.Tensor) -> torch.Tensor | None:
        if not module._squeezed:
            return None
        idx = torch.arange(module._full_tokens, device=out.device) % out.shape[1]
        return out.index_select(1, idx)

    for block in spatial_blocks(m):
        for name in names:
            layer = getattr(block, name)
            layer._full_tokens = n
            layer.register_forward_pre_hook(squeeze, with_kwargs=True)
            layer.register_forward_hook(spread)
    return m


def bookkeeping_ms(n: int, c: int, ratio: float, repeats: int) -> dict[str, float]:
    """Matching + merge + unmerge of one attention call, B=2, (N, C) tokens, in ms."""
    from tomesd.merge import bipartite_soft_matching_random2d

    from tomerge_cli.merge import grid_partition, importance_partition, match_tokens

    side = int(n**0.5)
    x = torch.randn(1, n, c).repeat(2, 1, 1)
    r = int(n * ratio)
    g = torch.Generator().manual_seed(0)
    imp = torch.rand(1, n)

    def tomesd_call() -> None:
        m, u = bipartite_soft_matching_random2d(x, side, side, 2, 2, r, generator=g)
        u(m(x))

    grid = grid_partition(side, side, g)
    pool = importance_partition(imp, ratio, g)

    def ours(partition: Any) -> Callable[[], None]:
        def call() -> None:
            mg = match_tokens(x, partition, r)
            mg.unmerge(mg.merge(x))

        return call

    calls = {
        "tomesd (per block)": tomesd_call,
        "tomerge tome (partition reused)": ours(grid),
        "tomerge importance (partition reused)": ours(pool),
        "tomerge importance partition (once per step)": lambda: importance_partition(imp, ratio, g),
    }
    out = {}
    with torch.inference_mode():
        for name, fn in calls.items():
            fn()
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                for _ in range(5):
                    fn()
                times.append((time.perf_counter() - t) / 5 * 1e3)
            out[name] = statistics.median(times)
    return out


def layer_ms(n: int, ratio: float, repeats: int) -> dict[str, tuple[float, float]]:
    """ms of each layer of one SD 1.5 full-resolution transformer block (C=320, 8 heads,
    B=2) on all N tokens and on the N - r kept ones: what merging a layer can save."""
    from diffusers.models.attention import BasicTransformerBlock

    block = BasicTransformerBlock(320, 8, 40, cross_attention_dim=768).eval()
    ctx = torch.randn(2, 77, 768)
    kept = n - int(n * ratio)
    calls = {
        "attn1 (self-attention)": lambda x: block.attn1(x),
        "attn2 (cross-attention)": lambda x: block.attn2(x, encoder_hidden_states=ctx),
        "ff (MLP)": lambda x: block.ff(x),
    }
    out = {}
    with torch.inference_mode():
        for name, fn in calls.items():
            pair = []
            for tokens in (n, kept):
                x = torch.randn(2, tokens, 320)
                fn(x)
                times = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    fn(x)
                    times.append((time.perf_counter() - t) * 1e3)
                pair.append(statistics.median(times))
            out[name] = (pair[0], pair[1])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="256x256, ratio 0.5, 2 repeats")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels")
    parser.add_argument("--ratios", nargs="+", type=float, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--attention", choices=["sdpa", "math", "both"], default="both", help="backends to time"
    )
    parser.add_argument("--ours-tome", action="store_true", help="also time our ToMe baseline")
    parser.add_argument(
        "--bound",
        action="store_true",
        help="also time the zero-cost merging bound (layers on N - r tokens, no matching)",
    )
    parser.add_argument("--name", default=None, help="results file name (default from options)")
    parser.add_argument(
        "--merge-mlp", action="store_true", help="every method also merges the MLP (ff)"
    )
    parser.add_argument(
        "--merge-crossattn", action="store_true", help="every method also merges attn2's queries"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default fp32 (cuda: fp16)"
    )
    common.add_common_args(parser)
    args = parser.parse_args()
    common.check_tree(args)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype_name = args.dtype or ("fp16" if cuda else "fp32")
    dtype = DTYPES[dtype_name]
    size = args.size or (256 if args.quick else 512)
    ratios = args.ratios or ([0.5] if args.quick else [0.5, 0.7])
    repeats = args.repeats or (2 if args.quick else 3)
    backends = ["sdpa", "math"] if args.attention == "both" else [args.attention]
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    base = UNet2DConditionModel(**SD15_UNET).eval().to(device, dtype)
    latent = size // 8
    sample = torch.randn(1, 4, latent, latent).repeat(2, 1, 1, 1)  # CFG: identical halves
    sample, emb = sample.to(device, dtype), torch.randn(2, 77, 768).to(device, dtype)
    layers = {"merge_crossattn": args.merge_crossattn, "merge_mlp": args.merge_mlp}
    bound = latent * latent if args.bound else None
    models = variants(base, ratios, args.ours_tome or args.quick, layers, bound)
    rows, data = [], {"size": size, "ratios": ratios, "repeats": repeats, "runs": {}}
    for backend in backends:
        steps = {name: Step(m, backend == "math") for name, m in models.items()}
        res = compare_speed(
            steps,
            lambda bs: (sample, emb),
            batch_sizes=[2],
            warmup=1,
            iters=1,
            repeats=repeats,
            device=device,
        )
        data["runs"][backend] = res
        for r in res:
            q = r["speedup_rounds"]
            rows.append(
                (
                    backend,
                    r["model"],
                    r["ms_per_batch"] / 1e3,
                    r["ms_per_batch"] / 2e3,
                    r["speedup"],
                    f"{q['median']:.3f} [{q['min']:.3f}, {q['max']:.3f}]",
                    f"[{q['low']:.3f}, {q['high']:.3f}]",
                )
            )
    n = latent * latent
    data |= {"device": str(device), "dtype": dtype_name}
    cpu_tables = not cuda  # the bookkeeping and layer tables time CPU tensors
    book = {ratio: bookkeeping_ms(n, 320, ratio, repeats=5) for ratio in ratios if cpu_tables}
    data["bookkeeping_ms"] = {str(k): v for k, v in book.items()}
    book_rows = [(ratio, name, ms) for ratio, d in book.items() for name, ms in d.items()]
    costs = {ratio: layer_ms(n, ratio, repeats=3) for ratio in ratios if cpu_tables}
    data["layer_ms"] = {str(k): v for k, v in costs.items()}
    data["layers"] = layers
    cost_rows = [
        (ratio, name, full, kept, full - kept)
        for ratio, d in costs.items()
        for name, (full, kept) in d.items()
    ]
    sections = [
        (
            f"UNet step, {size}x{size} (latent {latent}x{latent}, {n} tokens at full "
            f"resolution), CFG batch 2, {device.type} {dtype_name}; layers merged: "
            + ", ".join(["attn1"] + [k.removeprefix("merge_") for k, on in layers.items() if on]),
            common.markdown_table(
                [
                    "attention",
                    "variant",
                    "s / step",
                    "s / image-step",
                    "speed-up (medians)",
                    "per-round speed-up: median [min, max]",
                    "its mean: 95% t interval",
                ],
                rows,
            ),
        ),
        (
            f"Merge bookkeeping per full-resolution attention call (N={n}, C=320, B=2)",
            common.markdown_table(["ratio", "what", "ms"], book_rows),
        ),
        (
            f"SDPA cost of each layer of one full-resolution block (SD 1.5 has {FULL_RES_BLOCKS}), "
            "ms: what merging it can save before bookkeeping",
            common.markdown_table(["ratio", "layer", f"N={n}", "N - r", "saved"], cost_rows),
        ),
    ]
    if cuda:
        sections = sections[:1]
    name = "speed-quick" if args.quick else "speed"
    if args.merge_crossattn or args.merge_mlp:
        name += "-" + "+".join(k.removeprefix("merge_") for k, on in layers.items() if on)
    if args.attention != "both":
        name += f"-{args.attention}"
    if cuda:
        name += f"-cuda-{dtype_name}"
    name = args.name or name
    path = common.write_results(
        "tomerge",
        name,
        "tomerge speed: SD 1.5 UNet step, unmerged vs tomesd vs tomerge",
        sections,
        data,
    )
    _plot(rows, common.RESULTS / "tomerge" / f"{name}.png")
    print(path.read_text())


def _plot(rows: list[tuple], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = sorted({r[0] for r in rows}, key=["sdpa", "math"].index)
    fig, axes = plt.subplots(1, len(backends), figsize=(5 * len(backends), 3.5), squeeze=False)
    for ax, backend in zip(axes[0], backends, strict=True):
        sub = [r for r in rows if r[0] == backend]
        ax.barh([r[1] for r in sub], [r[4] for r in sub], color="tab:blue")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(f"{backend} attention")
        ax.set_xlabel("speed-up over unmerged (UNet step)")
        ax.invert_yaxis()
    fig.tight_layout()
    common.save_figure(fig, path)


if __name__ == "__main__":
    main()
