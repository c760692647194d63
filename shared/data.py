"""Datasets and loaders shared by the tools: real data that works offline, image folders,
single images, and a loader that knows about torch.distributed.

Dataset specs
-------------
- ``builtin:digits``: scikit-learn's 1,797 real 8x8 handwritten digits (10 classes), with a
  fixed stratified split: ``train_test_split(test_size=0.2, random_state=0, stratify=y)``
  gives 1,437 train and 360 val images. Images are upsampled to ``image_size``.
- ``builtin:photos``: twelve real colour photos that ship inside installed packages
  (scikit-image, scikit-learn, matplotlib); no download. Fixed held-out split for codec
  evaluation: val = chelsea, coffee, grace_hopper, flower; train = the other eight.
- an image folder in ImageNet layout (``root/<class>/<img>``), or with ``train/`` and
  ``val/`` subfolders in that layout (``split`` picks the subfolder).
- a flat folder of images (``ImageFiles``) for codecs.

Only ``shared.errors`` is imported from the shared layer, so this module stays usable alone.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset

from shared.errors import InputError

__all__ = [
    "DIGITS_CLASS_NAMES",
    "IMAGE_EXTENSIONS",
    "PHOTO_NAMES",
    "VAL_PHOTOS",
    "ClassificationData",
    "DigitsDataset",
    "ImageFiles",
    "PhotoCrops",
    "PhotoImages",
    "list_photos",
    "load_digits_tensors",
    "load_image",
    "load_photo",
    "make_loader",
    "resolve_classification",
    "save_image",
    "set_loader_epoch",
]

DIGITS_SPEC = "builtin:digits"
PHOTOS_SPEC = "builtin:photos"
DIGITS_CLASS_NAMES = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
]  # fmt: skip
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
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
# Single images


def load_image(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an image file as a float tensor (3, H, W) in [0, 1].

    Grayscale, 16-bit, RGBA and palette images become RGB (alpha is dropped). Bad input
    (missing file, not an image, smaller than 2 pixels on a side) raises InputError
    naming the path.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"image not found: {p}")
    if not p.is_file():
        raise InputError(f"not an image file (it is a directory): {p}")
    try:
        with Image.open(p) as img:
            img.load()
            arr = _pil_to_rgb_array(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, UnidentifiedImageError):
            reason = "not a recognised image format"
        raise InputError(f"cannot read image {p}: {reason}") from None
    h, w = arr.shape[:2]
    if h < 2 or w < 2:
        raise InputError(f"image too small ({w}x{h} pixels, need at least 2x2): {p}")
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _pil_to_rgb_array(img: Image.Image) -> np.ndarray:
    """PIL image of any common mode -> float32 array (H, W, 3) in [0, 1]."""
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale: PIL's convert("RGB") would clip to 255, so scale by hand.
        gray = np.asarray(img, dtype=np.float32) / 65535.0
        return np.repeat(np.clip(gray, 0.0, 1.0)[..., None], 3, axis=2)
    if img.mode == "F":
        gray = np.clip(np.asarray(img, dtype=np.float32), 0.0, 1.0)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids PIL's warning about palette transparency
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.float32) / 255.0


def _to_uint8_hwc(tensor: torch.Tensor) -> np.ndarray:
    t = tensor.detach().cpu()
    if t.dim() == 4:
        if t.shape[0] != 1:
            raise ValueError(f"save_image takes one image, got a batch of {t.shape[0]}")
        t = t[0]
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3 or t.shape[0] not in (1, 3):
        raise ValueError(f"save_image expects (3,H,W), (1,H,W) or (H,W); got {tuple(t.shape)}")
    if t.dtype != torch.uint8:
        t = (t.float().clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)
    arr = t.permute(1, 2, 0).numpy()
    return arr[..., 0] if arr.shape[2] == 1 else arr


def save_image(tensor: torch.Tensor, path: str | os.PathLike[str]) -> Path:
    """Write a (3,H,W) or (1,H,W) image tensor in [0, 1] (or uint8) as a PNG, atomically.

    The PNG is written to a temporary file in the target directory and renamed over the
    target, so a killed job never leaves a half-written image.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(_to_uint8_hwc(tensor))
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            img.save(fh, format="PNG")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


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
}
PHOTO_NAMES = tuple(_PHOTO_FILES)
VAL_PHOTOS = ("chelsea", "coffee", "grace_hopper", "flower")
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


class PhotoCrops(Dataset):
    """Random square crops of ``builtin:photos`` for codec training.

    Item ``i`` is a function of (seed, epoch, i) only: the photo is drawn uniformly, then
    the crop position and a horizontal flip. ``set_epoch`` (called by
    :func:`set_loader_epoch`) gives fresh crops each epoch, identical on every rank and
    with any number of workers. Photos smaller than ``crop_size`` are reflection-padded.
    """

    def __init__(
        self,
        split: str = "train",
        crop_size: int = 256,
        n_crops_per_epoch: int = 1024,
        seed: int = 0,
        flip: bool = True,
    ) -> None:
        if crop_size < 2:
            raise InputError(f"crop size must be at least 2, got {crop_size}")
        if n_crops_per_epoch < 1:
            raise InputError(f"crops per epoch must be positive, got {n_crops_per_epoch}")
        self.names = list_photos(split)
        self.crop_size = crop_size
        self.n_crops = n_crops_per_epoch
        self.seed = seed
        self.flip = flip
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n_crops

    def __getitem__(self, index: int) -> torch.Tensor:
        if not 0 <= index < self.n_crops:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        img = _photo_tensor_u8(self.names[int(rng.integers(len(self.names)))])
        c = self.crop_size
        _, h, w = img.shape
        if h < c or w < c:
            img = _reflect_pad_to(img, c)
            _, h, w = img.shape
        top = int(rng.integers(h - c + 1))
        left = int(rng.integers(w - c + 1))
        crop = img[:, top : top + c, left : left + c].float().div_(255.0)
        if self.flip and rng.random() < 0.5:
            crop = crop.flip(-1)
        return crop.contiguous()


def _reflect_pad_to(img: torch.Tensor, size: int) -> torch.Tensor:
    """Pad (C,H,W) symmetrically by reflection up to at least size x size."""
    _, h, w = img.shape
    ph, pw = max(0, size - h), max(0, size - w)
    arr = np.pad(
        img.numpy(),
        ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)),
        mode="symmetric",  # numpy repeats the reflection when the pad exceeds the image
    )
    return torch.from_numpy(arr)


# --------------------------------------------------------------------------------------
# Image folders


class ImageFiles(Dataset):
    """A flat folder of images (no class subfolders) as RGB float tensors (3, H, W).

    Files with the extensions in ``IMAGE_EXTENSIONS`` (any case) are listed in sorted
    order; ``paths[i]`` is the file of item i.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        if not self.root.exists():
            raise InputError(f"image folder not found: {self.root}")
        if not self.root.is_dir():
            raise InputError(f"not a folder: {self.root}")
        self.paths = sorted(
            p for p in self.root.iterdir()
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )  # fmt: skip
        if not self.paths:
            raise InputError(f"no images in {self.root} (looked for {', '.join(IMAGE_EXTENSIONS)})")

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return load_image(self.paths[index])


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
        return ImageFolder(str(folder), transform=transform)
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


# --------------------------------------------------------------------------------------
# Loaders


def _distributed_world() -> tuple[int, int] | None:
    """(rank, world size) when torch.distributed runs with more than one process."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return None


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
    pin_memory: bool = False,
    distribute: bool = True,
) -> DataLoader:
    """A DataLoader that shards across processes under torch.distributed.

    With world size > 1 each rank gets its share through a ``DistributedSampler``
    (seeded, so every rank agrees on the order); otherwise shuffling uses a seeded
    generator, so a run is reproducible. Call :func:`set_loader_epoch` at the start of
    each epoch to reshuffle.
    """
    if batch_size < 1:
        raise InputError(f"batch size must be positive, got {batch_size}")
    common: dict[str, Any] = {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "drop_last": drop_last,
        "pin_memory": pin_memory,
        # no persistent workers: they would keep a stale copy of PhotoCrops.epoch
    }
    from torch.utils.data.distributed import DistributedSampler

    # A DistributedSampler even in one process: its order is a pure function of
    # (seed, epoch), which is what lets a resumed run see the same batches.
    # distribute=False: the caller already took this rank's share (see `shard`).
    rank, size = (_distributed_world() if distribute else None) or (0, 1)
    sampler = DistributedSampler(
        dataset, num_replicas=size, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last
    )
    # Its own generator: creating an iterator draws a worker seed, which must not consume
    # the global RNG (a resumed run would otherwise draw it at a different point).
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, sampler=sampler, generator=generator, **common)


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Tell the sampler (DistributedSampler) and the dataset (PhotoCrops) the epoch."""
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)  # type: ignore[union-attr]
    dataset = getattr(loader, "dataset", None)
    if hasattr(dataset, "set_epoch"):
        dataset.set_epoch(epoch)  # type: ignore[union-attr]


def shard(dataset: Dataset) -> Dataset:
    """This rank's share of `dataset` without padding (rank, rank + world, ...): for
    statistics and evaluation, where DistributedSampler's repeated samples would bias sums."""
    world = _distributed_world()
    if world is None:
        return dataset
    from torch.utils.data import Subset

    rank, size = world
    return Subset(dataset, range(rank, len(dataset), size))  # type: ignore[arg-type]


def resolve_workers(requested: int, spec: str) -> int:
    """Loader workers for `--num-workers -1` (auto): none for in-memory built-in sets (workers
    only add start-up cost there), else up to 8, leaving a core for the main process."""
    if requested >= 0:
        return requested
    if spec.startswith("builtin:"):
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def epoch_batches(loader: DataLoader, epoch: int, start_batch: int = 0) -> DataLoader:
    """The batches of `epoch` from `start_batch` on, without loading (or augmenting, which
    draws random numbers) the skipped ones: a resumed run continues exactly where it
    stopped."""
    set_loader_epoch(loader, epoch)
    if start_batch == 0:
        return loader
    indices = list(loader.sampler)[start_batch * (loader.batch_size or 1) :]  # type: ignore[arg-type]
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=indices,
        num_workers=loader.num_workers, drop_last=loader.drop_last,
        pin_memory=loader.pin_memory, collate_fn=loader.collate_fn,
        generator=torch.Generator().manual_seed(epoch),
    )  # fmt: skip
