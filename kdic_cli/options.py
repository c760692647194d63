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


# -- options several commands share (one declaration each) ------------------------------
def _arch() -> Any:
    return opt(
        None,
        "Architecture: bmshj2018-hyperprior, mbt2018-mean, mbt2018, cheng2020-anchor, "
        "elic2022-official, s2c-conv. For a new model, a foreign compressai checkpoint "
        "(.pth/.pth.tar), or --pretrained.",
    )


def _n() -> Any:
    return opt(None, "Channel width N (hyperprior width).", flag="--N", min=1)


def _m() -> Any:
    return opt(None, "Latent width M.", flag="--M", min=1)


def _quality() -> Any:
    return opt(None, "compressai zoo quality (N, M).", min=1, max=8)


def _pretrained() -> Any:
    return opt(False, "compressai zoo weights for --arch/--quality.")


def _data() -> Any:
    return opt(PHOTOS, "builtin:photos or a folder of images.")


def _lmbda() -> Any:
    return opt(0.013, "RD trade-off: loss = lmbda*255^2*MSE + bpp.", min=0, min_open=True)


def _steps() -> Any:
    return opt(2000, "Optimiser steps in total.", min=0)


def _batch_size() -> Any:
    return opt(8, "Crops per step.", min=1)


def _crop() -> Any:
    return opt(128, "Training crop size (pixels, a multiple of 64).", min=64)


def _lr() -> Any:
    return opt(1e-4, "Learning rate (Adam).", min=0, min_open=True)


def _aux_lr() -> Any:
    return opt(1e-3, "Learning rate of the aux optimizer.", min=0, min_open=True)


def _workers() -> Any:
    return opt(0, "Data loader workers.", min=0)


def _seed() -> Any:
    return opt(0, "Random seed.", min=0)


def _checkpoint_every() -> Any:
    return opt(200, "Save resume state every N steps (0: only on SIGTERM/SIGUSR1/Ctrl-C).",
               min=0)  # fmt: skip


# -- the commands -----------------------------------------------------------------------
@dataclass(kw_only=True)
class BuildStudentOptions:
    teacher: str | None = opt(None, "Teacher checkpoint (file or run dir).")
    width: float = opt(0.5, "Channel width factor.", min=0, min_open=True, max=1)
    blocks: str | None = opt(None, "s2c-conv: blocks per stage, e.g. 1,1,1.")
    ffn_ratio: float | None = opt(None, "s2c-conv: FFN expansion.", min=0, min_open=True)
    calib: str = opt(PHOTOS, "Calibration images: builtin:photos or a folder.")
    calib_images: int = opt(16, "Calibration crops (channel energies).", min=1)
    crop: int = _crop()
    arch: str | None = _arch()
    n: int | None = _n()
    m: int | None = _m()
    quality: int | None = _quality()
    pretrained: bool = _pretrained()
    seed: int = _seed()


@dataclass(kw_only=True)
class DistillOptions:
    teacher: str = opt(help="Teacher checkpoint.")
    student: str = opt(help="Student from build-student.")
    lmbda: float = _lmbda()
    data: str = _data()
    supervision: str = opt("implicit", "implicit (RD loss) or explicit (feature MSE).",
                           choices=("implicit", "explicit"))  # fmt: skip
    steps: int = _steps()
    batch_size: int = _batch_size()
    crop: int = _crop()
    lr: float = _lr()
    aux_lr: float = _aux_lr()
    arch: str | None = _arch()
    n: int | None = _n()
    m: int | None = _m()
    quality: int | None = _quality()
    workers: int = _workers()
    seed: int = _seed()
    checkpoint_every: int = _checkpoint_every()


@dataclass(kw_only=True)
class FinetuneOptions:
    model: str | None = opt(None, "Checkpoint to fine-tune (file or run dir).")
    scratch: bool = opt(
        False, "Re-initialise: train the architecture from scratch (the no-KD baseline)."
    )
    lmbda: float = _lmbda()
    data: str = _data()
    steps: int = _steps()
    batch_size: int = _batch_size()
    crop: int = _crop()
    lr: float = _lr()
    aux_lr: float = _aux_lr()
    arch: str | None = _arch()
    n: int | None = _n()
    m: int | None = _m()
    quality: int | None = _quality()
    s2c_widths: str | None = opt(None, "s2c-conv stage widths, e.g. 64,96,128.")
    s2c_blocks: str | None = opt(None, "s2c-conv blocks per stage, e.g. 1,2,2.")
    workers: int = _workers()
    seed: int = _seed()
    checkpoint_every: int = _checkpoint_every()


@dataclass(kw_only=True)
class EvaluateOptions:
    model: list[str] = opt(
        help="One RD curve: comma-separated checkpoints (one per lambda). Repeat for more "
        "curves; BD-rate is against the first."
    )
    label: list[str] | None = opt(None, "Curve names, in --model order.")
    data: str = _data()
    plot: Path | None = opt(None, "Write the RD plot (PNG).")
    limit: int | None = opt(None, "First N images.", min=1)
    arch: str | None = _arch()
    n: int | None = _n()
    m: int | None = _m()
    quality: int | None = _quality()


@dataclass(kw_only=True)
class CompressOptions:
    image: Path = opt(help="Image to compress (PNG, JPEG, ...).", argument=True)
    model: str = opt(help="Codec checkpoint.")
    output: Path = opt(help="Output .kdic file.", short="-o")
    arch: str | None = _arch()
    n: int | None = _n()
    m: int | None = _m()
    quality: int | None = _quality()
    pretrained: bool = _pretrained()


@dataclass(kw_only=True)
class DecompressOptions:
    file: Path = opt(help="A .kdic file.", argument=True)
    model: str = opt(help="The codec that wrote the file.")
    output: Path = opt(help="Output PNG.", short="-o")
    reference: Path | None = opt(None, "Original image: also print PSNR.")
    arch: str | None = _arch()
    n: int | None = _n()
    m: int | None = _m()
    quality: int | None = _quality()
    pretrained: bool = _pretrained()
