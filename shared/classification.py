"""Resolving a classification `--data` value (builtin:digits or an ImageNet-layout folder)
into a dataset with its classes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from shared.builtin_data import (  # noqa: I001
    _VALID_SPECS,
    DIGITS_CLASS_NAMES,
    DIGITS_SPEC,
    PHOTOS_SPEC,
    DigitsDataset,
    Normalisation,
    _check_split,
    _normalise,
)
from shared.errors import InputError


class _Normalise:
    """Picklable normalisation step (a lambda would break worker processes under spawn)."""

    def __init__(self, mean: Normalisation, std: Normalisation) -> None:
        self.mean, self.std = mean, std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _normalise(x, self.mean, self.std)


def _default_folder_transform(
    image_size: int, channels: int, mean: Normalisation, std: Normalisation
) -> Callable[[Image.Image], torch.Tensor]:
    from torchvision import transforms as T

    ops: list[Any] = [T.Resize(image_size), T.CenterCrop(image_size)]
    if channels == 1:
        ops.append(T.Grayscale(1))
    ops.append(T.ToTensor())
    if mean is not None or std is not None:
        ops.append(_Normalise(mean, std))
    return T.Compose(ops)


def _folder_root_for_split(root: Path, split: str) -> Path:
    has_splits = (root / "train").is_dir() or (root / "val").is_dir()
    if not has_splits:
        return root  # plain ImageNet layout: the same folder serves every split
    sub = root / split
    if not sub.is_dir():
        raise InputError(f"image folder {root} has train/ or val/ subfolders but no {split}/")
    return sub


class UnreadableImage(InputError):  # noqa: N818 (named like InputError: bad input, exit 2)
    """An image file of a folder that cannot be decoded: exit 2, one line naming the file.

    A DataLoader worker's exception is rebuilt in the main process from the text "Caught
    <type> in DataLoader worker ... Original Traceback ..."; this class keeps only the
    original message (the traceback's last line), so the error stays one line there too."""

    def __init__(self, message: str) -> None:
        if message.startswith("Caught ") and "Traceback" in message:
            message = message.strip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


def read_rgb(path: str) -> Image.Image:
    """An image folder's loader: the file decoded fully as an RGB PIL image (torchvision's
    default loader, but a file that is not a readable image is an `UnreadableImage`)."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, UnidentifiedImageError):
            reason = "not a recognised image format"
        raise UnreadableImage(f"cannot read image {path}: {reason}") from None


def _image_folder(
    root: Path,
    split: str,
    image_size: int,
    channels: int,
    mean: Normalisation,
    std: Normalisation,
    transform: Callable[[Image.Image], Any] | None,
) -> Dataset:
    from torchvision.datasets import ImageFolder

    folder = _folder_root_for_split(root, split)
    if transform is None:
        transform = _default_folder_transform(image_size, channels, mean, std)
    try:
        return ImageFolder(str(folder), transform=transform, loader=read_rgb)
    except (FileNotFoundError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else "no images"
        raise InputError(
            f"image folder {folder} is not in ImageNet layout (root/<class>/<image>): {first}"
        ) from None


# --------------------------------------------------------------------------------------
# Resolving a classification spec


@dataclass
class ClassificationData:
    """A resolved classification dataset: what a tool needs to build its head and loader."""

    dataset: Dataset
    num_classes: int
    class_names: list[str]
    spec: str


def resolve_classification(
    spec: str,
    split: str,
    image_size: int,
    channels: int = 3,
    mean: Normalisation = None,
    std: Normalisation = None,
    train_transform: Callable[..., Any] | None = None,
    eval_transform: Callable[..., Any] | None = None,
) -> ClassificationData:
    """Turn a ``--data`` value into a dataset.

    ``train_transform`` is used for ``split == "train"`` and ``eval_transform`` otherwise.
    For ``builtin:digits`` they act on image tensors (after resize and normalisation); for
    image folders they act on PIL images and replace the default pipeline (resize the
    short side, centre-crop, to tensor, normalise), so they must produce tensors.
    """
    _check_split(split)
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 or 3, got {channels}")
    transform = train_transform if split == "train" else eval_transform
    if spec == DIGITS_SPEC:
        ds = DigitsDataset(split, image_size, channels, mean, std, transform=transform)
        return ClassificationData(ds, 10, list(DIGITS_CLASS_NAMES), spec)
    if spec == PHOTOS_SPEC:
        raise InputError(
            "builtin:photos has no class labels (it is for image codecs); " + _VALID_SPECS
        )
    if spec.startswith("builtin:"):
        raise InputError(f"unknown dataset {spec!r}; {_VALID_SPECS}")
    root = Path(spec).expanduser()
    if not root.exists():
        raise InputError(f"dataset folder not found: {root}; {_VALID_SPECS}")
    if not root.is_dir():
        raise InputError(f"dataset is not a folder: {root}; {_VALID_SPECS}")
    ds = _image_folder(root, split, image_size, channels, mean, std, transform)
    classes = list(ds.classes)  # type: ignore[attr-defined]
    return ClassificationData(ds, len(classes), classes, spec)
