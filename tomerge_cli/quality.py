"""FID and CLIP score (torchmetrics) from local weight files; offline without them the
error names exactly what to pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.errors import InputError

INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
INCEPTION_URL = (
    "https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + INCEPTION_FILE
)
CLIP_DEFAULT = "openai/clip-vit-large-patch14"


def fid_metric(weights: Path | None) -> Any:
    """torchmetrics FID (2048-d pool features of torch-fidelity's FID Inception v3)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    if weights is not None and not weights.is_file():
        raise InputError(f"--inception-weights {weights}: file not found")
    try:
        return FrechetInceptionDistance(
            feature=2048,
            normalize=True,
            feature_extractor_weights_path=str(weights) if weights else None,
        )
    except Exception as exc:  # noqa: BLE001 (offline download, wrong file: bad input)
        raise InputError(
            f"FID needs the FID Inception weights: pass --inception-weights {INCEPTION_FILE} "
            f"(download it where there is network: {INCEPTION_URL}) ({_first_line(exc)})"
        ) from None


def clip_metric(model: str | None) -> Any:
    """torchmetrics CLIP score, 100 * max(cos, 0), with a local transformers CLIP model."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    name = model or CLIP_DEFAULT
    try:
        return CLIPScore(model_name_or_path=name)
    except Exception as exc:  # noqa: BLE001
        raise InputError(
            f"CLIP score needs a CLIP model: pass --clip-model DIR, a transformers CLIPModel "
            f"directory (config.json, model.safetensors, tokenizer and preprocessor_config.json; "
            f"e.g. {CLIP_DEFAULT} saved with save_pretrained) ({_first_line(exc)})"
        ) from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__
