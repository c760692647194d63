"""Real data that ships offline: `builtin:digits` (scikit-learn's 1,797 handwritten digits,
fixed stratified 1,437/360 split) and `builtin:photos` (21 real photos inside installed
packages: 8 colour ones to train codecs on; held out for evaluation, the "val" split: 4 colour
(chelsea, coffee, grace_hopper, flower) and the 9 grey-level photos of scikit-image)."""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from shared.errors import InputError

DIGITS_SPEC = "builtin:digits"
PHOTOS_SPEC = "builtin:photos"
DIGITS_CLASS_NAMES = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
]  # fmt: skip
SPLITS = ("train", "val")
_VALID_SPECS = (
    "valid specs: builtin:digits, or a folder in ImageNet layout (root/<class>/<image>) "
    "or with train/ and val/ subfolders in that layout"
)

Normalisation = float | Sequence[float] | None


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")


# --------------------------------------------------------------------------------------
# builtin:digits


@functools.lru_cache(maxsize=1)
def _digits_split_arrays() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = bunch.images.astype(np.float32) / 16.0  # values 0..16 -> [0, 1]
    labels = bunch.target.astype(np.int64)
    idx_train, idx_val = train_test_split(
        np.arange(len(labels)), test_size=0.2, random_state=0, stratify=labels
    )
    return {
        "train": (images[idx_train], labels[idx_train]),
        "val": (images[idx_val], labels[idx_val]),
    }


def _normalise(x: torch.Tensor, mean: Normalisation, std: Normalisation) -> torch.Tensor:
    if mean is None and std is None:
        return x
    c = x.shape[-3]
    m = torch.as_tensor(0.0 if mean is None else mean, dtype=x.dtype).flatten()
    s = torch.as_tensor(1.0 if std is None else std, dtype=x.dtype).flatten()
    for name, v in (("mean", m), ("std", s)):
        if v.numel() not in (1, c):
            raise InputError(f"{name} has {v.numel()} values but the images have {c} channels")
    if (s <= 0).any():
        raise InputError("std must be positive")
    return (x - m.view(-1, 1, 1)) / s.view(-1, 1, 1)


def load_digits_tensors(
    split: str,
    image_size: int = 32,
    channels: int = 3,
    mean: Normalisation = None,
    std: Normalisation = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole digits split in memory: x (N, channels, S, S) float, y (N,) int64.

    Values are in [0, 1] before the optional normalisation. Resizing is bilinear with
    antialiasing, from the original 8x8.
    """
    _check_split(split)
    if channels not in (1, 3):
        raise InputError(f"channels must be 1 or 3, got {channels}")
    if image_size < 1:
        raise InputError(f"image size must be positive, got {image_size}")
    images, labels = _digits_split_arrays()[split]
    x = torch.from_numpy(images).unsqueeze(1)  # (N, 1, 8, 8)
    if image_size != x.shape[-1]:
        x = F.interpolate(
            x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True
        ).clamp_(0.0, 1.0)
    if channels == 3:
        x = x.expand(-1, 3, -1, -1)
    x = _normalise(x.contiguous(), mean, std)
    return x, torch.from_numpy(labels.copy())


class DigitsDataset(Dataset):
    """``builtin:digits`` as a Dataset of (image (C,S,S) float, label int).

    ``transform``, if given, is applied to each image tensor (after normalisation).
    """

    class_names = DIGITS_CLASS_NAMES

    def __init__(
        self,
        split: str = "train",
        image_size: int = 32,
        channels: int = 3,
        mean: Normalisation = None,
        std: Normalisation = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.split = split
        self.images, self.labels = load_digits_tensors(split, image_size, channels, mean, std)
        self.transform = transform
        self.targets = self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        x = self.images[index]
        if self.transform is not None:
            x = self.transform(x)
        return x, int(self.labels[index])


# --------------------------------------------------------------------------------------
# builtin:photos

# name -> (python package that ships it, path inside the package)
_PHOTO_FILES: dict[str, tuple[str, str]] = {
    "astronaut": ("skimage", "data/astronaut.png"),
    "chelsea": ("skimage", "data/chelsea.png"),
    "coffee": ("skimage", "data/coffee.png"),
    "rocket": ("skimage", "data/rocket.jpg"),
    "hubble_deep_field": ("skimage", "data/hubble_deep_field.jpg"),
    "immunohistochemistry": ("skimage", "data/ihc.png"),
    "retina": ("skimage", "data/retina.jpg"),
    "stereo_motorcycle_left": ("skimage", "data/motorcycle_left.png"),
    "stereo_motorcycle_right": ("skimage", "data/motorcycle_right.png"),
    "china": ("sklearn", "datasets/images/china.jpg"),
    "flower": ("sklearn", "datasets/images/flower.jpg"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg"),
    # grey-level photos (read as RGB with three equal channels)
    "camera": ("skimage", "data/camera.png"),
    "coins": ("skimage", "data/coins.png"),
    "moon": ("skimage", "data/moon.png"),
    "clock": ("skimage", "data/clock_motion.png"),
    "brick": ("skimage", "data/brick.png"),
    "grass": ("skimage", "data/grass.png"),
    "gravel": ("skimage", "data/gravel.png"),
    "text": ("skimage", "data/text.png"),
    "page": ("skimage", "data/page.png"),
}
PHOTO_NAMES = tuple(_PHOTO_FILES)
GREY_PHOTOS = ("camera", "coins", "moon", "clock", "brick", "grass", "gravel", "text", "page")
# held out for evaluation: every bundled photo not trained on (colour ones first)
VAL_PHOTOS = ("chelsea", "coffee", "grace_hopper", "flower", *GREY_PHOTOS)
TRAIN_PHOTOS = tuple(n for n in PHOTO_NAMES if n not in VAL_PHOTOS)


@functools.cache
def _photo_path(name: str) -> Path | None:
    """Where the photo's file lies, found without importing its package; None if absent."""
    package, rel = _PHOTO_FILES[name]
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / rel
        if candidate.is_file():
            return candidate
    return None


def list_photos(split: str = "train") -> list[str]:
    """Names of the ``builtin:photos`` of a split ("train", "val" or "all") found here.

    A photo whose package is not installed is left out; if none is left, InputError.
    """
    if split == "all":
        names: Sequence[str] = PHOTO_NAMES
    elif split == "train":
        names = TRAIN_PHOTOS
    elif split == "val":
        names = VAL_PHOTOS
    else:
        raise InputError(f"unknown split {split!r} for builtin:photos; valid: train, val, all")
    found = [n for n in names if _photo_path(n) is not None]
    if not found:
        raise InputError(
            f"no builtin:photos of split {split!r} found: they ship with scikit-image, "
            "scikit-learn and matplotlib; install those packages"
        )
    return found


@functools.cache
def _photo_array(name: str) -> np.ndarray:
    with Image.open(_photo_file_or_error(name)) as img:
        return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()


def _photo_file_or_error(name: str) -> Path:
    if name not in _PHOTO_FILES:
        raise InputError(f"unknown builtin photo {name!r}; valid: {', '.join(PHOTO_NAMES)}")
    path = _photo_path(name)
    if path is None:
        package = _PHOTO_FILES[name][0]
        raise InputError(f"builtin photo {name!r} needs the package {package!r}; install it")
    return path


def load_photo(name: str) -> Image.Image:
    """One ``builtin:photos`` photo as an RGB uint8 PIL image."""
    return Image.fromarray(_photo_array(name))


def _photo_tensor_u8(name: str) -> torch.Tensor:
    return torch.from_numpy(_photo_array(name)).permute(2, 0, 1)  # (3, H, W) uint8, a view


class PhotoImages(Dataset):
    """Whole ``builtin:photos`` of a split as float tensors (3, H, W) in [0, 1].

    Sizes differ between photos, so batch them one at a time. ``names[i]`` is the
    name of item i.
    """

    def __init__(self, split: str = "val") -> None:
        self.names = list_photos(split)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> torch.Tensor:
        return _photo_tensor_u8(self.names[index]).float().div_(255.0)
