"""VBP speed on this machine: dense vs pruned DeiT-B/S/T at 224, measured interleaved in one
run, plus the overhead of collecting statistics over a plain forward pass.

    python -m benchmarks.vbp_speed [--models deit_base_patch16_224 ...] [--repeats 5]

Random weights are fine for speed; the uneven VBP widths come from statistics collected on
real photos (builtin:photos) through the random-weight model, so they are *a* global-ranking
pattern, not the one of a trained DeiT. `uniform` removes the same share from every block.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from typing import Any

import timm
import torch
import torch.nn.functional as F

from benchmarks.common import RESULTS, add_common_args, check_tree, markdown_table, write_results
from shared.builtin_data import PhotoImages
from shared.profiling import compare_speed, count_macs, count_params
from vbp_cli.mlps import find_mlps
from vbp_cli.prune import prune_mlp, prune_model
from vbp_cli.stats import StatsCollector, collect_stats

RATIO = 0.55


def photo_batches(n_images: int, size: int = 224) -> list[torch.Tensor]:
    photos = PhotoImages("all")
    imgs = []
    for i in range(n_images):
        x = photos[i % len(photos)]
        x = x[0] if isinstance(x, tuple) else x
        imgs.append(F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True))
    x = torch.cat(imgs)
    return [(x - 0.45) / 0.225]


def variants(name: str) -> dict[str, torch.nn.Module]:
    dense = timm.create_model(name).eval()
    stats = collect_stats(dense, photo_batches(8))
    out = {"dense": dense}
    for label, round_to in (("VBP", 1), ("VBP round-to 64", 64)):
        model = copy.deepcopy(dense)
        prune_model(model, stats, RATIO, round_to=round_to)
        out[label] = model
    uniform = copy.deepcopy(dense)
    for ref in find_mlps(uniform):
        keep = torch.arange(round(ref.hidden * (1 - RATIO)))
        prune_mlp(ref, keep, stats[ref.name].mean)
    out["uniform 55%"] = uniform
    return out


def stats_overhead(name: str, batch: int, n_batches: int, repeats: int) -> dict[str, float]:
    """collect-stats (hooks + float64 moments) vs a plain no-grad forward on the same data."""
    model = timm.create_model(name).eval()
    data = [torch.randn(batch, 3, 224, 224) for _ in range(n_batches)]
    plain, hooked = [], []
    with torch.no_grad():
        model(data[0])  # warm-up
        for _ in range(repeats):
            t = time.perf_counter()
            for x in data:
                model(x)
            plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            with StatsCollector(model):
                for x in data:
                    model(x)
            hooked.append(time.perf_counter() - t)
    p, h = statistics.median(plain), statistics.median(hooked)
    return {
        "model": name,
        "images": batch * n_batches,
        "plain_s": p,
        "collect_s": h,
        "overhead": h / p,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--models",
        nargs="+",
        default=["deit_base_patch16_224", "deit_small_patch16_224", "deit_tiny_patch16_224"],
    )
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 32])
    parser.add_argument("--repeats", type=int, default=5)
    add_common_args(parser)
    args = parser.parse_args()
    check_tree(args)
    torch.manual_seed(0)

    all_rows: list[dict[str, Any]] = []
    sections = []
    for name in args.models:
        models = variants(name)
        x1 = torch.randn(1, 3, 224, 224)
        cost = {k: (count_macs(m, x1), count_params(m)) for k, m in models.items()}
        rows = compare_speed(
            models,
            lambda b: torch.randn(b, 3, 224, 224),
            args.batch_sizes,
            warmup=1,
            iters=1 if name.startswith("deit_base") else 3,
            repeats=args.repeats,
        )
        for r in rows:
            r |= {
                "arch": name,
                "gmacs": cost[r["model"]][0] / 1e9,
                "mparams": cost[r["model"]][1] / 1e6,
            }
        all_rows += rows
        table = markdown_table(
            ["variant", "batch", "GMACs", "M params", "ms/batch", "images/s", "speed-up"],
            [
                [
                    r["model"],
                    r["batch_size"],
                    r["gmacs"],
                    r["mparams"],
                    r["ms_per_batch"],
                    r["images_per_s"],
                    r["speedup"],
                ]
                for r in rows
            ],
        )
        dense_macs = cost["dense"][0]
        bound = dense_macs / cost["VBP"][0]
        sections.append((f"{name} (MLP ratio {RATIO}; MAC bound {bound:.2f}x)", table))
        print(sections[-1][0] + "\n" + table, flush=True)

    overhead = [stats_overhead("deit_small_patch16_224", 16, 4, 3)]
    sections.append(
        (
            "collect-stats overhead over a plain no-grad forward",
            markdown_table(
                ["model", "images", "plain forward s", "collect-stats s", "overhead"],
                [
                    [o["model"], o["images"], o["plain_s"], o["collect_s"], o["overhead"]]
                    for o in overhead
                ],
            ),
        )
    )
    print(sections[-1][1])
    write_results(
        "vbp",
        "speed",
        "VBP speed on this machine (DeiT at 224, random weights)",
        sections,
        {"ratio": RATIO, "rows": all_rows, "stats_overhead": overhead},
    )
    print((RESULTS / "vbp" / "speed.md").read_text())


if __name__ == "__main__":
    main()
