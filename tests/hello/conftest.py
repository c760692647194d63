"""Tiny models for the hello tests: a random CLIP from the bundled TinyCLIP-RN config and a
small random ViT teacher saved as a toolkit checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shared.builtin_data import DIGITS_CLASS_NAMES

TEACHER_KWARGS = {
    "img_size": 16,
    "patch_size": 4,
    "embed_dim": 32,
    "depth": 1,
    "num_heads": 2,
    "num_classes": 10,
}
STUDENT = [
    "--student",
    "vit_tiny_patch16_224",
    "--student-kwargs",
    '{"img_size": 16, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}',
]


def save_teacher(path: Path, seed: int = 0, class_names: list[str] | None = None) -> Path:
    import timm

    from shared.checkpoints import save_checkpoint

    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TEACHER_KWARGS)
    save_checkpoint(
        path,
        model.state_dict(),
        tool="reference",
        architecture={"timm_name": "vit_tiny_patch16_224", "model_kwargs": TEACHER_KWARGS},
        extra={"class_names": class_names or list(DIGITS_CLASS_NAMES)},
    )
    return path


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_teacher(tmp_path_factory.mktemp("teacher") / "teacher.safetensors")


@pytest.fixture(scope="session")
def _base_projector():  # noqa: ANN202
    from hello_cli.encoders import DEFAULT_TEMPLATES, EncoderSpec
    from hello_cli.projector import build_projector

    return build_projector(
        EncoderSpec.parse("openclip:TinyCLIP-RN"), list(DIGITS_CLASS_NAMES), DEFAULT_TEMPLATES
    )


@pytest.fixture
def tiny_projector(_base_projector):  # noqa: ANN001, ANN201
    """A fresh zero-LoRA projector (a copy: tests add factors to it)."""
    import copy

    return copy.deepcopy(_base_projector)
