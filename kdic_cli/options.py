"""The options of every kdic command, declared once (help, flag, bounds): the config
dataclasses `kdic_cli.api` takes and `kdic_cli.cli` turns into command lines. Importing
this module must stay cheap (no torch): `kdic --help` reads it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.options import opt

__all__ = [
    "BuildStudentOptions",
    "CompressOptions",
    "DecompressOptions",
    "DistillOptions",
    "EvaluateOptions",
    "FinetuneOptions",
]

PHOTOS = "builtin:photos"
# build-student --widths: the compressai class at smaller N, or free per-group widths
WIDTH_MODES = ("class", "free")


# -- options several commands share (declared once, on base classes) -------------------
def _crop() -> Any:
    return opt(128, "Training crop size (pixels, a multiple of 64).", min=64)


def _seed() -> Any:
    return opt(0, "Random seed.", min=0)


@dataclass(kw_only=True)
class _ArchOptions:
    """What a model is when the checkpoint does not say (a new model, a zoo model)."""

    arch: str | None = opt(
        None,
        "Architecture: bmshj2018-hyperprior, mbt2018-mean, mbt2018, cheng2020-anchor, "
        "elic2022-official, s2c-conv. For a new model or a foreign compressai checkpoint "
        "(.pth/.pth.tar/.safetensors; N and M are read off its weights).",
    )
    n: int | None = opt(None, "Channel width N (hyperprior width).", flag="--N", min=1)
    m: int | None = opt(None, "Latent width M.", flag="--M", min=1)
    quality: int | None = opt(None, "compressai zoo quality (N, M).", min=1, max=8)


@dataclass(kw_only=True)
class _ZooOptions(_ArchOptions):
    pretrained: bool = opt(
        False,
        "compressai's zoo weights of --arch at --quality (bmshj2018-hyperprior, "
        "mbt2018-mean, mbt2018, cheng2020-anchor; downloads them).",
    )


@dataclass(kw_only=True)
class _TrainOptions(_ArchOptions):
    """The RD training options of distill and finetune."""

    lmbda: float = opt(0.013, "RD trade-off: loss = lmbda*255^2*MSE + bpp.", min=0,
                       min_open=True)  # fmt: skip
    data: str = opt(PHOTOS, "builtin:photos or a folder of images.")
    steps: int = opt(2000, "Optimiser steps in total.", min=0)
    batch_size: int = opt(8, "Crops per step.", min=1)
    crop: int = _crop()
    lr: float = opt(1e-4, "Learning rate (Adam).", min=0, min_open=True)
    aux_lr: float = opt(1e-3, "Learning rate of the aux optimizer.", min=0, min_open=True)
    workers: int = opt(0, "Data loader workers.", min=0)
    seed: int = _seed()
    checkpoint_every: int = opt(
        200, "Save resume state every N steps (0: only on SIGTERM/SIGUSR1/Ctrl-C).", min=0
    )


# -- the commands -----------------------------------------------------------------------
@dataclass(kw_only=True)
class BuildStudentOptions(_ZooOptions):
    teacher: str | None = opt(None, "Teacher checkpoint (file or run dir).")
    width: float = opt(0.5, "Channel width factor.", min=0, min_open=True, max=1)
    widths: str = opt(
        "class",
        "class: the student is the teacher's compressai class at N*width (and M kept), so "
        "compressai's own loaders read it; free: narrow every free channel group by width "
        "(uneven widths, kdic-only checkpoint; keeps stage-wise distillation possible for "
        "cheng2020-anchor and elic2022-official).",
        choices=WIDTH_MODES,
    )
    blocks: str | None = opt(None, "s2c-conv: blocks per stage, e.g. 1,1,1.")
    ffn_ratio: float | None = opt(None, "s2c-conv: FFN expansion.", min=0, min_open=True)
    calib: str = opt(PHOTOS, "Calibration images: builtin:photos or a folder.")
    calib_images: int = opt(16, "Calibration crops (channel energies).", min=1)
    crop: int = _crop()
    seed: int = _seed()


@dataclass(kw_only=True)
class DistillOptions(_TrainOptions):
    teacher: str = opt(help="Teacher checkpoint.")
    student: str = opt(help="Student from build-student.")
    supervision: str = opt("implicit", "implicit (RD loss) or explicit (feature MSE).",
                           choices=("implicit", "explicit"))  # fmt: skip


@dataclass(kw_only=True)
class FinetuneOptions(_TrainOptions, _ZooOptions):
    model: str | None = opt(None, "Checkpoint to fine-tune (file or run dir).")
    scratch: bool = opt(
        False, "Re-initialise: train the architecture from scratch (the no-KD baseline)."
    )
    s2c_widths: str | None = opt(None, "s2c-conv stage widths, e.g. 64,96,128.")
    s2c_blocks: str | None = opt(None, "s2c-conv blocks per stage, e.g. 1,2,2.")


@dataclass(kw_only=True)
class EvaluateOptions(_ArchOptions):
    model: list[str] = opt(
        help="One RD curve: comma-separated checkpoints (one per lambda). Repeat for more "
        "curves; BD-rate is against the first."
    )
    label: list[str] | None = opt(None, "Curve names, in --model order.")
    data: str = opt(PHOTOS, "builtin:photos or a folder of images.")
    plot: Path | None = opt(None, "Write the RD plot (PNG; x axis: payload bpp).")
    limit: int | None = opt(None, "First N images.", min=1)


@dataclass(kw_only=True)
class CompressOptions(_ZooOptions):
    image: Path = opt(help="Image to compress (PNG, JPEG, ...).", argument=True)
    model: str | None = opt(None, "Codec checkpoint (or --arch/--quality --pretrained).")
    output: Path = opt(help="Output .kdic file.", short="-o")


@dataclass(kw_only=True)
class DecompressOptions(_ZooOptions):
    file: Path = opt(help="A .kdic file.", argument=True)
    model: str | None = opt(
        None, "The codec that wrote the file (or --arch/--quality --pretrained)."
    )
    output: Path = opt(help="Output PNG.", short="-o")
    reference: Path | None = opt(None, "Original image: also print PSNR.")
