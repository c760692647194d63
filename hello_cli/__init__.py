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

from shared.lazy import lazy_exports

# module -> the names it exports
_MODULES = {
    "augment": ("AugConfig",),
    "distill": ("DistillConfig", "distill_projector"),
    "encoders": ("EncoderSpec",),
    "projector": ("Projector", "build_projector", "load_projector", "save_projector"),
    "lora": ("add_lora",),
    "student": ("StudentConfig", "train_student"),
    "synth": ("synthesize_class",),
}
_EXPORTS = {name: f"hello_cli.{mod}:{name}" for mod, names in _MODULES.items() for name in names}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
