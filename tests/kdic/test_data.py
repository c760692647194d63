"""Codec training crops (moved here from shared: only kdic trains on them)."""

from __future__ import annotations

import pytest
import torch

from kdic_cli.data import PhotoCrops, _reflect_pad_to
from shared import loaders


def test_photo_crops_deterministic_by_seed_and_index() -> None:
    a = PhotoCrops("train", crop_size=64, n_crops_per_epoch=6, seed=3)
    b = PhotoCrops("train", crop_size=64, n_crops_per_epoch=6, seed=3)
    c = PhotoCrops("train", crop_size=64, n_crops_per_epoch=6, seed=4)
    assert len(a) == 6
    x = a[2]
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert torch.equal(a[2], b[2])  # same seed and index, other instance
    assert torch.equal(a[5], a[5])
    assert not torch.equal(a[2], a[3])
    assert any(not torch.equal(a[i], c[i]) for i in range(6))
    a.set_epoch(1)
    assert any(not torch.equal(a[i], b[i]) for i in range(6))
    with pytest.raises(IndexError):
        a[6]


def test_photo_crops_larger_than_photo_are_padded() -> None:
    crops = PhotoCrops("val", crop_size=700, n_crops_per_epoch=2, seed=0)
    assert crops[0].shape == (3, 700, 700)


def test_reflect_pad_is_symmetric_and_keeps_the_image() -> None:
    img = torch.arange(2 * 3 * 4, dtype=torch.uint8).reshape(2, 3, 4)
    out = _reflect_pad_to(img, 6)
    assert out.shape == (2, 6, 6)
    assert torch.equal(out[:, 1:4, 1:5], img)  # 3 rows padded 1+2, 4 columns 1+1
    assert torch.equal(out[:, 0, 1:5], img[:, 0]) and torch.equal(out[:, 4, 1:5], img[:, 2])
    # a pad larger than the image repeats the reflection instead of failing
    assert _reflect_pad_to(img, 20).shape == (2, 20, 20)


def test_set_loader_epoch_reaches_photo_crops() -> None:
    crops = PhotoCrops("val", crop_size=32, n_crops_per_epoch=4, seed=0)
    loader = loaders.make_loader(crops, 2, shuffle=False)
    first = next(iter(loader))
    loaders.set_loader_epoch(loader, 1)
    assert crops.epoch == 1
    assert not torch.equal(first, next(iter(loader)))
