"""VBP ablation on real data (digits): accuracy right after pruning vs MACs, for VBP and the
criteria a user would otherwise pick, then KD fine-tuning of the 50% models.

    python -m benchmarks.vbp_ablation [--model vit-small-16] [--finetune-epochs 3]

--model deit-tiny-32 (default) is DeiT-Tiny-shaped (12 blocks, width 192, 3 heads) at image
32 / patch 4; --model vit-small-16 a smaller ViT that trains in minutes; --model vit-swiglu-16
the same ViT with timm's gated SwiGLU MLP. Each is trained here on builtin:digits once (cached
under $TOOLKIT_CACHE). Statistics come from the train split, accuracy from the fixed val split.

Each top-1 comes with a 95% bootstrap interval over the val images, and each method's
difference to VBP at the same ratio with a paired one (the same resampled images for both):
VBP "beats" a method when the whole interval of (method - VBP) is below zero, is "worse"
when it is above zero, and "on par" otherwise. Per-image correctness is kept in the JSON.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any

import torch
from torch import nn

from benchmarks import common
from shared.classify import FitConfig, fit_classifier
from shared.intervals import RESAMPLES, bootstrap_mean, paired, resample_index, verdict
from shared.loaders import make_loader
from shared.profiling import count_macs, count_params
from shared.reference import load_reference, reference_classifier
from shared.timm_data import classification_data, example_input
from vbp_cli.demo import DEMO_KWARGS, DEMO_MODEL, DEMO_RECIPE
from vbp_cli.mlps import find_mlps
from vbp_cli.prune import prune_model
from vbp_cli.stats import collect_stats

PRESETS = {
    # what the issue asks for: DeiT-Tiny-shaped (12 blocks, width 192, 3 heads), 32 px /
    # patch 4 (65 tokens); about 30 min to train on 2 idle cores.
    "deit-tiny-32": dict(
        timm_name="deit_tiny_patch16_224",
        model_kwargs={"img_size": 32, "patch_size": 4, "num_classes": 10},
        epochs=30,
        lr=1e-3,
        batch_size=64,
        weight_decay=0.05,
    ),
    # the same recipe on a smaller ViT (6 blocks, width 96, 16 px / patch 4: 17 tokens),
    # about 30x cheaper to train; the vbp demo's model.
    "vit-small-16": dict(
        timm_name=DEMO_MODEL,
        model_kwargs=DEMO_KWARGS,
        **DEMO_RECIPE,
        batch_size=64,
        weight_decay=0.05,
    ),
    # vit-small-16 with timm's SwiGLU MLP (gate and up projections, SiLU; hidden 264 = 2.75 x
    # width, about the plain MLP's parameter count) and nothing else changed. timm builds a
    # VisionTransformer with mlp_layer=SwiGLU only from a registered config, and a recipe must
    # be JSON, so it comes from timm's AIMv2 config with the rest set back to vit-small-16's
    # (LayerNorm, class token, qkv/proj biases, no patch norm, mean/std 0.5).
    "vit-swiglu-16": dict(
        timm_name="aimv2_large_patch14_224",
        model_kwargs={
            **DEMO_KWARGS,
            "mlp_ratio": 2.75,
            "class_token": True,
            "global_pool": "token",
            "qkv_bias": True,
            "proj_bias": True,
            "norm_layer": "layernorm",
            "embed_norm_layer": "",
            "pretrained_cfg_overlay": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]},
        },
        **DEMO_RECIPE,
        batch_size=64,
        weight_decay=0.05,
    ),
}
RATIOS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
VBP = "VBP (variance + mean-shift)"
OURS = {  # name -> (criterion, compensation)
    VBP: ("variance", True),
    "variance, no compensation": ("variance", False),
    "magnitude + mean-shift": ("magnitude", True),
    "magnitude, no compensation": ("magnitude", False),
    "random, no compensation": ("random", False),
}
TP_METHODS = ("Torch-Pruning magnitude", "Torch-Pruning Taylor")
RECOVERED = (
    VBP,
    "variance, no compensation",
    "magnitude, no compensation",
    "Torch-Pruning magnitude",
)
BOOT = RESAMPLES  # bootstrap resamples of the val images
CONFIDENCE = 0.95


# -- intervals -------------------------------------------------------------------------------
def top1_interval(correct: torch.Tensor, index: torch.Tensor) -> tuple[float, float, float]:
    """Top-1 (%) of per-image correctness and its bootstrap interval (percentile)."""
    return bootstrap_mean(correct.double() * 100, index=index, level=CONFIDENCE)


def paired_vs_vbp(
    other: torch.Tensor, vbp: torch.Tensor, index: torch.Tensor
) -> dict[str, float | str]:
    """Top-1 of `other` minus VBP's (percentage points) on the same images, its paired
    bootstrap interval, and what it says of VBP: "beats" (interval below 0), "worse" (above 0)
    or "on par"."""
    p = paired(other.double() * 100, vbp.double() * 100, "bootstrap", CONFIDENCE, index=index)
    return {**p, "verdict": verdict(p["low"], p["high"], above="worse", below="beats")}


def bits(correct: torch.Tensor) -> str:
    """Per-image correctness as the JSON keeps it: one character per val image in loader
    order, "1" where the top-1 prediction is right."""
    return "".join("1" if c else "0" for c in correct.tolist())


def _ci(top1: float, low: float, high: float) -> str:
    return f"{top1:.1f} [{low:.1f}, {high:.1f}]"


def _diff(p: dict[str, Any]) -> str:
    return f"{p['diff']:+.1f} [{p['low']:+.1f}, {p['high']:+.1f}] {p['verdict']}"


# -- evaluation and the Torch-Pruning peer -------------------------------------------------
@torch.no_grad()
def correct_per_image(model: nn.Module, loader: Any) -> torch.Tensor:
    """Whether each image's top-1 prediction is its label (bool, in loader order)."""
    model.eval()
    return torch.cat([model(images).argmax(-1) == labels for images, labels in loader])


def tp_prune(model: nn.Module, ratio: float, method: str, calib: tuple[torch.Tensor, ...]) -> None:
    """Torch-Pruning (DepGraph) removing the same share of MLP hidden neurons, globally,
    with its own criterion and no compensation. Every input layer of an MLP (fc1; gate and
    up of a SwiGLU) is a root: with only the gate as root, the up projection (ignored) ties
    the group and nothing is pruned."""
    import torch_pruning as tp

    inputs = {layer for ref in find_mlps(model) for layer in ref.input_layers}
    ignored = [m for m in model.modules() if isinstance(m, nn.Linear) and m not in inputs]
    if method.endswith("Taylor"):
        imp = tp.importance.GroupTaylorImportance()
    else:
        imp = tp.importance.GroupMagnitudeImportance(p=2)
    pruner = tp.pruner.MetaPruner(
        model, example_input(model), importance=imp, global_pruning=True,
        pruning_ratio=ratio, ignored_layers=ignored,
    )  # fmt: skip
    if method.endswith("Taylor"):
        model.zero_grad()
        images, labels = calib
        nn.functional.cross_entropy(model(images), labels).backward()
    pruner.step()
    model.zero_grad()


def _matching_rows(pruned: torch.Tensor, original: torch.Tensor) -> torch.Tensor | None:
    """For each row of `pruned`, the index of the identical row of `original` (None when one
    has no twin)."""
    same = (pruned[:, None, :] == original[None, :, :]).all(-1)
    if not bool(same.any(1).all()):
        return None
    return same.to(torch.int8).argmax(1)


@torch.no_grad()
def structure_mismatch(original: nn.Module, pruned: nn.Module) -> str | None:
    """Why `pruned` is not `original` with whole MLP neurons removed, or None when it is:
    each MLP keeps the same neurons in every input layer (both gate and up of a SwiGLU) and
    in its down projection, and nothing outside the MLPs' projections changes."""
    from vbp_cli.mlps import weight_matrix

    touched = set()
    for a, b in zip(find_mlps(original), find_mlps(pruned), strict=True):
        keep = _matching_rows(weight_matrix(b.down_layer).t(), weight_matrix(a.down_layer).t())
        if keep is None:
            return f"{a.name}: down-projection columns that are not original ones"
        if b.down_layer.bias is not None and not torch.equal(b.down_layer.bias, a.down_layer.bias):
            return f"{a.name}: the down projection's bias changed"
        rows = a.rows(keep)
        for path, la, lb in zip(a.inputs, a.input_layers, b.input_layers, strict=True):
            if not torch.equal(weight_matrix(lb), weight_matrix(la)[rows]):
                return f"{a.name}.{path} keeps other neurons than its down projection"
            if la.bias is not None and not torch.equal(lb.bias, la.bias[rows]):
                return f"{a.name}.{path}: bias rows of other neurons"
        for path in (*a.inputs, a.down):
            touched |= {
                f"{a.name}.{path}.{k}" for k, _ in a.module.get_submodule(path).named_parameters()
            }
    before, after = original.state_dict(), pruned.state_dict()
    if set(before) != set(after):
        return "parameters added or removed outside the MLPs"
    for key in before:
        if key not in touched and not torch.equal(before[key], after[key]):
            return f"{key} changed outside the MLPs' projections"
    return None


# -- the benchmark -------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--finetune-epochs", type=float, default=3.0)
    parser.add_argument("--model", choices=sorted(PRESETS), default="deit-tiny-32")
    common.add_common_args(parser)
    args = parser.parse_args()
    common.check_tree(args)
    torch.manual_seed(0)

    recipe = PRESETS[args.model]
    path, meta = reference_classifier(**recipe)
    teacher = load_reference(path)
    train = classification_data("builtin:digits", teacher, "train")
    val = classification_data("builtin:digits", teacher, "val")
    train_loader = make_loader(train.dataset, 128, shuffle=False)
    val_loader = make_loader(val.dataset, 360, shuffle=False)

    def evaluate(model: nn.Module) -> tuple[torch.Tensor, float]:
        correct = correct_per_image(model, val_loader)
        return correct, 100 * correct.double().mean().item()

    example = example_input(teacher)
    base_correct, base_top1 = evaluate(teacher)
    index = resample_index(len(base_correct))
    _, base_low, base_high = top1_interval(base_correct, index)
    base = {
        "top1": base_top1,
        "top1_low": base_low,
        "top1_high": base_high,
        "macs": count_macs(teacher, example),
        "params": count_params(teacher),
        "correct": bits(base_correct),
    }
    stats = collect_stats(teacher, (x for x, _ in train_loader))
    calib = next(iter(make_loader(train.dataset, 256, shuffle=True, seed=1)))

    rows: list[dict[str, Any]] = []
    correct: dict[tuple[str, float], torch.Tensor] = {}
    pruned_at_half: dict[str, nn.Module] = {}
    tp_refused: str | None = None  # why Torch-Pruning's columns are left out, if they are

    def record(name: str, ratio: float, model: nn.Module) -> None:
        hits, top1 = evaluate(model)
        correct[name, ratio] = hits
        rows.append(
            {
                "method": name,
                "ratio": ratio,
                "top1": top1,
                "macs": count_macs(model, example),
                "params": count_params(model),
            }
        )
        if ratio == 0.5:
            pruned_at_half[name] = model

    for ratio in RATIOS:
        for name, (criterion, comp) in OURS.items():
            model = copy.deepcopy(teacher)
            prune_model(model, stats, ratio, criterion=criterion, compensation=comp)
            record(name, ratio, model)
        for name in TP_METHODS if tp_refused is None else ():
            model = copy.deepcopy(teacher)
            tp_prune(model, ratio, name, calib)
            why = structure_mismatch(teacher, model)
            if why is not None:
                tp_refused = f"{name} at ratio {ratio}: {why}"
                print(f"Torch-Pruning left out: {tp_refused}", flush=True)
                break
            record(name, ratio, model.eval())
        print(
            f"ratio {ratio}: "
            + ", ".join(f"{r['method']} {r['top1']:.1f}" for r in rows if r["ratio"] == ratio),
            flush=True,
        )
    if tp_refused is not None:  # a peer that prunes wrongly is not compared at all
        rows = [r for r in rows if r["method"] not in TP_METHODS]
        correct = {k: v for k, v in correct.items() if k[0] not in TP_METHODS}
        pruned_at_half = {k: v for k, v in pruned_at_half.items() if k not in TP_METHODS}
    methods = list(OURS) + (list(TP_METHODS) if tp_refused is None else [])

    for r in rows:
        hits = correct[r["method"], r["ratio"]]
        _, r["top1_low"], r["top1_high"] = top1_interval(hits, index)
        if r["method"] != VBP:
            r["vs_vbp"] = paired_vs_vbp(hits, correct[VBP, r["ratio"]], index)
        r["correct"] = bits(hits)

    # Recovery: KD fine-tuning of the 50% models, same recipe for each.
    recovery: list[dict[str, Any]] = []
    cfg = FitConfig(
        epochs=args.finetune_epochs,
        lr=5e-4,
        weight_decay=0.05,
        kd_alpha=0.5,
        kd_temperature=2.0,
        amp=False,
    )
    aug = classification_data("builtin:digits", teacher, "train", augment=True)
    tuned: dict[str, torch.Tensor] = {}
    for name in (m for m in RECOVERED if m in pruned_at_half):
        model = pruned_at_half[name]
        loader = make_loader(aug.dataset, 64, shuffle=True, seed=0, drop_last=True)
        torch.manual_seed(0)
        fit_classifier(
            model, loader, cfg, device=torch.device("cpu"), teacher=teacher, description=name
        )
        tuned[name], top1 = evaluate(model)
        before = next(r for r in rows if r["method"] == name and r["ratio"] == 0.5)
        _, low, high = top1_interval(tuned[name], index)
        recovery.append(
            {
                "method": name,
                "after_pruning": before["top1"],
                "after_pruning_low": before["top1_low"],
                "after_pruning_high": before["top1_high"],
                "after_finetune": top1,
                "after_finetune_low": low,
                "after_finetune_high": high,
                "correct": bits(tuned[name]),
            }
        )
        print({k: v for k, v in recovery[-1].items() if k != "correct"}, flush=True)
    for r in recovery:
        if r["method"] != VBP:
            r["vs_vbp"] = paired_vs_vbp(tuned[r["method"]], tuned[VBP], index)

    sections = _sections(args, recipe, base, rows, methods, recovery, tp_refused)
    _plot(rows, methods, base, args.model)
    bootstrap = {
        "resamples": BOOT,
        "confidence": CONFIDENCE,
        "seed": 0,
        "images": len(base_correct),
        "kind": "percentile; one resample matrix for all methods, so differences are paired",
        "correct": "per-image top-1 correctness, one character per val image ('1' right)",
    }
    common.write_results(
        "vbp",
        f"ablation-{args.model}",
        f"VBP ablation on builtin:digits ({args.model})",
        sections,
        {
            "teacher": {**recipe, **base},
            "bootstrap": bootstrap,
            "torch_pruning_left_out": tp_refused,
            "sweep": rows,
            "recovery": recovery,
        },
    )
    print((common.RESULTS / "vbp" / f"ablation-{args.model}.md").read_text())


def _sections(
    args: argparse.Namespace,
    recipe: dict[str, Any],
    base: dict[str, Any],
    rows: list[dict[str, Any]],
    methods: list[str],
    recovery: list[dict[str, Any]],
    tp_refused: str | None,
) -> list[tuple[str, str]]:
    at = {(r["method"], r["ratio"]): r for r in rows}
    n = len(base["correct"])
    sweep = common.markdown_table(
        ["MLP ratio", "MMACs"] + methods,
        [
            [ratio, at[VBP, ratio]["macs"] / 1e6]
            + [_ci(*(at[m, ratio][k] for k in ("top1", "top1_low", "top1_high"))) for m in methods]
            for ratio in RATIOS
        ],
    )
    others = [m for m in methods if m != VBP]
    paired = common.markdown_table(
        ["MLP ratio"] + others,
        [[ratio] + [_diff(at[m, ratio]["vs_vbp"]) for m in others] for ratio in RATIOS],
    )
    tally = common.markdown_table(
        ["method", "VBP beats it at", "on par at", "VBP worse at"],
        [
            [m]
            + [
                ", ".join(f"{r:g}" for r in RATIOS if at[m, r]["vs_vbp"]["verdict"] == v) or "-"
                for v in ("beats", "on par", "worse")
            ]
            for m in others
        ],
    )
    rec = common.markdown_table(
        ["method (50%)", "top-1 after pruning", "top-1 after KD fine-tune", "after KD minus VBP"],
        [
            [
                r["method"],
                _ci(r["after_pruning"], r["after_pruning_low"], r["after_pruning_high"]),
                _ci(r["after_finetune"], r["after_finetune_low"], r["after_finetune_high"]),
                _diff(r["vs_vbp"]) if "vs_vbp" in r else "-",
            ]
            for r in recovery
        ],
    )
    if tp_refused is None:
        tp_note = (
            "Torch-Pruning prunes the same share of MLP neurons with every MLP input layer as a "
            "root (fc1; gate and up of a SwiGLU); each of its models was checked to be the "
            "unpruned one with whole neurons removed (the same neurons in every input layer "
            "and the down projection, nothing else changed)."
        )
    else:
        tp_note = (
            "Torch-Pruning's columns are left out: its result was not the unpruned model with "
            f"whole MLP neurons removed ({tp_refused})."
        )
    intervals = (
        f"Intervals: 95% percentile bootstrap over the {n} val images ({BOOT} resamples, seed "
        "0). Differences to VBP are paired: the same resampled images for both methods. VBP "
        '"beats" a method when the interval of (method - VBP) lies below zero, is "worse" '
        'when it lies above zero, "on par" otherwise.'
    )
    return [
        (
            "Unpruned model",
            f"top-1 {_ci(base['top1'], base['top1_low'], base['top1_high'])}% on the {n} val "
            f"digits, {base['macs'] / 1e6:.1f} MMACs, {base['params'] / 1e6:.3f} M params "
            f"({args.model}: {recipe['timm_name']} with {recipe['model_kwargs']}, trained here "
            f"for {recipe['epochs']} epochs, a cached reference model).",
        ),
        ("How to read", f"{intervals}\n\n{tp_note}"),
        ("Top-1 (%) right after pruning, no fine-tuning [95% interval]", sweep),
        (
            "Method minus VBP at the same ratio, top-1 points [95% paired interval], and the "
            "verdict for VBP",
            paired,
        ),
        ("Where VBP beats each method (MLP ratios)", tally),
        (f"Recovery: {args.finetune_epochs:g} epochs of logit KD from the unpruned model", rec),
        ("Plot", f"![accuracy vs MACs](ablation-{args.model}.png)"),
    ]


def _plot(rows: list[dict[str, Any]], methods: list[str], base: dict[str, Any], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    span = max(r["macs"] for r in rows) - min(r["macs"] for r in rows)
    for i, m in enumerate(methods):
        pts = sorted(
            (r["macs"] / 1e6, r["top1"], r["top1_low"], r["top1_high"])
            for r in rows
            if r["method"] == m
        )
        # methods share their MACs: a small offset keeps the interval bars apart
        shift = (i - (len(methods) - 1) / 2) * 0.006 * span / 1e6
        x = [p[0] + shift for p in pts]
        y = [p[1] for p in pts]
        err = [[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]]
        ax.errorbar(x, y, yerr=err, marker="o", ms=3, lw=1, capsize=2, label=m)
    ax.axhline(base["top1"], color="gray", ls="--", lw=1, label="unpruned")
    ax.set_xlabel("MMACs (after pruning)")
    ax.set_ylabel("val top-1 (%) without fine-tuning")
    ax.set_title(f"Pruning a ViT trained on digits ({name}); bars: 95% bootstrap intervals")
    ax.legend(fontsize=7)
    fig.tight_layout()
    common.save_figure(fig, common.RESULTS / "vbp" / f"ablation-{name}.png")


if __name__ == "__main__":
    main()
