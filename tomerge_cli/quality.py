"""FID and CLIP score (torchmetrics) from local weight files; offline without them the
error names exactly what to pass."""

from __future__ import annotations

import io
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


def inception_weights(weights: Path | None) -> dict[str, torch.Tensor] | None:
    """The tensors of --inception-weights, read by the toolkit's safe loader (never by the
    metric library, whose loader unpickles with code allowed)."""
    from shared.checkpoints import load_state_dict

    if weights is None:
        return None
    if not Path(weights).exists():
        raise InputError(f"--inception-weights {weights}: file not found")
    try:
        state = load_state_dict(weights)
    except InputError as exc:
        raise InputError(f"--inception-weights {exc}") from None
    # a cheap look at two tensors before anything loads: another network's weights are
    # refused here, not after the CLIP model (the full check is loading them into the net)
    for key, shape in _INCEPTION_SHAPES.items():
        got = state.get(key)
        if got is None or tuple(got.shape) != shape:
            found = "missing" if got is None else f"of shape {tuple(got.shape)}"
            raise InputError(
                f"--inception-weights {weights}: not the FID Inception v3 weights "
                f"({INCEPTION_FILE}): tensor {key} {found}, expected {shape}"
            )
    return state


# two tensors of torch-fidelity's FeatureExtractorInceptionV3: its stem and its 1008-way head
_INCEPTION_SHAPES = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "fc.weight": (1008, 2048)}


def fid_metric(weights: Path | None, state: dict[str, torch.Tensor] | None = None) -> Any:
    """torchmetrics FID (2048-d pool features of torch-fidelity's FID Inception v3), its
    network loaded from the file `weights` (or from `state`, its tensors already read by
    `inception_weights`)."""
    if state is None:
        state = inception_weights(weights)  # a bad file fails before the metric imports
    from torchmetrics.image.fid import FrechetInceptionDistance

    source: Any = None
    if state is not None:
        # torch-fidelity takes only a path or file object, which it unpickles with code
        # allowed: hand it a buffer that holds nothing but the tensors just read safely
        source = io.BytesIO()
        torch.save(dict(state), source)
        source.seek(0)
    try:
        return FrechetInceptionDistance(
            feature=2048, normalize=True, feature_extractor_weights_path=source
        )
    except Exception as exc:  # noqa: BLE001 (offline download, wrong network: bad input)
        if state is not None:
            raise InputError(
                f"--inception-weights {weights}: not the FID Inception v3 weights "
                f"({INCEPTION_FILE}) ({_first_line(exc)})"
            ) from None
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
