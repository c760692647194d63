"""Reading and writing this tool's images: real data as one [0, 1] tensor, and the synthetic
image folder (ImageNet layout plus classes.json, which fixes the class order: ImageFolder's
alphabetical order would silently renumber classes such as zero..nine)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import torch

from shared.errors import InputError

CLASSES_FILE = "classes.json"


def load_real(
    spec: str, split: str, image_size: int
) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images (N, 3, S, S) in [0, 1], labels (N,), class names) of a --data split."""
    from shared.builtin_data import load_digits_tensors
    from shared.classification import resolve_classification

    if spec == "builtin:digits":
        x, y = load_digits_tensors(split, image_size, channels=3)
        from shared.builtin_data import DIGITS_CLASS_NAMES

        return x, y, list(DIGITS_CLASS_NAMES)
    data = resolve_classification(spec, split, image_size, channels=3)
    items = [data.dataset[i] for i in range(len(data.dataset))]
    x = torch.stack([torch.as_tensor(img) for img, _ in items])
    y = torch.tensor([int(label) for _, label in items])
    return x, y, data.class_names


def read_class_names(source: str) -> list[str]:
    """Class names from a text file (one per line) or from a --data spec."""
    path = Path(source)
    if path.is_file() and path.suffix in (".txt", ".names", ""):
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        if not names:
            raise InputError(f"--classes {path}: no class names in the file")
        return names
    from shared.classification import resolve_classification

    return resolve_classification(source, "val", 8).class_names


def _folder_name(index: int, name: str) -> str:
    return f"{index:04d}_" + re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def save_synthetic(
    images: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], directory: Path
) -> list[Path]:
    """Write images as DIR/<index>_<class>/<k>.png and the ordered names to classes.json."""
    from shared.images import save_image
    from shared.io import write_json

    paths, counts = [], [0] * len(class_names)
    for img, y in zip(images, labels.tolist(), strict=True):
        path = directory / _folder_name(y, class_names[y]) / f"{counts[y]:05d}.png"
        counts[y] += 1
        paths.append(save_image(img, path))
    write_json(directory / CLASSES_FILE, {"class_names": list(class_names)})
    return paths


def load_synthetic(directory: str | Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The images, labels and class names written by `save_synthetic`."""
    from shared.images import load_image

    root = Path(directory)
    meta = root / CLASSES_FILE
    if not meta.is_file():
        raise InputError(f"--synthetic {root}: no {CLASSES_FILE} (write it with hello synthesize)")
    names = json.loads(meta.read_text())["class_names"]
    images, labels = [], []
    for y, name in enumerate(names):
        for path in sorted((root / _folder_name(y, name)).glob("*.png")):
            images.append(load_image(path))
            labels.append(y)
    if not images:
        raise InputError(f"--synthetic {root}: no images")
    sizes = {tuple(i.shape) for i in images}
    if len(sizes) > 1:
        raise InputError(f"--synthetic {root}: images of different sizes {sorted(sizes)}")
    return torch.stack(images), torch.tensor(labels), names
