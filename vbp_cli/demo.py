"""`make demo` for vbp: prune the shipped digits ViT by 50% of its MLP neurons and show what
it costs and what it saves, in about a minute on 2 cores.

    python -m vbp_cli.demo --out runs/demo/vbp [--json]

1. The digits ViT shipped in references/vbp/ (rebuilt by `python -m vbp_cli.references
   digits-vit`; trained here on first use when missing): top-1 on the held-out digits.
2. collect-stats over the train split, prune 50% of the MLP neurons (one global variance
   ranking, mean-shift compensation), top-1 again with no training.
3. A short knowledge-distillation finetune from the unpruned model (a few seconds; the table
   says how long and how many steps), top-1 again.
4. Speed where pruning can show: the digits model is too small (17 tokens; timing it measures
   Python overhead), so a DeiT-Small (224 px, 197 tokens, 12 blocks) is built from timm's
   config with random weights and each block's MLP keeps the share of neurons VBP kept in the
   corresponding digits block (digits block i -> DeiT-S blocks 2i and 2i+1); both DeiTs are
   timed interleaved in one process. Random weights do not change the time of a dense model.
Writes vbp_demo.png (accuracy, MACs, parameters, speed) and prints one JSON object with --json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from vbp_cli.references import DEMO_KWARGS, DEMO_MODEL, DEMO_RECIPE

__all__ = ["DEMO_KWARGS", "DEMO_MODEL", "DEMO_RECIPE", "main"]

SPEED_MODEL = "deit_small_patch16_224"
DATA = "builtin:digits"
RATIO = 0.5
KD = {"epochs": 2.0, "lr": 1e-3}  # 44 steps of batch 64: seconds on 2 idle cores


def speed_models(shares: list[float]) -> dict[str, Any]:
    """Dense and VBP-shaped DeiT-S (random weights): block j keeps shares[j * len // 12]."""
    import torch
    from torch import nn

    from shared.profiling import count_macs, count_params
    from vbp_cli.models import create_timm_model

    dense = create_timm_model(SPEED_MODEL, {})
    pruned = create_timm_model(SPEED_MODEL, {})
    depth = len(pruned.blocks)
    for j, block in enumerate(pruned.blocks):
        share = shares[j * len(shares) // depth]
        width = max(1, round(block.mlp.fc1.out_features * share))
        block.mlp.fc1 = nn.Linear(block.mlp.fc1.in_features, width)
        block.mlp.fc2 = nn.Linear(width, block.mlp.fc2.out_features)
    example = torch.randn(1, 3, 224, 224)
    return {
        "models": {"dense": dense.eval(), "pruned": pruned.eval()},
        "macs": [count_macs(m, example) for m in (dense, pruned)],
        "params": [count_params(m) for m in (dense, pruned)],
    }


def picture(path: Path, f: dict[str, Any], claim: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shared.io import atomic_write

    grey, blue, green = "#9e9e9e", "#1f77b4", "#2ca02c"
    fig, axes = plt.subplots(1, 4, figsize=(15, 4.2))

    def bars(ax: Any, labels: list[str], values: list[float], colors: list[str], fmt: str) -> None:
        drawn = ax.bar(labels, values, color=colors)
        ax.bar_label(drawn, labels=[fmt.format(v) for v in values], padding=2, fontsize=9)
        ax.set_ylim(0, max(values) * 1.18)
        ax.spines[["top", "right"]].set_visible(False)

    ax = axes[0]
    top1 = [f["top1_unpruned"], f["top1_pruned"], f["top1_kd"]]
    kd = f"+ KD\n{f['kd_seconds']:.0f} s"
    bars(ax, ["unpruned", "VBP 50%\nno training", kd], top1, [grey, blue, green], "{:.1f}%")
    ax.axhline(f["top1_unpruned"], color=grey, lw=0.8, ls="--")
    ax.set_title("digits ViT: val top-1 (%)")
    ax = axes[1]
    bars(ax, ["unpruned", "VBP 50%"], [f["macs_unpruned"] / 1e6, f["macs_pruned"] / 1e6],
         [grey, blue], "{:.2f} M")  # fmt: skip
    ax.set_title("digits ViT: MACs per image")
    ax = axes[2]
    bars(ax, ["unpruned", "VBP 50%"], [f["params_unpruned"] / 1e6, f["params_pruned"] / 1e6],
         [grey, blue], "{:.3f} M")  # fmt: skip
    ax.set_title("digits ViT: parameters")
    ax = axes[3]
    labels, values, colors = [], [], []
    for b in f["speed_batches"]:
        labels += [f"dense\nbatch {b}", f"pruned\nbatch {b}"]
        values += [1.0, f[f"speedup_b{b}"]]
        colors += [grey, blue]
    bars(ax, labels, values, colors, "{:.2f}x")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_title("DeiT-S, digits per-block shares:\nspeed relative to dense (CPU)")
    ax.set_xlabel(f"MACs -{f['deit_s_macs_reduction']:.0%}, random weights")
    fig.suptitle(claim, fontsize=10, wrap=True)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


def run(out: Path, repeats: int = 3, speed_batches: tuple[int, ...] = (1, 4)) -> dict[str, Any]:
    import torch

    from shared.console import get_console
    from shared.profiling import compare_speed
    from shared.reference import reference_classifier
    from vbp_cli import api
    from vbp_cli.options import (
        CollectStatsOptions,
        EvaluateOptions,
        FinetuneOptions,
        PruneOptions,
    )

    console = get_console()
    start = time.perf_counter()
    # the digits ViT is too small for intra-op threads to help; on a busy machine their
    # spin-waits cost 3x the CPU time. The DeiT-S timing below uses every thread again.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ckpt, _ = reference_classifier(DEMO_MODEL, DEMO_KWARGS, **DEMO_RECIPE)
    where = "shipped" if "references" in ckpt.parts else "cached/trained"
    console.info(f"digits ViT ({where}): {ckpt}")
    model = {"model": DEMO_MODEL, "model_kw": dict(DEMO_KWARGS), "checkpoint": ckpt}
    api.collect_stats_from_options(
        CollectStatsOptions(**model, data=DATA, batch_size=256, num_workers=0), out=out / "stats"
    )
    _, report = api.prune_to_file(
        PruneOptions(**model, stats=out / "stats", ratio=RATIO),
        out=out / "pruned" / "model.safetensors",
    )
    evaluate = {"data": DATA, "speed": False, "num_workers": 0}
    before = api.evaluate(EvaluateOptions(**model, **evaluate))
    after = api.evaluate(
        EvaluateOptions(
            model=str(out / "pruned"), teacher=DEMO_MODEL, teacher_checkpoint=ckpt, **evaluate
        )  # fmt: skip
    )
    kd_start = time.perf_counter()
    kd = api.finetune(
        FinetuneOptions(model=str(out / "pruned"), data=DATA, num_workers=0, **KD),
        out=out / "kd",
    )
    kd_seconds = time.perf_counter() - kd_start
    shares = [
        report.widths_after[name] / report.widths_before[name] for name in report.widths_before
    ]
    torch.set_num_threads(threads)
    deit = speed_models(shares)
    torch.manual_seed(0)
    rows = compare_speed(
        deit["models"], lambda b: torch.randn(b, 3, 224, 224), speed_batches,
        warmup=1, iters=1, repeats=repeats,
    )  # fmt: skip
    speed = {(r["model"], r["batch_size"]): r for r in rows}
    f: dict[str, Any] = {
        "top1_unpruned": before["top1"],
        "top1_pruned": after["top1"],
        "top1_kd": kd["top1"],
        "agreement_pruned": after["teacher_agreement"],
        "kd_seconds": round(kd_seconds, 1),
        "kd_steps": kd["steps"],
        "kd_epochs": KD["epochs"],
        "macs_unpruned": report.macs_before,
        "macs_pruned": report.macs_after,
        "params_unpruned": report.params_before,
        "params_pruned": report.params_after,
        "mlp_keep_shares": [round(s, 3) for s in shares],
        "speed_model": f"{SPEED_MODEL} (timm config, random weights, per-block digits shares)",
        "deit_s_macs_reduction": round(1 - deit["macs"][1] / deit["macs"][0], 4),
        "deit_s_params_reduction": round(1 - deit["params"][1] / deit["params"][0], 4),
        "speed_batches": list(speed_batches),
    }
    for b in speed_batches:
        f[f"ms_dense_b{b}"] = round(speed["dense", b]["ms_per_batch"], 2)
        f[f"ms_pruned_b{b}"] = round(speed["pruned", b]["ms_per_batch"], 2)
        f[f"speedup_b{b}"] = round(speed["pruned", b]["speedup"], 3)
    f["seconds"] = round(time.perf_counter() - start, 1)
    return f


def claim_of(f: dict[str, Any]) -> str:
    b = max(f["speed_batches"])
    slow = [x for x in f["speed_batches"] if f[f"speedup_b{x}"] < 1.0]
    where_not = (
        f"; at batch {', '.join(map(str, slow))} the pruned DeiT-S is not faster here"
        if slow
        else ""
    )
    saved = 1 - f["macs_pruned"] / f["macs_unpruned"]
    return (
        f"VBP removes 50% of the digits ViT's MLP neurons ({saved:.0%} fewer MACs) and keeps "
        f"{f['top1_pruned']:.1f}% top-1 of {f['top1_unpruned']:.1f}% with "
        f"no training; {f['kd_seconds']:.0f} s of distillation bring it to {f['top1_kd']:.1f}%. "
        f"The same per-block shares make a DeiT-S {f['deit_s_macs_reduction']:.0%} cheaper and "
        f"{f[f'speedup_b{b}']:.2f}x as fast at batch {b}{where_not}."
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vbp_cli.demo", description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("runs/demo/vbp"), help="output folder")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved timing rounds")
    args = ap.parse_args(argv)
    from shared.console import configure

    console = configure(json_mode=args.json)
    args.out.mkdir(parents=True, exist_ok=True)
    f = run(args.out, repeats=args.repeats)
    claim = claim_of(f)
    rows = [
        ("val top-1 (%)", f["top1_unpruned"], f["top1_pruned"], f["top1_kd"]),
        ("MACs (M)", f["macs_unpruned"] / 1e6, f["macs_pruned"] / 1e6, f["macs_pruned"] / 1e6),
        ("params (M)", f["params_unpruned"] / 1e6, f["params_pruned"] / 1e6,
         f["params_pruned"] / 1e6),
    ]  # fmt: skip
    console.table(
        f"vbp on the digits ViT: 50% of MLP neurons; KD = {f['kd_steps']} steps, "
        f"{f['kd_seconds']:.1f} s",
        ["", "unpruned", "VBP 50%", "VBP 50% + KD"],
        rows,
    )
    speed_rows = [
        (f"batch {b}", f[f"ms_dense_b{b}"], f[f"ms_pruned_b{b}"], f[f"speedup_b{b}"])
        for b in f["speed_batches"]
    ]
    console.table(
        f"speed: {f['speed_model']}; MACs -{f['deit_s_macs_reduction']:.1%}, "
        f"params -{f['deit_s_params_reduction']:.1%}",
        ["", "dense ms", "pruned ms", "speed-up"],
        speed_rows,
    )
    path = picture(args.out / "vbp_demo.png", f, claim)
    console.info(claim)
    console.info(f"picture: {path}")
    if args.json:
        sys.stdout.write(json.dumps({"figures": f, "picture": str(path), "claim": claim}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
