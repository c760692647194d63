"""kdic: knowledge distillation for learned image codecs (ICCV 2025).

Public API (imported lazily, so `kdic --help` stays fast)::

    from kdic_cli import S2CConv, build_student, partition, make_hybrid, rd_loss
    from kdic_cli import load_model, save_model, compress_image, decompress_bytes

The commands as functions of their options: `kdic_cli.api` with `kdic_cli.options`.
"""

from __future__ import annotations

import importlib
from typing import Any

_API = {
    "S2CConv": "kdic_cli.s2c",
    "S2CBlock": "kdic_cli.s2c",
    "s2c_config": "kdic_cli.s2c",
    "build_model": "kdic_cli.models",
    "new_model": "kdic_cli.models",
    "make_spec": "kdic_cli.models",
    "load_model": "kdic_cli.models",
    "save_model": "kdic_cli.models",
    "fingerprint": "kdic_cli.models",
    "LAMBDAS": "kdic_cli.models",
    "build_student": "kdic_cli.student",
    "analyse_channels": "kdic_cli.student",
    "class_spec": "kdic_cli.student",
    "partition": "kdic_cli.stages",
    "check_partition": "kdic_cli.stages",
    "Stage": "kdic_cli.stages",
    "make_hybrid": "kdic_cli.distill",
    "explicit_loss": "kdic_cli.distill",
    "rd_loss": "kdic_cli.distill",
    "bpp_from_likelihoods": "kdic_cli.distill",
    "compress_image": "kdic_cli.codec_io",
    "decompress_bytes": "kdic_cli.codec_io",
    "payload_bytes": "kdic_cli.codec_io",
    "ContainerError": "kdic_cli.codec_io",
    "psnr": "kdic_cli.metrics",
    "ms_ssim": "kdic_cli.metrics",
    "bd_rate": "kdic_cli.metrics",
    "evaluate_curves": "kdic_cli.evaluate",
    "PhotoCrops": "kdic_cli.data",
    "FolderCrops": "kdic_cli.data",
    "Phase": "kdic_cli.training",
    "run_phases": "kdic_cli.training",
    "stage_schedule": "kdic_cli.api",
}
__all__ = sorted(_API)


def __getattr__(name: str) -> Any:
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'kdic_cli' has no attribute {name!r}")
