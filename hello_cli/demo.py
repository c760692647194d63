"""`make demo` for hello: students trained on the shipped synthetic digits (IPC 10: 100
images) with labels from the shipped HeLlO projector, from the teacher itself and from the
hard labels alone, the same seeds and augmented batches for each; real-validation top-1 and
the bytes each label source needs beside the images.

    python -m hello_cli.demo --out DIR [--json] [--seeds 1] [--epochs 15] [--batch-size 16]
        [--student-size 16]

Shipped (references/hello, rebuilt by `python -m hello_cli.references`): the synthetic set
and the projector fitted with `hello distill --synthetic`; the teacher is the digits ViT of
shared.reference. The benchmark's students (resnet10t at 32 px, 60 epochs = 240 steps of 32;
benchmarks/results/hello/storage-synthetic.md, 5 seeds) take many minutes on 2 cores, so
the demo fits a one-minute budget: 15 epochs of batch 16 (105 steps) with the student at
16 px (the digits are 8x8 scans upscaled, so 16 px keeps what there is; the labels still
come from the 32 px augmented batches). Chosen on 360 digits held out of the real TRAIN
split (never the 360 val digits reported), seeds 0 and 1, top-1 hard / teacher / projector:
15 epochs of 32 at 32 px 25.0 / 19.7 / 19.2 (seed 0: soft labels have not paid off yet),
at 16 px 26.4 / 35.3 / 31.4, 20 epochs of 32 at 16 px 25.4 / 30.3 / 35.4, and the chosen
15 epochs of 16 at 16 px 27.9 / 36.1 / 50.7 (~20 CPU-s per student; lr 3e-3 or a KL loss
changed little). `--epochs 60 --batch-size 32 --student-size 32` is the benchmark's recipe.
The three students train at once, one thread each. One seed by default (--seeds N for
more: the spread between seeds is 3-15 points here, which one seed cannot show).
"""

from __future__ import annotations

import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hello_cli import recipes

SOURCES = ("projector", "teacher", "hard")
LABELS = {
    "projector": "projector (HeLlO)",
    "teacher": "teacher online (RDED)",
    "hard": "hard labels",
}
# the one-minute budget (see the module docstring); the benchmark: 60 epochs of 32 at 32 px
EPOCHS, BATCH, STUDENT_SIZE = 15, 16, 16
BENCHMARK_EPOCHS, BENCHMARK_BATCH = 60, 32
WORKERS = 3  # students training at once (one seed's three)


def train_students(
    images: Any,
    labels: Any,
    val: Callable[[], tuple[Any, Any]],
    sources: dict[str, Any],
    *,
    epochs: int,
    seeds: list[int],
    batch: int = BATCH,
    size: int = STUDENT_SIZE,
    workers: int = WORKERS,
    log: Any = None,
) -> dict[str, dict[str, Any]]:
    """Per label source: real-validation top-1 (%) per seed and training seconds. Every
    source gets the same student initialisation and the same augmented batches per seed
    (drawn from the seed alone); the student sees them at `size` px.

    The students train at once on `workers` threads of one torch thread each (on 2 cores
    that beats one student at a time on 2 torch threads, whose small convolutions barely
    use the second one), while this thread calls `val()` for the validation (x, y): its
    imports and loading fill the time the trainings leave."""
    from concurrent.futures import ThreadPoolExecutor

    import timm
    import torch
    from torch.nn.utils import parametrize

    from hello_cli.augment import AugConfig
    from hello_cli.pixels import timm_pixel_input
    from hello_cli.student import StudentConfig, train_student

    jobs = []
    for seed in seeds:
        for name in sources:
            # built here, in order: the global RNG is not drawn from two threads at once
            torch.manual_seed(seed)
            net = timm.create_model(recipes.STUDENT, pretrained=False, num_classes=10)
            jobs.append((seed, name, timm_pixel_input(net, size)))

    def job(seed: int, name: str, model: Any) -> float:
        start = time.perf_counter()
        cfg = StudentConfig(
            epochs=epochs, batch_size=batch, seed=seed, aug=AugConfig(out_size=recipes.IMAGE_SIZE)
        )
        train_student(model, images, labels, 10, sources[name], cfg, description=f"{name} {seed}")
        return time.perf_counter() - start

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        # concurrent trainings' progress bars would fight over the terminal (one line each
        # below); the projector's LoRA weights are frozen, so W + AB is built once, not per call
        with (
            _quiet(),
            parametrize.cached(),
            ThreadPoolExecutor(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool,
        ):
            futures = [pool.submit(job, *j) for j in jobs]
            xv, yv = val()
            seconds = [f.result() for f in futures]
    finally:
        torch.set_num_threads(threads)
    out: dict[str, dict[str, Any]] = {s: {"top1": [], "seconds": 0.0} for s in sources}
    for (seed, name, model), secs in zip(jobs, seconds, strict=True):
        model.eval()
        with torch.no_grad():
            pred = torch.cat([model(b).argmax(-1) for b in xv.split(256)])
        top1 = 100.0 * (pred == yv).float().mean().item()
        out[name]["top1"].append(top1)
        out[name]["seconds"] += secs
        if log is not None:
            log(f"  seed {seed}, {LABELS[name]}: {top1:.1f}% ({secs:.0f} s)")
    return out


@contextmanager
def _quiet() -> Iterator[None]:
    from shared.console import get_console

    console = get_console()
    quiet, console.quiet = console.quiet, True
    try:
        yield
    finally:
        console.quiet = quiet


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
        f"students (resnet10t, {f['epochs']} epochs of {f['batch_size']} at {f['student_px']} px), "
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
    for flag, default, bench, what in (
        ("--epochs", EPOCHS, BENCHMARK_EPOCHS, "student epochs"),
        ("--batch-size", BATCH, BENCHMARK_BATCH, "student batch size"),
        ("--student-size", STUDENT_SIZE, recipes.IMAGE_SIZE, "px the student sees"),
    ):
        ap.add_argument(flag, type=int, default=default, help=f"{what} (benchmark: {bench})")
    args = ap.parse_args(argv)
    if min(args.seeds, args.epochs, args.batch_size, args.student_size) < 1:
        ap.error("--seeds, --epochs, --batch-size and --student-size must be at least 1")

    import torch

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
    # its depthwise convolutions run ~20% faster so on CPU (same logits within 1e-5)
    projector.to(memory_format=torch.channels_last)
    fit = read_metadata(proj_path).get("distill", {})
    console.info(
        f"teacher {ckpt.name} (val top-1 {meta['val_top1']:.1f}%); shipped {syn_path.name} "
        f"({len(images)} images) and {proj_path.name} (agrees with the teacher on "
        f"{fit.get('agreement', float('nan')):.1f}% of real val digits); training "
        f"{len(SOURCES)} x {args.seeds} students at once ({args.epochs} epochs of "
        f"{-(-len(images) // args.batch_size)} batches of {args.batch_size}, "
        f"{args.student_size} px) ..."
    )

    def meanwhile() -> tuple[Any, Any]:
        """What needs no student, done while they train: the image folder, the real
        validation digits and the plotting library."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot  # noqa: F401

        references.write_image_folder(syn_path, out / "synthetic" / "images")
        return load_real("builtin:digits", "val", recipes.IMAGE_SIZE)[:2]

    proj_bytes = storage_bytes(projector.stored_tensors())
    teacher_bytes = model_bytes(teacher)
    sources = {
        "projector": OnlineLabels(projector, proj_bytes),
        "teacher": OnlineLabels(teacher, teacher_bytes),
        "hard": HardLabels(),
    }
    seeds = list(range(args.seeds))
    results = train_students(
        images,
        labels,
        meanwhile,
        sources,
        epochs=args.epochs,
        seeds=seeds,
        batch=args.batch_size,
        size=args.student_size,
        log=console.info,
    )

    n = len(images)
    figures: dict[str, Any] = {
        "images": n,
        "ipc": n // len(names),
        "epochs": args.epochs,
        "benchmark_epochs": BENCHMARK_EPOCHS,
        "batch_size": args.batch_size,
        "benchmark_batch_size": BENCHMARK_BATCH,
        "student_px": args.student_size,
        "benchmark_student_px": recipes.IMAGE_SIZE,
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
        "stored_bytes_this_run": stored_label_bytes(n, len(names), args.epochs, args.batch_size),
        "stored_bytes_300_epochs": stored_label_bytes(n, len(names), 300, BENCHMARK_BATCH),
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
        f"epochs at {args.student_size} px (benchmark: 60 epochs at {recipes.IMAGE_SIZE} px, 5 "
        f"seeds; {EPOCHS} at {STUDENT_SIZE} px: the one-minute budget, chosen on digits held out "
        f"of the real train split), seeds {seeds}; real-val top-1 of 360 digits; teacher ViT "
        f"{meta['val_top1']:.1f}%",
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
