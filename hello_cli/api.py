"""Command bodies that more than the CLI needs (demo, benchmark): load, check, train, report.

from hello_cli import build_projector, load_projector, synthesize_class, train_student
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from hello_cli.augment import AugConfig
from hello_cli.data_io import load_real, load_synthetic
from hello_cli.labels import (
    STORED_FILE,
    HardLabels,
    OnlineLabels,
    StoredLabels,
    compute_stored_labels,
)
from hello_cli.pixels import timm_pixel_input
from hello_cli.student import StudentConfig, train_student
from hello_cli.teachers import check_classes, load_teacher
from shared.config import parse_json_object
from shared.errors import InputError


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


def model_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def label_source(
    labels: str,
    run: Any,
    *,
    images: torch.Tensor,
    names: list[str],
    projector: Path | None,
    teacher: list[str],
    teacher_checkpoint: list[str],
    teacher_kwargs: str | None,
    cfg: StudentConfig,
    device: torch.device,
) -> tuple[Any, int]:
    """(label source, label bytes this run needs) for --labels."""
    if labels == "hard":
        return HardLabels(), 0
    if labels == "projector":
        from hello_cli.projector import load_projector, storage_bytes

        proj = load_projector(projector)  # type: ignore[arg-type]
        check_classes(names, projector_names=proj.config.class_names)
        if proj.num_classes != len(names):
            raise InputError(f"the projector has {proj.num_classes} classes, the data {len(names)}")
        size = storage_bytes(proj.stored_tensors())  # the projector file's payload
        return OnlineLabels(proj.to(device), size), size
    t_model, t_names = load_teacher(
        teacher, teacher_checkpoint, parse_json_object(teacher_kwargs, "--teacher-kwargs")
    )
    check_classes(names, teacher=t_model, teacher_names=t_names)
    t_model = t_model.to(device)
    if labels == "teacher":
        return OnlineLabels(t_model, model_bytes(t_model)), model_bytes(t_model)
    from shared.checkpoints import save_checkpoint

    path = run.path(STORED_FILE)
    if not (run.resume and path.exists()):
        epochs = cfg.epochs
        with run.console.progress_bar("store soft labels", epochs) as bar:
            tensors = compute_stored_labels(
                t_model,
                images.to(device),
                epochs=epochs,
                batch_size=cfg.batch_size,
                aug=cfg.aug,
                seed=cfg.seed,
                progress=lambda: bar.advance(1),
            )
        save_checkpoint(path, tensors, tool="hello", architecture={"batch_size": cfg.batch_size})
    source = StoredLabels.load(path)
    if source.epochs < cfg.epochs:
        raise InputError(f"{path}: labels for {source.epochs} epochs, the run needs {cfg.epochs}")
    return source, source.storage_bytes


def train_student_run(
    run: Any,
    *,
    synthetic: Path,
    labels: str,
    student: str,
    student_kwargs: str | None,
    val_data: str,
    projector: Path | None,
    teacher: list[str],
    teacher_checkpoint: list[str],
    teacher_kwargs: str | None,
    epochs: int,
    batch_size: int,
    lr: float,
    loss: str,
    beta: float,
    temperature: float,
    crop_min_scale: float,
    flip: bool,
    cutmix: bool,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    from shared import distributed
    from shared.checkpoints import save_checkpoint
    from shared.classify import evaluate_classifier
    from shared.loaders import make_loader, shard

    distributed.init(device)
    images, y, names = load_synthetic(synthetic)
    size = int(images.shape[-1])
    xv, yv, val_names = load_real(val_data, "val", size)
    if val_names != names:
        raise InputError(f"--val-data {val_data}: its classes differ from the synthetic set's")
    torch.manual_seed(seed)
    kwargs = parse_json_object(student_kwargs, "--student-kwargs")
    net = build_student(student, kwargs, len(names), size)
    model = timm_pixel_input(net, size).to(device)
    cfg = StudentConfig(
        epochs,
        batch_size,
        lr,
        loss=loss,
        beta=beta,
        temperature=temperature,
        seed=seed,
        aug=AugConfig(size, (crop_min_scale, 1.0), flip, cutmix),
    )
    source, label_bytes = label_source(
        labels,
        run,
        images=images,
        names=names,
        projector=projector,
        teacher=teacher,
        teacher_checkpoint=teacher_checkpoint,
        teacher_kwargs=teacher_kwargs,
        cfg=cfg,
        device=device,
    )
    trained = distributed.wrap_ddp(model, device) if distributed.world_size() > 1 else model
    steps = epochs * (-(-len(images) // batch_size))
    with run.console.progress_bar(f"student ({labels} labels)", steps) as bar:
        stats = train_student(
            trained,
            images,
            y,
            len(names),
            source,
            cfg,
            plans=source.plan if isinstance(source, StoredLabels) else None,
            run=run,
            on_step=lambda v: bar.advance(1, loss=v),
            device=device,
        )
    val = torch.utils.data.TensorDataset(xv, yv)
    acc = evaluate_classifier(
        model,
        make_loader(shard(val), 256, shuffle=False, distribute=False),
        device=device,
        amp=False,
    )
    if distributed.is_main():
        save_checkpoint(
            run.path("student.safetensors"),
            net.state_dict(),
            tool="hello",
            architecture={
                "timm_name": student,
                "model_kwargs": {"num_classes": len(names), **kwargs},
            },
            extra={"class_names": names, "image_size": size},
        )
    distributed.cleanup()
    return {
        "labels": labels,
        "student_val_top1": acc["top1"],
        "label_storage_bytes": label_bytes,
        "synthetic_images": len(images),
        "epochs": epochs,
        **stats,
    }
