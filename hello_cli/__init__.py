"""HeLlO (ICCV 2025): dataset distillation whose soft labels come from a small low-rank
image-to-label projector instead of gigabytes of stored teacher outputs.

    from hello_cli import build_projector, load_projector, save_projector
    proj = build_projector(EncoderSpec.parse("openclip:TinyCLIP-RN"), names, templates)
    proj.add_lora(rank=4, head_rank=4)               # only the factors train
    distill_projector(proj, teacher, images, labels, DistillConfig(), aug=AugConfig())
    save_projector(proj, "runs/projector")           # stores only the low-rank factors

Imports are lazy so that `hello --help` does not load torch.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AugConfig",
    "DistillConfig",
    "EncoderSpec",
    "Projector",
    "StudentConfig",
    "add_lora",
    "build_projector",
    "distill_projector",
    "load_projector",
    "save_projector",
    "synthesize_class",
    "train_student",
]

_EXPORTS = {
    "AugConfig": "hello_cli.augment",
    "DistillConfig": "hello_cli.distill",
    "distill_projector": "hello_cli.distill",
    "EncoderSpec": "hello_cli.encoders",
    "Projector": "hello_cli.projector",
    "build_projector": "hello_cli.projector",
    "load_projector": "hello_cli.projector",
    "save_projector": "hello_cli.projector",
    "add_lora": "hello_cli.lora",
    "StudentConfig": "hello_cli.student",
    "train_student": "hello_cli.student",
    "synthesize_class": "hello_cli.synth",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hello_cli' has no attribute {name!r}")
