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


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def make_projector(name: str, teacher, x, y, xv, yv, names) -> tuple[Any, dict[str, Any]]:  # noqa: ANN001
    cfg = recipes.ENCODERS[name]
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
    common.add_common_args(parser)
    args = parser.parse_args()
    common.check_tree(args)
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
    proj_md = common.markdown_table(
        [
            "encoder",
            "rank / head rank",
            "stored params",
            "bytes",
            "zero-shot top-1",
            "distilled top-1",
            "agreement with teacher",
        ],
        [
            [
                p["encoder"],
                f"{p['rank']} / {p['head_rank']}",
                p["trainable_parameters"],
                p["storage_bytes"],
                p["zero_shot_top1"],
                p["distilled_top1"],
                p["distilled_agreement"],
            ]
            for p in proj_rows
        ],
    )
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
    storage_md = common.markdown_table(
        ["setting", "stored soft labels (bytes)", "projector (bytes)", "projector / stored (%)"],
        [list(r.values()) for r in storage],
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
            ("Storage at scale (computed from the formulas, fp32 factors)", storage_md),
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


if __name__ == "__main__":
    main()
