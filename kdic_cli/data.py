"""Training and evaluation images for the codecs: random crops of builtin:photos or of a
folder of images (a pure function of seed, epoch and index, so resume and DDP see the same
crops), and whole images for evaluation."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from shared.errors import InputError

PHOTOS = "builtin:photos"

__all__ = ["PHOTOS", "FolderCrops", "PhotoCrops", "eval_images", "train_dataset"]


@functools.cache
def _photo_u8(name: str) -> Tensor:
    """One builtin photo as a (3, H, W) uint8 tensor, decoded once per process."""
    from shared.builtin_data import load_photo

    return torch.from_numpy(np.asarray(load_photo(name)).copy()).permute(2, 0, 1)


class PhotoCrops(Dataset):
    """Random square crops of ``builtin:photos`` for codec training.

    Item ``i`` is a function of (seed, epoch, i) only: the photo is drawn uniformly, then
    the crop position and a horizontal flip. ``set_epoch`` (called by
    ``shared.loaders.set_loader_epoch``) gives fresh crops each epoch, identical on every
    rank and with any number of workers. Photos smaller than ``crop_size`` are
    reflection-padded.
    """

    def __init__(
        self,
        split: str = "train",
        crop_size: int = 256,
        n_crops_per_epoch: int = 1024,
        seed: int = 0,
        flip: bool = True,
    ) -> None:
        from shared.builtin_data import list_photos

        if crop_size < 2:
            raise ValueError(f"crop size must be at least 2, got {crop_size}")
        if n_crops_per_epoch < 1:
            raise ValueError(f"crops per epoch must be positive, got {n_crops_per_epoch}")
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

    def __getitem__(self, index: int) -> Tensor:
        if not 0 <= index < self.n_crops:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, self.epoch, index])
        img = _photo_u8(self.names[int(rng.integers(len(self.names)))])
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


def _reflect_pad_to(img: Tensor, size: int) -> Tensor:
    """Pad (C,H,W) symmetrically by reflection up to at least size x size."""
    _, h, w = img.shape
    ph, pw = max(0, size - h), max(0, size - w)
    arr = np.pad(
        img.numpy(),
        ((0, 0), (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)),
        mode="symmetric",  # numpy repeats the reflection when the pad exceeds the image
    )
    return torch.from_numpy(arr)


class FolderCrops(Dataset):
    """Random square crops of a folder of images; item i depends on (seed, epoch, i)."""

    def __init__(self, root: str | Path, crop_size: int, n_crops: int, seed: int = 0) -> None:
        from shared.images import ImageFiles

        self.files = ImageFiles(root)
        self.crop, self.n, self.seed, self.epoch = crop_size, n_crops, seed, 0
        self._cache: dict[int, Tensor] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Tensor:
        rng = np.random.default_rng([self.seed, self.epoch, index])
        k = int(rng.integers(len(self.files)))
        if k not in self._cache:
            self._cache[k] = self.files[k]
        img = self._cache[k]
        _, h, w = img.shape
        c = self.crop
        if h < c or w < c:
            img = torch.nn.functional.pad(
                img[None], (0, max(0, c - w), 0, max(0, c - h)), mode="replicate"
            )[0]
            _, h, w = img.shape
        top, left = int(rng.integers(h - c + 1)), int(rng.integers(w - c + 1))
        return img[:, top : top + c, left : left + c].contiguous()


def train_dataset(data: str, crop: int, seed: int) -> Dataset:
    """1,024 crops per epoch of builtin:photos (train split) or of an image folder."""
    if data == PHOTOS:
        return PhotoCrops("train", crop_size=crop, n_crops_per_epoch=1024, seed=seed)
    if data.startswith("builtin:"):
        raise InputError(f"--data {data}: codecs train on builtin:photos or an image folder")
    return FolderCrops(data, crop, 1024, seed)


def eval_images(data: str) -> list[tuple[str, Tensor]]:
    """Whole images for evaluation: the held-out builtin photos, or every image of a folder."""
    if data == PHOTOS:
        from shared.builtin_data import PhotoImages

        ds = PhotoImages("val")
        return [(n, ds[i]) for i, n in enumerate(ds.names)]
    if data.startswith("builtin:"):
        raise InputError(f"--data {data}: evaluate on builtin:photos or an image folder")
    from shared.images import ImageFiles

    files = ImageFiles(data)
    return [(p.name, files[i]) for i, p in enumerate(files.paths)]
