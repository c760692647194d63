"""HeLlO on real digits: student accuracy and label storage for each label source.

    python -m benchmarks.hello_storage [--ipc 1 10] [--seeds 0]

Teacher: a small ViT trained here on builtin:digits (cached). Synthetic sets: RDED-style
(teacher-scored crops tiled 2x2) at IPC 1 and 10. Students (timm resnet10t, from scratch,
32 px) train on the same synthetic images with the same augmentation plan (random resized
crop, flip, CutMix) and differ only in their labels:
- projector (HeLlO), with a random tiny CLIP (the mechanism) and with the real ImageNet
  EfficientNet-Lite0 from PyPI as encoder; labels computed online; and the EfficientNet
  projector distilled further with the synthetic set's augmented batches (`hello distill
  --synthetic`, beyond the paper), once per synthetic set;
- teacher online (RDED-style); - stored per-epoch soft labels (SRe2L/FKD-style: fp16 logits
  plus the augmentation parameters, replayed); - hard labels.
Label storage is the bytes a user must ship with the images for that source.
"""

from __future__ import annotations

import argparse
import copy
import time
from typing import Any

import torch

from benchmarks import common
from hello_cli import recipes
from hello_cli.augment import AugConfig, apply_aug, plan_epoch
from hello_cli.data_io import load_real
from hello_cli.distill import DistillConfig, agreement, distill_projector
from hello_cli.encoders import DEFAULT_TEMPLATES, EncoderSpec
from hello_cli.labels import HardLabels, OnlineLabels, StoredLabels, compute_stored_labels
from hello_cli.pixels import timm_pixel_input
from hello_cli.projector import build_projector, storage_bytes
from hello_cli.storage import storage_rows
from hello_cli.student import StudentConfig, train_student
from hello_cli.synth import synthesize_class
from hello_cli.teachers import load_teacher
from shared.intervals import paired, t_interval


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_projector(  # noqa: ANN201
    name: str,
    teacher,  # noqa: ANN001
    x,  # noqa: ANN001
    y,  # noqa: ANN001
    xv,  # noqa: ANN001
    yv,  # noqa: ANN001
    names,  # noqa: ANN001
    epochs: int | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Build and distill the projector of a recipe encoder on (x, y); its agreement with the
    teacher is measured on (xv, yv). `epochs` overrides the recipe's (tests)."""
    cfg = dict(recipes.ENCODERS[name])
    if epochs is not None:
        cfg["epochs"] = epochs
    spec = EncoderSpec.parse(cfg["encoder"], cfg["weights"], 0, cfg["image_size"])
    start = time.perf_counter()
    proj = build_projector(spec, names, DEFAULT_TEMPLATES, real_images=x, real_labels=y)
    zero_shot = agreement(proj, teacher, xv, yv)
    trainable = proj.add_lora(cfg["rank"], cfg["head_rank"])
    dcfg = DistillConfig(epochs=cfg["epochs"], batch_size=64, lr=cfg["lr"], ce_weight=0.1)
    distill_projector(proj, teacher, x, y, dcfg, aug=AugConfig(out_size=recipes.IMAGE_SIZE))
    after = agreement(proj, teacher, xv, yv)
    info = {
        "encoder": name,
        "rank": cfg["rank"],
        "epochs": cfg["epochs"],
        "head_rank": cfg["head_rank"],
        "trainable_parameters": trainable,
        "storage_bytes": storage_bytes(proj.stored_tensors()),
        "zero_shot_top1": zero_shot["projector_top1"],
        "zero_shot_agreement": zero_shot["agreement"],
        "distilled_top1": after["projector_top1"],
        "distilled_agreement": after["agreement"],
        "teacher_top1": after["teacher_top1"],
        "seconds": round(time.perf_counter() - start, 1),
    }
    log(f"projector {name}: {info}")
    return proj, info


def fit_on_synthetic(projector, teacher, x, y, images, epochs: int, seed: int):  # noqa: ANN001, ANN201
    """A copy of a distilled projector trained on: real batches + the synthetic set's
    batches augmented as the student sees them (as `hello distill --synthetic` does)."""
    proj = copy.deepcopy(projector)
    proj.train_factors()
    cfg = recipes.ENCODERS["efficientnet-lite0"]
    dcfg = DistillConfig(epochs=epochs, batch_size=32, lr=cfg["lr"], ce_weight=0.1, seed=seed)
    start = time.perf_counter()
    distill_projector(
        proj, teacher, x, y, dcfg, aug=AugConfig(out_size=recipes.IMAGE_SIZE), synthetic=images
    )
    log(f"projector fitted on synthetic batches too in {time.perf_counter() - start:.0f} s")
    return proj


def synthesize(teacher, x, y, ipc: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:  # noqa: ANN001
    gen = torch.Generator().manual_seed(seed)
    imgs = [
        synthesize_class(teacher, x[y == c], c, ipc, image_size=recipes.IMAGE_SIZE, gen=gen)[0]
        for c in range(int(y.max()) + 1)
    ]
    return torch.cat(imgs), torch.arange(len(imgs)).repeat_interleave(ipc)


@torch.no_grad()
def batch_agreement(
    projector, teacher, images, aug: AugConfig, seed: int, epochs: int = 5
) -> float:  # noqa: ANN001
    """Top-1 agreement (%) of projector and teacher on the augmented batches a student sees
    (crop, flip, CutMix of the synthetic images): the distribution the labels are used on,
    unlike the clean real images of the projectors table."""
    same = total = 0
    for epoch in range(epochs):
        for plan in plan_epoch(len(images), tuple(images.shape[-2:]), 32, aug, seed, epoch):
            x = apply_aug(images, plan, aug.out_size)
            same += int((projector(x).argmax(-1) == teacher(x).argmax(-1)).sum())
            total += len(x)
    return 100.0 * same / total


def student_top1(images, labels, xv, yv, source, cfg: StudentConfig, plans=None) -> float:  # noqa: ANN001
    torch.manual_seed(cfg.seed)
    import timm

    net = timm.create_model(recipes.STUDENT, pretrained=False, num_classes=10)
    model = timm_pixel_input(net, recipes.IMAGE_SIZE)
    train_student(model, images, labels, 10, source, cfg, plans=plans)
    with torch.no_grad():
        pred = torch.cat([model(b).argmax(-1) for b in xv.split(256)])
    return 100.0 * (pred == yv).float().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ipc", type=int, nargs="+", default=[1, 10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument(
        "--epochs", type=int, nargs="+", default=[200, 60], help="student epochs for each --ipc"
    )
    parser.add_argument("--encoders", nargs="+", default=list(recipes.ENCODERS))
    parser.add_argument(
        "--synthetic-epochs",
        type=int,
        default=7,
        help="epochs (batch 32, real + synthetic) of the further distillation of the "
        "EfficientNet projector on each synthetic set; 0: skip that row",
    )
    parser.add_argument("--name", default="storage")
    parser.add_argument(
        "--combine",
        nargs="+",
        default=None,
        metavar="JSON",
        help="train nothing: one report from the student rows of earlier results files of this "
        "benchmark (e.g. IPCs or seeds run in parallel processes); their projectors must agree",
    )
    parser.add_argument(
        "--protocol",
        choices=["fixed", "validation"],
        default="fixed",
        help="fixed: --epochs as given, scored on the test digits (the earlier results); "
        "validation: epochs and projector variant chosen on tuning digits carved from the "
        "train split with --tune-seeds, then --seeds scored once on the test digits",
    )
    parser.add_argument("--tune-seeds", type=int, nargs="+", default=[500, 501])
    parser.add_argument("--epoch-grid", type=int, nargs="+", default=[30, 60])
    parser.add_argument("--tuning-size", type=int, default=360)
    parser.add_argument("--split-seed", type=int, default=2026)
    parser.add_argument("--synthesis-seed", type=int, default=300)
    parser.add_argument(
        "--projector-epochs", type=int, default=None, help="override the recipe's (tests)"
    )
    common.add_common_args(parser)
    args = parser.parse_args()
    common.check_tree(args)
    if args.protocol == "validation":
        run_validation_protocol(args)
        return
    if args.combine:
        combine(args)
        return
    torch.manual_seed(0)
    ckpt, meta = recipes.teacher_checkpoint()
    teacher, _ = load_teacher([str(ckpt)])
    x, y, names = load_real("builtin:digits", "train", recipes.IMAGE_SIZE)
    xv, yv, _ = load_real("builtin:digits", "val", recipes.IMAGE_SIZE)
    log(f"teacher {ckpt.name}: val top-1 {meta['val_top1']:.1f}%")
    projectors, proj_rows = {}, []
    for name in args.encoders:
        projectors[name], info = make_projector(name, teacher, x, y, xv, yv, names)
        proj_rows.append(info)
    rows = []
    for ipc, epochs in zip(args.ipc, args.epochs, strict=True):
        for seed in args.seeds:
            images, labels = synthesize(teacher, x, y, ipc, seed)
            bs = min(32, len(images))
            cfg = StudentConfig(
                epochs=epochs, batch_size=bs, seed=seed, aug=AugConfig(out_size=recipes.IMAGE_SIZE)
            )
            stored = StoredLabels(
                compute_stored_labels(
                    teacher, images, epochs=epochs, batch_size=bs, aug=cfg.aug, seed=seed
                ),
                bs,
            )
            teacher_bytes = sum(p.numel() * p.element_size() for p in teacher.parameters())
            sources: dict[str, tuple[Any, int, Any]] = {
                f"projector ({n})": (OnlineLabels(p, 0), storage_bytes(p.stored_tensors()), None)
                for n, p in projectors.items()
            }
            on_batches = {
                f"projector ({n})": batch_agreement(p, teacher, images, cfg.aug, seed)
                for n, p in projectors.items()
            }
            lite = projectors.get("efficientnet-lite0")
            if lite is not None and args.synthetic_epochs > 0:
                fitted = fit_on_synthetic(lite, teacher, x, y, images, args.synthetic_epochs, seed)
                name = "efficientnet-lite0 + synthetic batches"
                sources[f"projector ({name})"] = (
                    OnlineLabels(fitted, 0),
                    storage_bytes(fitted.stored_tensors()),
                    None,
                )
                on_batches[f"projector ({name})"] = batch_agreement(
                    fitted, teacher, images, cfg.aug, seed
                )
            sources["teacher online (RDED)"] = (OnlineLabels(teacher, 0), teacher_bytes, None)
            sources["stored soft labels (SRe2L/FKD)"] = (stored, stored.storage_bytes, stored.plan)
            sources["hard labels"] = (HardLabels(), 0, None)
            for label, (source, nbytes, plans) in sources.items():
                start = time.perf_counter()
                acc = student_top1(images, labels, xv, yv, source, copy.deepcopy(cfg), plans)
                row = {
                    "ipc": ipc,
                    "seed": seed,
                    "epochs": epochs,
                    "labels": label,
                    "student_top1": acc,
                    "label_bytes": nbytes,
                    "percent_of_stored": 100.0 * nbytes / stored.storage_bytes,
                    "teacher_agreement_on_batches": on_batches.get(label),
                    "seconds": round(time.perf_counter() - start, 1),
                }
                rows.append(row)
                log(str(row))
    storage = storage_rows(
        list(projectors.values())[-1], classes=10, ipc=10, epochs=300, batch_size=32
    )
    _report(args, meta, proj_rows, rows, storage)


# --- validation protocol: every choice on digits carved from TRAIN, then fresh test seeds ---

PROJECTOR = "projector (efficientnet-lite0)"
PROJECTOR_SYN = "projector (efficientnet-lite0 + synthetic batches)"
TEACHER, STORED, HARD = "teacher online (RDED)", "stored soft labels (SRe2L/FKD)", "hard labels"
CHOSEN = "projector (chosen on tuning digits)"


def carve_tuning_split(labels: torch.Tensor, size: int, seed: int) -> tuple[torch.Tensor, ...]:
    """(fit indices, tuning indices) of the TRAIN split: exactly `size` digits, each class's
    share in proportion to its count (largest remainders), drawn with a fixed seed; kept
    apart from everything fitted here (projectors, synthetic crops, students) and used only
    to make the benchmark's choices."""
    gen = torch.Generator().manual_seed(seed)
    classes = labels.unique().tolist()
    counts = torch.tensor([int((labels == c).sum()) for c in classes], dtype=torch.float64)
    exact = size * counts / len(labels)
    quota = exact.floor().long()
    for i in (exact - quota).argsort(descending=True)[: size - int(quota.sum())].tolist():
        quota[i] += 1
    tune = []
    for c, take in zip(classes, quota.tolist(), strict=True):
        idx = (labels == c).nonzero().flatten()
        tune.append(idx[torch.randperm(len(idx), generator=gen)[:take]])
    tune_idx = torch.cat(tune).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[tune_idx] = False
    return mask.nonzero().flatten(), tune_idx


def paired_verdict(a: list[float], b: list[float], level: float = 0.95) -> dict[str, Any]:
    """a vs b over the same seeds: the per-seed differences a - b, their mean and t interval,
    and the verdict 'beats' (interval above 0), 'worse' (below 0) or 'on par' (contains 0,
    or a single seed)."""
    p = paired(a, b, "t", level)
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    return {"differences": diffs, "mean": p["diff"], **{k: p[k] for k in ("low", "high")},
            "verdict": p["verdict"]}  # fmt: skip


def choose(tuning: list[dict[str, Any]]) -> dict[str, Any]:
    """From tuning rows only: per label source the student epochs with the best mean tuning
    top-1 (ties: fewer epochs), and the projector variant with the better tuned mean."""
    means: dict[str, dict[int, list[float]]] = {}
    for r in tuning:
        means.setdefault(r["labels"], {}).setdefault(r["epochs"], []).append(r["tuning_top1"])
    epochs, best = {}, {}
    for label, by_epochs in means.items():
        scored = sorted(by_epochs.items(), key=lambda kv: (-sum(kv[1]) / len(kv[1]), kv[0]))
        epochs[label] = scored[0][0]
        best[label] = sum(scored[0][1]) / len(scored[0][1])
    candidates = [p for p in (PROJECTOR_SYN, PROJECTOR) if p in best]
    projector = max(candidates, key=lambda p: best[p]) if candidates else None
    return {"epochs": epochs, "tuning_mean": best, "projector": projector}


def _sources(teacher, projectors: dict[str, Any], images, epochs: int, bs: int, seed: int):  # noqa: ANN001, ANN202
    """label name -> (label source, bytes, replay plans) for one student run."""
    aug = AugConfig(out_size=recipes.IMAGE_SIZE)
    stored = StoredLabels(
        compute_stored_labels(teacher, images, epochs=epochs, batch_size=bs, aug=aug, seed=seed),
        bs,
    )
    teacher_bytes = sum(p.numel() * p.element_size() for p in teacher.parameters())
    out: dict[str, tuple[Any, int, Any]] = {
        name: (OnlineLabels(p, 0), storage_bytes(p.stored_tensors()), None)
        for name, p in projectors.items()
    }
    out[TEACHER] = (OnlineLabels(teacher, 0), teacher_bytes, None)
    out[STORED] = (stored, stored.storage_bytes, stored.plan)
    out[HARD] = (HardLabels(), 0, None)
    return out


def _student(teacher, projectors, images, labels, xe, ye, label: str, epochs: int, seed: int):  # noqa: ANN001, ANN202
    bs = min(32, len(images))
    cfg = StudentConfig(
        epochs=epochs, batch_size=bs, seed=seed, aug=AugConfig(out_size=recipes.IMAGE_SIZE)
    )
    sources = _sources(teacher, {label: projectors[label]} if label in projectors else {},
                       images, epochs, bs, seed)  # fmt: skip
    source, nbytes, plans = sources[label]
    start = time.perf_counter()
    acc = student_top1(images, labels, xe, ye, source, cfg, plans)
    return acc, nbytes, sources[STORED][1], round(time.perf_counter() - start, 1)


def run_validation_protocol(args: argparse.Namespace) -> None:
    """Choices on the tuning digits with the tuning seeds; then each label source, at its
    chosen epochs, trained once per reported seed and scored once on the 360 test digits."""
    overlap = set(args.tune_seeds) & set(args.seeds)
    if overlap:
        raise SystemExit(f"tuning and reported seeds must differ; both have {sorted(overlap)}")
    start_all, cpu_all = time.perf_counter(), time.process_time()
    torch.manual_seed(0)
    ckpt, meta = recipes.teacher_checkpoint()
    teacher, _ = load_teacher([str(ckpt)])
    x_all, y_all, names = load_real("builtin:digits", "train", recipes.IMAGE_SIZE)
    xv, yv, _ = load_real("builtin:digits", "val", recipes.IMAGE_SIZE)
    fit_idx, tune_idx = carve_tuning_split(y_all, args.tuning_size, args.split_seed)
    x, y = x_all[fit_idx], y_all[fit_idx]
    xt, yt = x_all[tune_idx], y_all[tune_idx]
    log(f"teacher {ckpt.name}; fit {len(x)} / tuning {len(xt)} train digits; test {len(xv)}")
    base, info = make_projector(
        "efficientnet-lite0", teacher, x, y, xt, yt, names, args.projector_epochs
    )
    proj_rows, tuning, reported, sets = [info], [], [], []
    for ipc in args.ipc:
        images, labels = synthesize(teacher, x, y, ipc, args.synthesis_seed)
        projectors = {PROJECTOR: base}
        if args.synthetic_epochs > 0:
            projectors[PROJECTOR_SYN] = fit_on_synthetic(
                base, teacher, x, y, images, args.synthetic_epochs, args.synthesis_seed
            )
        aug = AugConfig(out_size=recipes.IMAGE_SIZE)
        agree = {
            n: batch_agreement(p, teacher, images, aug, args.synthesis_seed)
            for n, p in projectors.items()
        }
        sets.append({"ipc": ipc, "agreement_on_batches": agree})
        labels_list = [*projectors, TEACHER, STORED, HARD]
        for seed in args.tune_seeds:
            for epochs in args.epoch_grid:
                for label in labels_list:
                    acc, nbytes, _, secs = _student(
                        teacher, projectors, images, labels, xt, yt, label, epochs, seed
                    )
                    row = {"ipc": ipc, "seed": seed, "epochs": epochs, "labels": label,
                           "tuning_top1": acc, "label_bytes": nbytes, "seconds": secs}  # fmt: skip
                    tuning.append(row)
                    log(f"tuning {row}")
        chosen = choose([r for r in tuning if r["ipc"] == ipc])
        sets[-1]["chosen"] = chosen
        log(f"IPC {ipc}: chosen on the tuning digits {chosen}")
        for seed in args.seeds:
            for label in labels_list:
                epochs = chosen["epochs"][label]
                acc, nbytes, stored_bytes, secs = _student(
                    teacher, projectors, images, labels, xv, yv, label, epochs, seed
                )
                row = {"ipc": ipc, "seed": seed, "epochs": epochs, "labels": label,
                       "student_top1": acc, "label_bytes": nbytes,
                       "stored_bytes_at_these_epochs": stored_bytes, "seconds": secs}  # fmt: skip
                reported.append(row)
                log(f"test {row}")
    storage = storage_rows(base, classes=10, ipc=10, epochs=300, batch_size=32)
    minutes = {
        "wall": (time.perf_counter() - start_all) / 60,
        "cpu": (time.process_time() - cpu_all) / 60,
    }
    _report_validation(args, meta, proj_rows, sets, tuning, reported, storage, minutes)


def summarise(reported: list[dict[str, Any]], sets: list[dict[str, Any]]) -> dict[str, Any]:
    """Per IPC: each source's mean and t interval over the reported seeds, and the paired
    comparisons of the projector chosen on the tuning digits with the other sources."""
    out = {}
    for s in sets:
        ipc, chosen = s["ipc"], s["chosen"]
        rows = [r for r in reported if r["ipc"] == ipc]
        by: dict[str, dict[int, float]] = {}
        for r in rows:
            by.setdefault(r["labels"], {})[r["seed"]] = r["student_top1"]
        seeds = sorted(next(iter(by.values())))
        sources = {}
        for label, accs in by.items():
            mean, lo, hi = t_interval([accs[k] for k in seeds])
            sources[label] = {"mean": mean, "low": lo, "high": hi, "per_seed": accs}
        # the projector chosen on the tuning digits first (the comparison the choice made),
        # the other variant after it for reference
        paired = {}
        variants = [p for p in (PROJECTOR_SYN, PROJECTOR) if p in by]
        variants.sort(key=lambda p: p != chosen["projector"])
        for proj in variants:
            p = [by[proj][k] for k in seeds]
            for other in (TEACHER, STORED, HARD):
                paired[f"{proj} vs {other}"] = paired_verdict(p, [by[other][k] for k in seeds])
        out[ipc] = {"seeds": seeds, "sources": sources, "paired": paired, "chosen": chosen}
    return out


def _report_validation(args, meta, proj_rows, sets, tuning, reported, storage, minutes) -> None:  # noqa: ANN001
    summary = summarise(reported, sets)
    fmt = lambda v: f"{v:.1f}"  # noqa: E731
    sections = [
        (
            "Protocol",
            f"Teacher: the toolkit's shipped digits ViT (test top-1 {meta['val_top1']:.1f}%), "
            "not refitted here: it was trained on all train digits, the tuning digits "
            "included (their teacher labels are the teacher's own training labels). "
            f"The TRAIN split (1437 digits) is cut once (seed {args.split_seed}, stratified "
            f"by class) into {args.tuning_size} tuning digits and the rest; the projector, the "
            "synthetic crops and the '+ synthetic batches' fit use only the rest, and no "
            "student sees a tuning digit. Every choice is made on the tuning digits with the "
            f"tuning seeds {args.tune_seeds}: the student epochs of each label source (grid "
            f"{args.epoch_grid}: best mean tuning top-1, ties to fewer epochs) and which "
            "projector (fitted on real digits only, or + synthetic batches) is compared. "
            f"Then the reported seeds {args.seeds} (never used for tuning) train each source "
            "once at its chosen epochs and are scored once on the 360 test digits (the "
            "`val` split, never used before this step). A seed fixes the student's "
            "initialisation and its augmented batches (the same for every source); the "
            f"synthetic set (synthesis seed {args.synthesis_seed}) and the projectors are "
            "the same for all seeds, so the intervals cover student seeds, not synthetic "
            "sets. Intervals: Student-t, 95%, over the seeds (n - 1 dof); paired: t interval "
            "of the per-seed differences, 'beats' / 'worse' when it excludes 0, 'on par' "
            "otherwise. Fixed, not tuned here: the student recipe (resnet10t at "
            f"{recipes.IMAGE_SIZE} px, AdamW 1e-3 cosine, batch 32, crop + flip + CutMix, MSE + "
            f"0.1 CE), the projector's recipe ({proj_rows[0]['epochs']} epochs, rank "
            f"{proj_rows[0]['rank']} / {proj_rows[0]['head_rank']}) and the "
            f"{args.synthetic_epochs} '+ synthetic batches' epochs. Whole run: "
            f"{minutes['wall']:.1f} min wall clock, {minutes['cpu']:.1f} min of CPU time, "
            f"{torch.get_num_threads()} torch thread(s) (the wall clock grows with whatever "
            "else the machine runs; see the load average above).",
        ),
        (
            "Projector",
            _projector_table(proj_rows, "agreement with teacher (tuning digits)"),
        ),
    ]
    for s in sets:
        ipc = s["ipc"]
        summ = summary[ipc]
        tun = [r for r in tuning if r["ipc"] == ipc]
        grid_rows = []
        for label in summ["sources"]:
            cells = []
            for e in args.epoch_grid:
                v = [r["tuning_top1"] for r in tun if r["labels"] == label and r["epochs"] == e]
                cells.append(fmt(sum(v) / len(v)) if v else "-")
            grid_rows.append([label, *cells, s["chosen"]["epochs"][label]])
        sections.append(
            (
                f"IPC {ipc}: choices on the tuning digits (mean top-1 over tuning seeds, %)",
                common.markdown_table(
                    ["labels", *[f"{e} epochs" for e in args.epoch_grid], "chosen epochs"],
                    grid_rows,
                )
                + f"\n\nProjector compared below: **{s['chosen']['projector']}**. Agreement "
                "with the teacher's top-1 on the student's augmented batches: "
                + ", ".join(f"{k} {v:.1f}%" for k, v in s["agreement_on_batches"].items()),
            )
        )
        rows = []
        for label, v in summ["sources"].items():
            r0 = next(r for r in reported if r["ipc"] == ipc and r["labels"] == label)
            per = " / ".join(fmt(v["per_seed"][k]) for k in summ["seeds"])
            interval = f"[{fmt(v['low'])}, {fmt(v['high'])}]"
            stored = next(r for r in reported if r["ipc"] == ipc and r["labels"] == STORED)
            share = 100.0 * r0["label_bytes"] / stored["label_bytes"]
            rows.append(
                [label, r0["epochs"], fmt(v["mean"]), interval, per, r0["label_bytes"], share]
            )
        sections.append(
            (
                f"IPC {ipc}: test top-1 on the 360 test digits, seeds {summ['seeds']}",
                common.markdown_table(
                    [
                        "labels",
                        "epochs",
                        "mean (%)",
                        "95% t interval",
                        "per seed",
                        "label bytes",
                        "% of stored labels (at their chosen epochs)",
                    ],
                    rows,
                ),  # fmt: skip
            )
        )
        prow = [
            [name, " / ".join(fmt(d) for d in v["differences"]),
             fmt(v["mean"]), f"[{fmt(v['low'])}, {fmt(v['high'])}]", v["verdict"]]
            for name, v in summ["paired"].items()
        ]  # fmt: skip
        sections.append(
            (
                f"IPC {ipc}: paired comparison over the same seeds (points)",
                common.markdown_table(
                    [
                        "comparison (first rows: the projector chosen on the tuning digits)",
                        "per-seed difference",
                        "mean",
                        "95% t interval",
                        "verdict",
                    ],
                    prow,
                ),
            )
        )
    sections.append(_storage_section(storage))
    common.write_results(
        "hello",
        args.name,
        "HeLlO on real digits: choices on tuning digits carved from train, fresh test seeds",
        sections,
        {
            "protocol": {
                "split_seed": args.split_seed,
                "tuning_size": args.tuning_size,
                "tune_seeds": args.tune_seeds,
                "reported_seeds": args.seeds,
                "epoch_grid": args.epoch_grid,
                "synthesis_seed": args.synthesis_seed,
                "synthetic_epochs": args.synthetic_epochs,
                "interval": "Student t, 95%, over seeds",
                "minutes": minutes,
            },
            "projectors": proj_rows,
            "synthetic_sets": sets,
            "tuning": tuning,
            "students": reported,
            "summary": {str(k): v for k, v in summary.items()},
            "storage": storage,
        },
    )


def combine(args: argparse.Namespace) -> None:
    """Rebuild the report from several results files of runs with the same teacher and
    projectors (both deterministic), listing the runs it is made of."""
    import json
    from pathlib import Path

    runs = [json.loads(Path(f).read_text()) for f in args.combine]
    proj_rows = runs[0]["projectors"]
    keys = ("encoder", "storage_bytes", "distilled_agreement", "teacher_top1")
    for f, run in zip(args.combine, runs, strict=True):
        if [[p[k] for k in keys] for p in run["projectors"]] != [
            [p[k] for k in keys] for p in proj_rows
        ]:
            raise SystemExit(f"{f}: its teacher or projectors differ from {args.combine[0]}'s")
    rows = [r for run in runs for r in run["students"]]
    seen = [(r["ipc"], r["seed"], r["labels"]) for r in rows]
    if len(set(seen)) != len(seen):
        raise SystemExit("the files share (IPC, seed, labels) rows: each run must be counted once")
    by_ipc = {r["ipc"]: r["epochs"] for r in rows}
    args.ipc, args.epochs = sorted(by_ipc), [by_ipc[i] for i in sorted(by_ipc)]
    args.synthetic_epochs = runs[0].get("synthetic_epochs", args.synthetic_epochs)
    meta = {"val_top1": proj_rows[0]["teacher_top1"]}
    made_of = "\n".join(
        f"- `{r['provenance']['command']}` ({r['provenance']['date']})" for r in runs
    )
    _report(args, meta, proj_rows, rows, runs[0]["storage"], made_of)


def _mean_rows(rows: list[dict[str, Any]]) -> list[list[Any]]:
    out: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault((r["ipc"], r["labels"]), []).append(r)
    table = []
    for (ipc, label), rs in out.items():
        accs = torch.tensor([r["student_top1"] for r in rs])
        agree = [r["teacher_agreement_on_batches"] for r in rs]
        table.append(
            [
                ipc,
                label,
                accs.mean().item(),
                accs.std().item() if len(accs) > 1 else "-",
                len(accs),
                "-" if agree[0] is None else sum(agree) / len(agree),
                rs[0]["label_bytes"],
                rs[0]["percent_of_stored"],
            ]
        )
    return table


def _report(args, meta, proj_rows, rows, storage, made_of: str | None = None) -> None:  # noqa: ANN001
    table = _mean_rows(rows)
    proj_md = _projector_table(proj_rows, "agreement with teacher")
    main_md = common.markdown_table(
        [
            "IPC",
            "labels",
            "student top-1 (%)",
            "std over seeds",
            "seeds",
            "agreement with teacher on student batches (%)",
            "label bytes",
            "% of stored labels",
        ],
        table,
    )
    _plot(table, args.name)
    common.write_results(
        "hello",
        args.name,
        "HeLlO: student accuracy and label storage on real digits",
        [
            (
                "Setup",
                f"Teacher val top-1 {meta['val_top1']:.1f}% ({recipes.TEACHER_NAME}, "
                f"16 px). Student {recipes.STUDENT} from scratch at {recipes.IMAGE_SIZE} px, "
                "AdamW 1e-3 cosine, batch 32, RandomResizedCrop(0.25-1) + flip + CutMix, "
                "MSE + 0.1 CE (soft sources) or CE (hard). Student epochs per IPC: "
                f"{dict(zip(args.ipc, args.epochs, strict=True))}. Val: the fixed 360 real "
                "digits. Teacher-online bytes = the teacher's weights (fp32); stored = fp16 "
                "logits + int16 augmentation parameters for every image and epoch.",
            ),
            (
                "Projectors",
                "Distillation epochs: "
                + ", ".join(f"{k} {v['epochs']}" for k, v in recipes.ENCODERS.items())
                + "; training images: the real digits (train split), random resized crop + flip. "
                + f"The '+ synthetic batches' rows: {args.synthetic_epochs} more epochs from the "
                "distilled EfficientNet projector, each step a batch of 32 real images and one of "
                "32 synthetic images augmented as the student sees them (crop, flip, CutMix; "
                "`hello distill --synthetic`), once per synthetic set (IPC, seed)\n\n" + proj_md,
            ),
            *([("Runs combined here", made_of)] if made_of else []),
            ("Students", main_md),
            _storage_section(storage),
        ],
        {
            "projectors": proj_rows,
            "students": rows,
            "storage": storage,
            "synthetic_epochs": args.synthetic_epochs,
        },
    )


def _plot(table: list[list[Any]], name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ipcs = sorted({r[0] for r in table})
    fig, axes = plt.subplots(1, len(ipcs), figsize=(6 * len(ipcs), 4), squeeze=False)
    for ax, ipc in zip(axes[0], ipcs, strict=True):
        for r in (r for r in table if r[0] == ipc):
            bytes_ = max(r[6], 1)
            ax.scatter(bytes_, r[2])
            ax.annotate(r[1], (bytes_, r[2]), fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("label storage (bytes; hard labels drawn at 1)")
        ax.set_ylabel("student val top-1 (%)")
        ax.set_title(f"digits, IPC {ipc}")
    fig.tight_layout()
    out = common.RESULTS / "hello"
    out.mkdir(parents=True, exist_ok=True)
    common.save_figure(fig, out / f"{name}.png")


def _storage_section(storage: list[dict[str, Any]]) -> tuple[str, str]:
    """The storage-at-scale table both protocols report."""
    cols = ["setting", "stored soft labels (bytes)", "projector (bytes)", "projector / stored (%)"]
    table = common.markdown_table(cols, [list(r.values()) for r in storage])
    return "Storage at scale (computed from the formulas, fp32 factors)", table


def _projector_table(proj_rows: list[dict[str, Any]], agreement: str) -> str:
    """The projector table (both protocols; `agreement`: its last column's name)."""
    cols = ["encoder", "rank / head rank", "stored params", "bytes", "zero-shot top-1",
            "distilled top-1", agreement]  # fmt: skip
    keys = ("trainable_parameters", "storage_bytes", "zero_shot_top1", "distilled_top1",
            "distilled_agreement")  # fmt: skip
    rows = [[p["encoder"], f"{p['rank']} / {p['head_rank']}", *(p[k] for k in keys)]
            for p in proj_rows]  # fmt: skip
    return common.markdown_table(cols, rows)


if __name__ == "__main__":
    main()
