"""The data modules of the shared layer: built-in offline datasets, image folders, single
images, loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from shared import builtin_data, classification, images, loaders
from shared.errors import InputError

# --------------------------------------------------------------------------------------
# builtin:digits


def test_digits_split_sizes_fixed_and_disjoint() -> None:
    arrays = builtin_data._digits_split_arrays()
    (xt, yt), (xv, yv) = arrays["train"], arrays["val"]
    assert (len(yt), len(yv)) == (1437, 360)
    # disjoint: no (image, label) pair of val appears in train
    train_keys = {x.tobytes() + bytes([int(y)]) for x, y in zip(xt, yt, strict=True)}
    val_keys = {x.tobytes() + bytes([int(y)]) for x, y in zip(xv, yv, strict=True)}
    assert not train_keys & val_keys
    # fixed: the same split on a second call, and stable first labels
    again = builtin_data._digits_split_arrays.__wrapped__()
    assert np.array_equal(again["val"][1], yv)
    assert np.array_equal(again["train"][0], xt)


@pytest.mark.parametrize("channels", [1, 3])
def test_digits_tensors_shape_dtype_range(channels: int) -> None:
    x, y = builtin_data.load_digits_tensors("train", image_size=32, channels=channels)
    assert x.shape == (1437, channels, 32, 32)
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0 and float(x.max()) > 0.9
    assert set(y.tolist()) == set(range(10))
    counts = torch.bincount(y, minlength=10)
    assert int(counts.min()) >= 130 and int(counts.max()) <= 150  # stratified
    if channels == 3:
        assert torch.equal(x[:, 0], x[:, 2])


def test_digits_dataset_items_and_normalisation() -> None:
    ds = builtin_data.DigitsDataset("val", image_size=16, channels=3, mean=0.5, std=0.5)
    assert len(ds) == 360
    img, label = ds[0]
    assert img.shape == (3, 16, 16) and isinstance(label, int) and 0 <= label <= 9
    assert float(img.min()) >= -1.0 - 1e-6 and float(img.max()) <= 1.0 + 1e-6
    raw, _ = builtin_data.load_digits_tensors("val", 16, 3)
    assert torch.allclose(img, (raw[0] - 0.5) / 0.5)


def test_digits_bad_split_and_channels() -> None:
    with pytest.raises(InputError, match="split"):
        builtin_data.load_digits_tensors("test")
    with pytest.raises(InputError, match="channels"):
        builtin_data.load_digits_tensors("train", channels=2)


def test_resolve_classification_digits() -> None:
    flip = torch.nn.Identity()
    cd = classification.resolve_classification("builtin:digits", "train", 32, train_transform=flip)
    assert cd.num_classes == 10 and cd.class_names[0] == "zero" and cd.class_names[9] == "nine"
    assert cd.spec == "builtin:digits" and len(cd.dataset) == 1437
    assert cd.dataset.transform is flip
    assert (
        classification.resolve_classification("builtin:digits", "val", 32).dataset.transform is None
    )


def test_resolve_classification_bad_specs(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="builtin:digits") as e:
        classification.resolve_classification("builtin:cifar", "train", 32)
    assert "builtin:cifar" in str(e.value) and "\n" not in str(e.value)
    missing = tmp_path / "nope"
    with pytest.raises(InputError, match="builtin:digits") as e:
        classification.resolve_classification(str(missing), "train", 32)
    assert str(missing) in str(e.value)
    with pytest.raises(InputError, match="no class labels"):
        classification.resolve_classification("builtin:photos", "train", 32)


# --------------------------------------------------------------------------------------
# builtin:photos


def test_photo_splits_fixed_and_disjoint() -> None:
    val = builtin_data.list_photos("val")
    train = builtin_data.list_photos("train")
    assert val[:4] == ["chelsea", "coffee", "grace_hopper", "flower"]
    assert val[4:] == list(builtin_data.GREY_PHOTOS) and len(val) >= 8
    assert not set(val) & set(train)
    assert len(train) == 8 and "stereo_motorcycle_left" in train and "china" in train
    assert sorted(builtin_data.list_photos("all")) == sorted(val + train)
    with pytest.raises(InputError, match="split"):
        builtin_data.list_photos("test")


def test_load_photo_rgb_uint8() -> None:
    img = builtin_data.load_photo("chelsea")
    assert img.mode == "RGB" and img.size == (451, 300)
    assert np.asarray(img).dtype == np.uint8
    with pytest.raises(InputError, match="unknown builtin photo"):
        builtin_data.load_photo("lena")


def test_missing_photo_package_is_skipped_unless_none_left(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    builtin_data._photo_array.cache_clear()  # a photo decoded by an earlier test stays cached
    real = builtin_data._photo_path
    monkeypatch.setattr(
        builtin_data,
        "_photo_path",
        lambda n: None if builtin_data._PHOTO_FILES[n][0] == "matplotlib" else real(n),
    )
    assert builtin_data.list_photos("val") == [
        "chelsea",
        "coffee",
        "flower",
        *builtin_data.GREY_PHOTOS,
    ]
    with pytest.raises(InputError, match="matplotlib"):
        builtin_data.load_photo("grace_hopper")
    monkeypatch.setattr(builtin_data, "_photo_path", lambda n: None)
    with pytest.raises(InputError, match="no builtin:photos"):
        builtin_data.list_photos("val")


def test_photo_images_whole() -> None:
    ds = builtin_data.PhotoImages("val")
    assert ds.names == builtin_data.list_photos("val") and len(ds) == 13
    x = ds[0]
    assert x.shape == (3, 300, 451) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0


# --------------------------------------------------------------------------------------
# Image folders and single images


def _write_images(folder: Path, n_rgb: int = 2) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n_rgb):
        arr = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"rgb{i}.png")
    Image.fromarray(rng.integers(0, 256, (18, 16), dtype=np.uint8), "L").save(folder / "gray.png")
    rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")


def test_image_folder_imagenet_layout(tmp_path: Path) -> None:
    for cls in ("cat", "dog"):
        _write_images(tmp_path / cls)
    cd = classification.resolve_classification(str(tmp_path), "train", image_size=12, channels=3)
    assert cd.class_names == ["cat", "dog"] and cd.num_classes == 2
    assert len(cd.dataset) == 8
    labels = []
    for i in range(len(cd.dataset)):
        x, y = cd.dataset[i]
        assert x.shape == (3, 12, 12) and x.dtype == torch.float32
        labels.append(y)
    assert sorted(set(labels)) == [0, 1]
    gray = classification.resolve_classification(str(tmp_path), "val", image_size=12, channels=1)
    assert gray.dataset[0][0].shape == (1, 12, 12)


def test_image_folder_train_val_subfolders(tmp_path: Path) -> None:
    for split, n in (("train", 2), ("val", 1)):
        for cls in ("a", "b", "c"):
            _write_images(tmp_path / split / cls, n_rgb=n)
    train = classification.resolve_classification(str(tmp_path), "train", 8, mean=0.5, std=0.25)
    val = classification.resolve_classification(str(tmp_path), "val", 8)
    assert (len(train.dataset), len(val.dataset)) == (12, 9)
    assert train.class_names == val.class_names == ["a", "b", "c"]
    x, _ = train.dataset[0]
    assert float(x.min()) < 0.0  # normalised


def test_image_folder_not_imagenet_layout(tmp_path: Path) -> None:
    _write_images(tmp_path)  # flat: no class subfolders
    with pytest.raises(InputError, match="ImageNet layout") as e:
        classification.resolve_classification(str(tmp_path), "train", 8)
    assert str(tmp_path) in str(e.value)


def test_image_files_flat_folder_converts_to_rgb(tmp_path: Path) -> None:
    _write_images(tmp_path)
    (tmp_path / "notes.txt").write_text("not an image")
    files = images.ImageFiles(tmp_path)
    assert files.names == ["alpha.png", "gray.png", "rgb0.png", "rgb1.png"]
    for i in range(len(files)):
        x = files[i]
        assert x.dim() == 3 and x.shape[0] == 3 and x.dtype == torch.float32
    gray = files[1]
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


def test_image_files_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        images.ImageFiles(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        images.ImageFiles(tmp_path / "empty")


def test_save_and_load_image_round_trip(tmp_path: Path) -> None:
    x = torch.rand(3, 10, 14)
    out = images.save_image(x, tmp_path / "sub" / "img.png")
    assert out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(".")]
    y = images.load_image(out)
    assert y.shape == (3, 10, 14)
    assert float((y - x).abs().max()) <= 0.5 / 255 + 1e-6
    images.save_image(torch.zeros(1, 4, 4), out)  # overwrite, grayscale
    assert images.load_image(out).shape == (3, 4, 4)


def test_load_image_errors_name_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    with pytest.raises(InputError, match="not found") as e:
        images.load_image(missing)
    assert str(missing) in str(e.value)

    text = tmp_path / "text.png"
    text.write_text("hello, not a png")
    with pytest.raises(InputError) as e:
        images.load_image(text)
    assert str(text) in str(e.value) and "\n" not in str(e.value)

    tiny = tmp_path / "tiny.png"
    Image.fromarray(np.zeros((1, 1, 3), dtype=np.uint8)).save(tiny)
    with pytest.raises(InputError, match="too small") as e:
        images.load_image(tiny)
    assert str(tiny) in str(e.value)

    line = tmp_path / "line.png"
    Image.fromarray(np.zeros((1, 9, 3), dtype=np.uint8)).save(line)
    with pytest.raises(InputError, match="too small"):
        images.load_image(line)


def test_load_image_16bit_gray_and_palette(tmp_path: Path) -> None:
    arr16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    Image.fromarray(arr16).save(tmp_path / "g16.png")
    x = images.load_image(tmp_path / "g16.png")
    assert x.shape == (3, 3, 4)
    assert abs(float(x[0, 2, 3]) - 55000 / 65535) < 1e-3
    pal = Image.fromarray(np.full((5, 5, 3), 200, dtype=np.uint8)).convert("P")
    pal.save(tmp_path / "pal.png")
    assert abs(float(images.load_image(tmp_path / "pal.png").mean()) - 200 / 255) < 0.02


# --------------------------------------------------------------------------------------
# Loaders


def test_make_loader_seeded_and_not_distributed() -> None:
    ds = torch.utils.data.TensorDataset(torch.arange(20))
    a = [b[0].tolist() for b in loaders.make_loader(ds, 4, shuffle=True, seed=1)]
    b = [b[0].tolist() for b in loaders.make_loader(ds, 4, shuffle=True, seed=1)]
    c = [b[0].tolist() for b in loaders.make_loader(ds, 4, shuffle=True, seed=2)]
    assert a == b and a != c
    assert sorted(sum(a, [])) == list(range(20))
    ordered = loaders.make_loader(ds, 8, shuffle=False, drop_last=True)
    assert len(ordered) == 2
    assert ordered.sampler.num_replicas == 1


def test_epoch_batches_resume_mid_epoch_without_touching_skipped() -> None:
    touched: list[int] = []

    class Recording(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 12

        def __getitem__(self, i: int) -> int:
            touched.append(i)
            return i

    loader = loaders.make_loader(Recording(), 3, shuffle=True, seed=5)
    full = [b.tolist() for b in loaders.epoch_batches(loader, epoch=2)]
    touched.clear()
    tail = [b.tolist() for b in loaders.epoch_batches(loader, epoch=2, start_batch=2)]
    assert tail == full[2:]
    assert sorted(touched) == sorted(sum(full[2:], []))
    assert [b.tolist() for b in loaders.epoch_batches(loader, epoch=3)] != full


def test_make_loader_uses_distributed_sampler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loaders, "_distributed_world", lambda: (1, 2))
    ds = torch.utils.data.TensorDataset(torch.arange(10))
    loader = loaders.make_loader(ds, 2, shuffle=True, seed=0)
    assert isinstance(loader.sampler, torch.utils.data.DistributedSampler)
    assert loader.sampler.rank == 1 and loader.sampler.num_replicas == 2
    seen = sum((b[0].tolist() for b in loader), [])
    assert len(seen) == 5
    loaders.set_loader_epoch(loader, 3)
    assert loader.sampler.epoch == 3


def test_grey_photos_are_rgb_with_three_equal_channels() -> None:
    for name in builtin_data.GREY_PHOTOS:
        x = np.asarray(builtin_data.load_photo(name))
        assert x.ndim == 3 and x.shape[2] == 3 and min(x.shape[:2]) >= 128, name
        assert (x[..., 0] == x[..., 1]).all() and (x[..., 1] == x[..., 2]).all(), name
        assert x.std() > 10, name  # a photo, not a flat image
