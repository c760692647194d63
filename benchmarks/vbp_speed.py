"""VBP speed on this machine: dense vs pruned DeiT-B/S/T at 224, measured in interleaved
rounds, plus the overhead of collecting statistics over a plain forward pass.

    python -m benchmarks.vbp_speed [--models deit_base_patch16_224 ...] [--repeats 7]
        [--batches 1 32] [--threads N] [--img-size 224] [--name speed]

In every round each variant of a model and batch size is timed back to back, the order
rotated by one variant per round; a variant's speed-up is the per-round ratio dense time /
its time (median, min-max and the t interval of the mean over rounds), so a slow spell of
the machine hits dense and variant alike. `--models` takes any timm ViT name; `--img-size`
builds it at another input size (e.g. `vit_tiny_patch16_224 --img-size 32` for a quick run).

The weights are random (no checkpoint is loaded; speed does not depend on them). The uneven
VBP widths come from statistics of that random-weight model on real photos (builtin:photos),
so they are *a* global-ranking pattern, not the one of a trained DeiT. `uniform` removes the
same share from every block.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F

from benchmarks import common
from benchmarks.common import add_common_args, check_tree, markdown_table, write_results
from shared.builtin_data import PhotoImages
from shared.intervals import ratio_spread
from shared.profiling import count_macs, count_params, round_order
from vbp_cli.prune import prune_model
from vbp_cli.stats import StatsCollector, collect_stats

RATIO = 0.55
DEFAULT_MODELS = ["deit_base_patch16_224", "deit_small_patch16_224", "deit_tiny_patch16_224"]
# With --inner auto: 3 timed calls per round (their median kept) when one dense forward takes
# under this many seconds, else 1 (DeiT-B at batch 32 takes ~10 s a call on 2 cores).
AUTO_INNER_S = 1.0
WEIGHTS_NOTE = (
    "The weights are random (no checkpoint is loaded; speed does not depend on them). The "
    "uneven VBP widths come from statistics of that random-weight model on real photos "
    "(builtin:photos), so they are one global-ranking pattern, not the one of a trained model. "
    "`uniform` removes the same share from every block."
)


def photo_batches(n_images: int, size: int = 224) -> list[torch.Tensor]:
    photos = PhotoImages("all")
    imgs = []
    for i in range(n_images):
        x = photos[i % len(photos)]
        x = x[0] if isinstance(x, tuple) else x
        imgs.append(F.interpolate(x[None], size=(size, size), mode="bilinear", antialias=True))
    x = torch.cat(imgs)
    return [(x - 0.45) / 0.225]


def build(name: str, img_size: int = 224) -> torch.nn.Module:
    """A random-weight timm model; `img_size` passed only when it differs from 224, so the
    default build is timm's own."""
    kwargs = {} if img_size == 224 else {"img_size": img_size}
    return timm.create_model(name, pretrained=False, **kwargs).eval()


def variants_of(
    dense: torch.nn.Module, img_size: int = 224, ratio: float = RATIO
) -> dict[str, torch.nn.Module]:
    """Dense first, then VBP (one global ranking: uneven widths), VBP with widths rounded to
    64 and uniform (the same share of every MLP), all removing `ratio` of the MLP neurons."""
    stats = collect_stats(dense, photo_batches(8, img_size))
    out = {"dense": dense}
    for label, round_to, uniform in (
        ("VBP", 1, False),
        ("VBP round-to 64", 64, False),
        (f"uniform {ratio:.0%}", 1, True),
    ):
        model = copy.deepcopy(dense)
        prune_model(model, stats, ratio, round_to=round_to, uniform=uniform)
        out[label] = model.eval()
    return out


def variants(name: str, img_size: int = 224) -> dict[str, torch.nn.Module]:
    return variants_of(build(name, img_size), img_size)


def _call_s(model: torch.nn.Module, x: torch.Tensor) -> float:
    start = time.perf_counter()
    model(x)
    return time.perf_counter() - start


def time_rounds(
    models: dict[str, torch.nn.Module],
    x: torch.Tensor,
    repeats: int,
    inner: int | None = None,
    warmup: int = 1,
) -> tuple[dict[str, list[float]], int]:
    """Seconds per forward of each model in each of `repeats` rounds (median of `inner`
    calls; None: chosen from the first model's warm-up time), and the `inner` used."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        warm = {n: min(_call_s(models[n], x) for _ in range(max(warmup, 1))) for n in names}
        if inner is None:
            inner = 3 if warm[names[0]] < AUTO_INNER_S else 1
        for i in range(repeats):
            for n in round_order(names, i):
                times[n].append(statistics.median(_call_s(models[n], x) for _ in range(inner)))
    return times, inner


def measure_model(
    name: str,
    models: dict[str, torch.nn.Module],
    batches: Sequence[int],
    repeats: int,
    img_size: int = 224,
    inner: int | None = None,
) -> list[dict[str, Any]]:
    """One row per (batch, variant): MACs and params per image, the MAC bound (dense MACs /
    its MACs), the per-round times and, for the pruned variants, `ratio_spread` vs dense."""
    x1 = torch.randn(1, 3, img_size, img_size)
    cost = {k: (count_macs(m, x1), count_params(m)) for k, m in models.items()}
    rows = []
    for batch in batches:
        x = torch.randn(batch, 3, img_size, img_size)
        times, used = time_rounds(models, x, repeats, inner)
        for variant, ts in times.items():
            rows.append(
                {
                    "arch": name,
                    "variant": variant,
                    "batch": batch,
                    "gmacs": cost[variant][0] / 1e9,
                    "mparams": cost[variant][1] / 1e6,
                    "mac_bound": cost["dense"][0] / cost[variant][0],
                    "inner": used,
                    "times_s": ts,
                    "ms_median": statistics.median(ts) * 1e3,
                    "speedup": None if variant == "dense" else ratio_spread(times["dense"], ts),
                }
            )
    return rows


def stats_overhead(
    name: str, batch: int, n_batches: int, repeats: int, img_size: int = 224
) -> dict[str, Any]:
    """collect-stats (hooks + float64 moments) vs a plain no-grad forward on the same data,
    the two timed back to back in each round (order alternating)."""
    model = build(name, img_size)
    data = [torch.randn(batch, 3, img_size, img_size) for _ in range(n_batches)]

    def plain() -> float:
        t = time.perf_counter()
        for x in data:
            model(x)
        return time.perf_counter() - t

    def hooked() -> float:
        t = time.perf_counter()
        with StatsCollector(model):
            for x in data:
                model(x)
        return time.perf_counter() - t

    p_s: list[float] = []
    h_s: list[float] = []
    with torch.no_grad():
        model(data[0])  # warm-up
        for i in range(repeats):
            for fn in (plain, hooked) if i % 2 == 0 else (hooked, plain):
                (p_s if fn is plain else h_s).append(fn())
    return {
        "model": name,
        "images": batch * n_batches,
        "plain_s": statistics.median(p_s),
        "collect_s": statistics.median(h_s),
        # hooked / plain per round: the spread of the overhead factor
        "overhead": ratio_spread(h_s, p_s),
    }


def _range(s: dict[str, float]) -> str:
    return f"{s['min']:.3g}-{s['max']:.3g}"


def _interval(s: dict[str, float]) -> str:
    return f"[{s['low']:.3g}, {s['high']:.3g}]" if s["rounds"] > 1 else "n/a (1 round)"


def model_table(rows: list[dict[str, Any]]) -> str:
    cols = [
        "variant",
        "batch",
        "GMACs",
        "M params",
        "MAC bound",
        "calls",
        "ms/batch (median)",
        "speed-up (median)",
        "min-max",
        "95% t interval (mean)",
    ]
    body = []
    for r in rows:
        s = r["speedup"]
        tail = ["1 (baseline)", "", ""] if s is None else [s["median"], _range(s), _interval(s)]
        body.append(
            [r["variant"], r["batch"], r["gmacs"], r["mparams"], r["mac_bound"], r["inner"]]
            + [r["ms_median"]]
            + tail
        )
    return markdown_table(cols, body)


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Per model, grouped bars of the median speed-up per pruned variant (one bar per batch
    size), whiskers min-max over rounds, the MAC bound of each variant dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    archs = list(dict.fromkeys(r["arch"] for r in rows))
    fig, axes = plt.subplots(
        1, len(archs), figsize=(max(7.0, 4.6 * len(archs)), 4.4), squeeze=False
    )
    for ax, arch in zip(axes[0], archs, strict=True):
        mine = [r for r in rows if r["arch"] == arch and r["speedup"] is not None]
        names = list(dict.fromkeys(r["variant"] for r in mine))
        batches = list(dict.fromkeys(r["batch"] for r in mine))
        width = 0.8 / len(batches)
        for j, b in enumerate(batches):
            sel = {r["variant"]: r for r in mine if r["batch"] == b}
            xs = [i - 0.4 + width * (j + 0.5) for i in range(len(names))]
            med = [sel[n]["speedup"]["median"] for n in names]
            err = [
                [m - sel[n]["speedup"]["min"] for m, n in zip(med, names, strict=True)],
                [sel[n]["speedup"]["max"] - m for m, n in zip(med, names, strict=True)],
            ]
            ax.bar(xs, med, width * 0.9, yerr=err, capsize=3, label=f"batch {b}")
        bounds = {r["variant"]: r["mac_bound"] for r in mine}
        for i, n in enumerate(names):
            ax.hlines(
                bounds[n],
                i - 0.45,
                i + 0.45,
                colors="k",
                linestyles="--",
                lw=1,
                label="MAC bound" if i == 0 else None,
            )
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_ylabel("speed-up over dense (median of rounds)")
        ax.set_title(arch, fontsize=9)
        ax.set_ylim(0, ax.get_ylim()[1] * 1.18)  # headroom: the legend sits above the bars
        ax.legend(fontsize=7, loc="upper left", ncol=len(batches) + 1)
    fig.suptitle("VBP speed-up on CPU (random weights); whiskers: min-max over rounds", fontsize=10)
    fig.tight_layout()
    out = common.save_figure(fig, path)
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, help="timm ViT names")
    parser.add_argument(
        "--batches", "--batch-sizes", dest="batches", nargs="+", type=int, default=[1, 32]
    )
    parser.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    parser.add_argument(
        "--inner",
        type=int,
        default=None,
        help="timed calls per round, their median kept (default: 3, or 1 when a dense "
        f"forward takes over {AUTO_INNER_S:g} s)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's current)"
    )
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument(
        "--overhead-model",
        default="deit_small_patch16_224",
        help="model for the collect-stats overhead ('none' skips it)",
    )
    parser.add_argument("--name", default="speed", help="results file name (vbp/<name>.md)")
    add_common_args(parser)
    args = parser.parse_args(argv)
    check_tree(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(0)

    all_rows: list[dict[str, Any]] = []
    sections = [("Setup", "")]
    for name in args.models:
        rows = measure_model(
            name,
            variants(name, args.img_size),
            args.batches,
            args.repeats,
            args.img_size,
            args.inner,
        )
        all_rows += rows
        bound = next(r["mac_bound"] for r in rows if r["variant"] == "VBP")
        sections.append((f"{name} (MLP ratio {RATIO}; MAC bound {bound:.2f}x)", model_table(rows)))
        print(sections[-1][0] + "\n" + sections[-1][1], flush=True)

    overhead = []
    if args.overhead_model.lower() != "none":
        overhead.append(stats_overhead(args.overhead_model, 16, 4, args.repeats, args.img_size))
        sections.append(
            (
                "collect-stats overhead over a plain no-grad forward",
                markdown_table(
                    ["model", "images", "plain forward s", "collect-stats s", "overhead (median)"]
                    + ["min-max", "95% t interval (mean)"],
                    [
                        [o["model"], o["images"], o["plain_s"], o["collect_s"]]
                        + [o["overhead"]["median"], _range(o["overhead"])]
                        + [_interval(o["overhead"])]
                        for o in overhead
                    ],
                ),
            )
        )
        print(sections[-1][1])

    n_variants = len(dict.fromkeys(r["variant"] for r in all_rows))
    sections[0] = (
        "Setup",
        f"{WEIGHTS_NOTE}\n\nInput {args.img_size}x{args.img_size} px, CPU, {threads} torch "
        f"thread(s). {args.repeats} interleaved rounds per model and batch size, after one "
        "warm-up call of each variant; in round i the variants run back to back starting at "
        f"variant i mod {n_variants}; a variant's time in a round is the median of its "
        f"`calls` timed calls (3, or 1 where a dense forward takes over {AUTO_INNER_S:g} s, "
        "unless --inner is given). Speed-up = "
        "dense time / variant time per round: median over rounds, their min-max and the 95% "
        "Student-t interval of their mean. MAC bound = dense MACs / variant MACs (per image).",
    )
    sections.append(("Plot", f"![speed-up per variant]({args.name}.png)"))
    results = common.RESULTS / "vbp"
    plot(all_rows, results / f"{args.name}.png")
    md = write_results(
        "vbp",
        args.name,
        f"VBP speed on this machine ({', '.join(args.models)} at {args.img_size} px, "
        "random weights)",
        sections,
        {
            "ratio": RATIO,
            "repeats": args.repeats,
            "threads": threads,
            "img_size": args.img_size,
            "batches": args.batches,
            "weights": WEIGHTS_NOTE,
            "rows": all_rows,
            "stats_overhead": overhead,
        },
    )
    print(md.read_text())


if __name__ == "__main__":
    main()
