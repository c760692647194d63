"""`make demo` for hello: students trained on the shipped synthetic digits (IPC 10: 100
images) with labels from the shipped HeLlO projector, from the teacher itself and from the
hard labels alone, the same seeds and augmented batches for each; real-validation top-1 and
the bytes each label source needs beside the images.

    python -m hello_cli.demo --out DIR [--json] [--seeds 1] [--epochs 60]

Shipped (references/hello, rebuilt by `python -m hello_cli.references`): the synthetic set
and the projector fitted with `hello distill --synthetic`; the teacher is the digits ViT of
shared.reference. The students train for the benchmark's 60 epochs (240 steps of 32 images,
~10-25 s each on 2 cores; benchmarks/results/hello/storage-synthetic.md has 5 seeds): at 15
epochs soft labels have not yet paid off (measured here: teacher labels 22.8% vs hard 27.6%,
2 seeds), so fewer epochs would show nothing. One seed by default (--seeds N for more: the
benchmark's spread between seeds is 3-9 points, which one seed cannot show).
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from hello_cli import recipes

SOURCES = ("projector", "teacher", "hard")
LABELS = {
    "projector": "projector (HeLlO)",
    "teacher": "teacher online (RDED)",
    "hard": "hard labels",
}
BATCH = 32


def train_students(
    images: Any,
    labels: Any,
    val: tuple[Any, Any],
    sources: dict[str, Any],
    *,
    epochs: int,
    seeds: list[int],
    log: Any = None,
) -> dict[str, dict[str, Any]]:
    """Per label source: real-validation top-1 (%) per seed and training seconds. Every
    source gets the same student initialisation and the same augmented batches per seed."""
    import timm
    import torch

    from hello_cli.augment import AugConfig
    from hello_cli.pixels import timm_pixel_input
    from hello_cli.student import StudentConfig, train_student

    xv, yv = val
    out: dict[str, dict[str, Any]] = {s: {"top1": [], "seconds": 0.0} for s in sources}
    for seed in seeds:
        for name, source in sources.items():
            start = time.perf_counter()
            torch.manual_seed(seed)
            net = timm.create_model(recipes.STUDENT, pretrained=False, num_classes=10)
            model = timm_pixel_input(net, recipes.IMAGE_SIZE)
            cfg = StudentConfig(
                epochs=epochs,
                batch_size=BATCH,
                seed=seed,
                aug=AugConfig(out_size=recipes.IMAGE_SIZE),
            )
            train_student(model, images, labels, 10, source, cfg, description=f"{name} seed {seed}")
            model.eval()
            with torch.no_grad():
                pred = torch.cat([model(b).argmax(-1) for b in xv.split(256)])
            top1 = 100.0 * (pred == yv).float().mean().item()
            out[name]["top1"].append(top1)
            out[name]["seconds"] += time.perf_counter() - start
            if log is not None:
                log(f"  seed {seed}, {LABELS[name]}: {top1:.1f}%")
    return out


def _std(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def claim(f: dict[str, Any]) -> str:
    """One sentence: what this run's figures show, including where the projector loses."""
    p, t, h = f["projector_top1_mean"], f["teacher_top1_mean"], f["hard_top1_mean"]
    gap = p - t
    vs_teacher = (
        f"{abs(gap):.1f} points {'below' if gap < 0 else 'above'} teacher-taught ones ({t:.1f}%)"
        if abs(gap) >= 0.05
        else f"the same as teacher-taught ones ({t:.1f}%)"
    )
    vs_hard = (
        f"{p - h:.1f} points above hard labels ({h:.1f}%)"
        if p > h
        else f"NOT above hard labels ({h:.1f}%, {h - p:.1f} points better)"
    )
    kb = 1e3
    seeds = (
        "one seed: gaps of a few points are within seed noise"
        if f["seeds"] == 1
        else f"mean of {f['seeds']} seeds"
    )
    pb, s_run, s_300 = (f[k] for k in ("projector_bytes", "stored_bytes_this_run",
                                       "stored_bytes_300_epochs"))  # fmt: skip
    size = (
        f"{'larger' if pb > s_run else 'smaller'} than the soft labels of these "
        f"{f['epochs']} epochs would be ({s_run / kb:.0f} kB stored) and "
        f"{100 * pb / s_300:.0f}% of RDED's 300 epochs' ({s_300 / kb:.0f} kB)"
    )
    return (
        f"On the shipped 100 synthetic digits, students taught by the projector reach "
        f"{p:.1f}% real-validation top-1 ({f['epochs']} epochs, {seeds}), "
        f"{vs_teacher} and {vs_hard}; on 10-class digits the projector "
        f"({pb / kb:.0f} kB) is {size}, and it wins by far only at ImageNet-1K "
        f"scale (computed, not run: {f['imagenet_projector_bytes'] / 1e6:.1f}"
        f" MB vs {f['imagenet_stored_bytes'] / 1e9:.1f} GB), because stored labels grow with "
        "classes x images x epochs and the projector only with its classifier's classes."
    )


def picture(path: Path, images: Any, results: dict[str, dict[str, Any]], f: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from torchvision.utils import make_grid

    from shared.io import atomic_write

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1, 1.1, 1.3]})
    grid = make_grid(images, nrow=10, padding=1, pad_value=1.0).permute(1, 2, 0).numpy()
    axes[0].imshow(grid)
    axes[0].set_axis_off()
    axes[0].set_title("the shipped synthetic set: 10 per digit\n(teacher-picked crops, tiled 2x2)")

    ax = axes[1]
    colors = {"projector": "tab:blue", "teacher": "tab:orange", "hard": "tab:gray"}
    for i, name in enumerate(SOURCES):
        accs = results[name]["top1"]
        ax.bar(i, statistics.mean(accs), yerr=_std(accs), color=colors[name], capsize=6, alpha=0.8)
        ax.scatter([i] * len(accs), accs, color="black", s=12, zorder=3)
        ax.text(i, statistics.mean(accs) + _std(accs) + 1.5, f"{statistics.mean(accs):.1f}%",
                ha="center", fontsize=10)  # fmt: skip
    ax.set_xticks(range(len(SOURCES)), [LABELS[s].replace(" (", "\n(") for s in SOURCES])
    ax.set_ylabel("student real-validation top-1 (%)")
    ax.set_ylim(0, 100)
    ax.set_title(
        f"students (resnet10t, {f['epochs']} epochs), "
        + ("one seed" if f["seeds"] == 1 else f"mean ± std of {f['seeds']} seeds")
        + "\n"
        f"teacher ViT itself: {f['teacher_val_top1']:.1f}%"
    )

    ax = axes[2]
    groups = [
        ("10-class digits, IPC 10", [
            ("projector", f["projector_bytes"], "tab:blue"),
            (f"stored\n{f['epochs']} ep.", f["stored_bytes_this_run"], "tab:red"),
            ("stored\n300 ep.", f["stored_bytes_300_epochs"], "tab:red"),
            ("teacher\nweights", f["teacher_bytes"], "tab:orange"),
        ]),
        ("ImageNet-1K, IPC 10 (computed)", [
            ("projector", f["imagenet_projector_bytes"], "tab:blue"),
            ("stored\n300 ep.", f["imagenet_stored_bytes"], "tab:red"),
        ]),
    ]  # fmt: skip
    x, ticks, names = 0.0, [], []
    for title, bars in groups:
        start = x
        for label, value, color in bars:
            ax.bar(x, value, color=color, alpha=0.8)
            ax.text(x, value * 1.3, _human(value), ha="center", fontsize=8)
            ticks.append(x)
            names.append(label)
            x += 1
        ax.text((start + x - 1) / 2, 3e10, title, ha="center", fontsize=9, weight="bold")
        x += 0.8
    ax.set_yscale("log")
    ax.set_ylim(1e3, 1e11)
    ax.set_xticks(ticks, names, fontsize=8)
    ax.set_ylabel("bytes shipped beside the images (log)")
    ax.set_title("what each label source costs to ship")
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return path


def _human(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def main(argv: list[str] | None = None) -> int:
    from shared.demo import demo_parser

    ap = demo_parser("hello_cli.demo", __doc__, "runs/demo/hello")
    ap.add_argument("--seeds", type=int, default=1, help="student seeds (0..N-1)")
    ap.add_argument("--epochs", type=int, default=60, help="student epochs (benchmark: 60)")
    args = ap.parse_args(argv)
    if args.seeds < 1 or args.epochs < 1:
        ap.error("--seeds and --epochs must be at least 1")

    from shared.console import configure, to_json

    console = configure(json_mode=args.json)
    warnings.filterwarnings("ignore", category=UserWarning)  # third-party noise
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    start = time.perf_counter()

    from hello_cli import references
    from hello_cli.api import model_bytes
    from hello_cli.data_io import load_real
    from hello_cli.labels import HardLabels, OnlineLabels, stored_label_bytes
    from hello_cli.projector import storage_bytes
    from hello_cli.storage import IMAGENET, projector_bytes_for
    from hello_cli.teachers import load_teacher
    from shared.checkpoints import read_metadata

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    ckpt, meta = recipes.teacher_checkpoint()
    teacher, _ = load_teacher([str(ckpt)])
    syn_path = references.shipped("synthetic", console.info)
    images, labels, names = references.load_synthetic_tensor(syn_path)
    proj_path = references.shipped("projector", console.info)
    projector = references.load_shipped_projector(proj_path, out / "projector")
    references.write_image_folder(syn_path, out / "synthetic" / "images")
    xv, yv, _ = load_real("builtin:digits", "val", recipes.IMAGE_SIZE)
    fit = read_metadata(proj_path).get("distill", {})
    console.info(
        f"teacher {ckpt.name} (val top-1 {meta['val_top1']:.1f}%); shipped {syn_path.name} "
        f"({len(images)} images) and {proj_path.name} (agrees with the teacher on "
        f"{fit.get('agreement', float('nan')):.1f}% of real val digits); training "
        f"{len(SOURCES)} x {args.seeds} students for {args.epochs} epochs ..."
    )
    proj_bytes = storage_bytes(projector.stored_tensors())
    teacher_bytes = model_bytes(teacher)
    sources = {
        "projector": OnlineLabels(projector, proj_bytes),
        "teacher": OnlineLabels(teacher, teacher_bytes),
        "hard": HardLabels(),
    }
    seeds = list(range(args.seeds))
    results = train_students(
        images, labels, (xv, yv), sources, epochs=args.epochs, seeds=seeds, log=console.info
    )

    n = len(images)
    figures: dict[str, Any] = {
        "images": n,
        "ipc": n // len(names),
        "epochs": args.epochs,
        "benchmark_epochs": 60,
        "seeds": args.seeds,
        "teacher_val_top1": round(meta["val_top1"], 2),
        "projector_val_agreement": fit.get("agreement"),
    }
    for name in SOURCES:
        accs = results[name]["top1"]
        figures |= {
            f"{name}_top1_mean": round(statistics.mean(accs), 2),
            f"{name}_top1_std": round(_std(accs), 2),
            f"{name}_top1_per_seed": [round(a, 2) for a in accs],
            f"{name}_train_seconds": round(results[name]["seconds"], 1),
        }
    figures["projector_minus_teacher"] = round(
        figures["projector_top1_mean"] - figures["teacher_top1_mean"], 2
    )
    figures["projector_minus_hard"] = round(
        figures["projector_top1_mean"] - figures["hard_top1_mean"], 2
    )
    figures |= {
        "projector_bytes": proj_bytes,
        "teacher_bytes": teacher_bytes,
        "stored_bytes_this_run": stored_label_bytes(n, len(names), args.epochs, BATCH),
        "stored_bytes_300_epochs": stored_label_bytes(n, len(names), 300, BATCH),
        "imagenet_projector_bytes": projector_bytes_for(projector, IMAGENET["classes"]),
        "imagenet_stored_bytes": stored_label_bytes(
            IMAGENET["classes"] * IMAGENET["ipc"],
            IMAGENET["classes"],
            IMAGENET["epochs"],
            IMAGENET["batch_size"],
        ),
    }
    rows = [
        (
            LABELS[name],
            f"{figures[f'{name}_top1_mean']:.1f}",
            f"{figures[f'{name}_top1_std']:.1f}",
            " ".join(f"{a:.1f}" for a in results[name]["top1"]),
            {"projector": proj_bytes, "teacher": teacher_bytes, "hard": 0}[name],
            f"{results[name]['seconds']:.1f}",
        )
        for name in SOURCES
    ]
    rows.append(
        (
            "stored soft labels (SRe2L/FKD), not trained",
            "-",
            "-",
            "-",
            f"{figures['stored_bytes_this_run']} ({args.epochs} ep.), "
            f"{figures['stored_bytes_300_epochs']} (300 ep.)",
            "-",
        )
    )
    console.table(
        f"hello: {recipes.STUDENT} students on the shipped {n} synthetic digits, {args.epochs} "
        f"epochs (benchmark: 60 epochs, 5 seeds), seeds {seeds}; real-val "
        f"top-1 of 360 digits; teacher ViT {meta['val_top1']:.1f}%",
        ["labels", "top-1 (%)", "std", "per seed", "label bytes", "train s"],
        rows,
    )
    console.info(
        f"at ImageNet-1K scale (IPC 10, 300 epochs, computed): projector "
        f"{_human(figures['imagenet_projector_bytes'])} vs stored soft labels "
        f"{_human(figures['imagenet_stored_bytes'])}"
    )
    pic = picture(out / "hello_labels.png", images, results, figures)
    console.info(f"picture: {pic}")
    text = claim(figures)
    console.info(text)
    figures["seconds"] = round(time.perf_counter() - start, 1)
    if args.json:
        sys.stdout.write(to_json({"figures": figures, "picture": str(pic), "claim": text}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
