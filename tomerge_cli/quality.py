"""FID and CLIP score (torchmetrics) from local weight files; offline without them the
error names exactly what to pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

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
    """torchmetrics CLIP score, 100 * max(cos, 0), with a transformers CLIP model (a hub id
    or a local folder)."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    name = model or CLIP_DEFAULT

    def load() -> tuple[Any, Any]:  # torchmetrics takes a loader for any model, a name for few
        from transformers import CLIPModel, CLIPProcessor

        return _ProjectedFeatures(CLIPModel.from_pretrained(name)), CLIPProcessor.from_pretrained(
            name
        )

    try:
        return CLIPScore(model_name_or_path=load)
    except Exception as exc:  # noqa: BLE001
        raise InputError(
            f"CLIP score needs a CLIP model: pass --clip-model DIR, a transformers CLIPModel "
            f"directory (config.json, model.safetensors, tokenizer and preprocessor_config.json; "
            f"e.g. {CLIP_DEFAULT} saved with save_pretrained) ({_first_line(exc)})"
        ) from None


class _ProjectedFeatures(nn.Module):
    """A CLIPModel whose get_*_features return the projected embeddings as tensors:
    transformers 5 returns a model output (embeddings in `pooler_output`), which torchmetrics
    1.9 cannot normalise."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.clip = clip
        self.config = clip.config

    def get_image_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return _embedding(self.clip.get_image_features(*args, **kwargs))

    def get_text_features(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return _embedding(self.clip.get_text_features(*args, **kwargs))


def _embedding(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__
