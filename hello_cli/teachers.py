"""Teachers (and students) are timm classifiers. A teacher is given as a toolkit checkpoint
(the shared reference models, or a student this tool trained: self-describing), or as a timm
name with foreign weights. Several checkpoints are averaged logit-wise ("weak teachers")."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hello_cli.pixels import PixelInput, timm_pixel_input
from shared.builtin_data import DIGITS_CLASS_NAMES
from shared.errors import InputError


class AveragedLogits(nn.Module):
    """The mean of several models' logits (one model: its logits)."""

    def __init__(self, models: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(x).float() for m in self.members]).mean(0)


def load_timm_classifier(
    source: str, checkpoint: str | None = None, model_kwargs: dict[str, Any] | None = None
) -> tuple[nn.Module, list[str] | None]:
    """(model in eval mode, class names if the checkpoint records them)."""
    import timm

    from shared.checkpoints import load_checkpoint, load_state_dict

    path = Path(source)
    if path.is_dir():
        path = path / "student.safetensors"
    if path.suffix == ".safetensors" or path.exists():
        tensors, meta = load_checkpoint(path)
        arch = meta.get("architecture", {})
        if "timm_name" not in arch:
            raise InputError(f"{path}: records no timm architecture; pass a timm name instead")
        model = timm.create_model(arch["timm_name"], pretrained=False, **arch["model_kwargs"])
        try:
            model.load_state_dict(tensors)
        except RuntimeError as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            first = (lines[1:] or lines or ["?"])[0][:200]  # torch: a header, a line per tensor
            raise InputError(f"{path}: weights do not fit {arch['timm_name']}: {first}") from None
        names = meta.get("class_names")
        if names is None and meta.get("recipe", {}).get("data") == "builtin:digits":
            names = list(DIGITS_CLASS_NAMES)
        return model.eval(), names
    try:
        model = timm.create_model(source, pretrained=False, **(model_kwargs or {}))
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"{source}: neither a checkpoint file nor a timm model ({exc})") from None
    if checkpoint is None:
        raise InputError(f"{source}: a timm name needs --teacher-checkpoint / --checkpoint weights")
    try:
        model.load_state_dict(load_state_dict(checkpoint))
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise InputError(f"{checkpoint}: weights do not fit {source}: {first}") from None
    return model.eval(), None


def load_teacher(
    sources: Sequence[str],
    checkpoints: Sequence[str] = (),
    model_kwargs: dict[str, Any] | None = None,
    image_size: int | None = None,
) -> tuple[PixelInput | AveragedLogits, list[str] | None]:
    """One teacher or the average of several, each on [0, 1] pixels, plus class names."""
    if not sources:
        raise InputError("give at least one --teacher")
    if checkpoints and len(checkpoints) not in (1, len(sources)):
        raise InputError("give one --teacher-checkpoint per --teacher (or one for all)")
    members, names = [], None
    for i, src in enumerate(sources):
        ckpt = checkpoints[min(i, len(checkpoints) - 1)] if checkpoints else None
        model, member_names = load_timm_classifier(src, ckpt, model_kwargs)
        if names is not None and member_names is not None and member_names != names:
            raise InputError(f"--teacher {src}: its class names differ from the first teacher's")
        names = names or member_names
        members.append(timm_pixel_input(model, image_size).eval())
    counts = {num_classes(m) for m in members}
    if len(counts) > 1:
        raise InputError(f"the teachers disagree on the number of classes: {sorted(counts)}")
    teacher = members[0] if len(members) == 1 else AveragedLogits(members).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher, names


def num_classes(model: nn.Module) -> int:
    if isinstance(model, AveragedLogits):
        return num_classes(model.members[0])
    inner = model.model if isinstance(model, PixelInput) else model
    return int(inner.num_classes)


def check_classes(
    data_names: Sequence[str],
    *,
    teacher: nn.Module | None = None,
    teacher_names: Sequence[str] | None = None,
    projector_names: Sequence[str] | None = None,
) -> None:
    """Refuse class-count and class-name mismatches between data, teacher and projector:
    a silent index shift would train a student on the wrong labels."""
    n = len(data_names)
    if teacher is not None and num_classes(teacher) != n:
        raise InputError(f"the teacher has {num_classes(teacher)} classes, the data {n}")
    for who, names in (("teacher", teacher_names), ("projector", projector_names)):
        if names is None:
            continue
        if len(names) != n:
            raise InputError(f"the {who} has {len(names)} classes, the data {n}")
        if list(names) != list(data_names):
            diff = next(i for i, (a, b) in enumerate(zip(names, data_names, strict=True)) if a != b)
            raise InputError(
                f"class {diff} is {names[diff]!r} for the {who} but {data_names[diff]!r} for the "
                "data: class names or their order differ"
            )
