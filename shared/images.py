"""Single image files: reading any common format as RGB floats, writing PNGs atomically,
and flat folders of images."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from shared.errors import InputError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")

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
    """Write a (3,H,W) or (1,H,W) image tensor in [0, 1] (or uint8) as a PNG, atomically."""
    from shared.io import atomic_write

    img = Image.fromarray(_to_uint8_hwc(tensor))
    return atomic_write(path, lambda tmp: img.save(tmp, format="PNG"))


def save_animation(frames: torch.Tensor, path: str | os.PathLike[str], fps: float = 8.0) -> Path:
    """Write video frames (F, 3, H, W) in [0, 1] as a looping GIF, atomically (Pillow only:
    no video codec needed to look at a clip)."""
    from shared.io import atomic_write

    images = [Image.fromarray(_to_uint8_hwc(f)) for f in frames]
    duration = max(1, round(1000 / fps))

    def write(tmp: Path) -> None:
        images[0].save(
            tmp, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0
        )

    return atomic_write(path, write)


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
