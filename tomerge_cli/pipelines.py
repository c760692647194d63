"""Loading diffusers pipelines and running them the same way for every merge setting."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from shared.errors import InputError

KINDS = ("sd", "sdxl", "pixart", "animatediff", "other")


def load_pipeline(path_or_id: str, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """A stock diffusers pipeline from a local directory or a hub id (hub needs network or
    its cache); bad input is one clear line."""
    from diffusers import DiffusionPipeline

    local = Path(path_or_id)
    if local.exists() and not (local / "model_index.json").exists():
        raise InputError(f"--pipeline {path_or_id}: no model_index.json (not a diffusers pipeline)")
    kwargs: dict[str, Any] = {}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        with quiet_libraries():
            pipe = DiffusionPipeline.from_pretrained(path_or_id, **kwargs)
    except Exception as exc:  # noqa: BLE001 (hub offline, bad id, broken files: bad input)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"--pipeline {path_or_id}: cannot load a diffusers pipeline ({first[:200]}); "
            "give a local directory saved with save_pretrained, or a hub id with network"
        ) from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Silence diffusers / transformers / huggingface_hub while inside: their loading bars
    and advice blocks (e.g. "install accelerate") would land in the middle of our output.
    Their errors still surface as exceptions; levels and bars are restored afterwards."""
    import diffusers.utils.logging as dlog

    bars: list[tuple[Callable[[], None], Callable[[], None], bool]] = [
        (dlog.disable_progress_bar, dlog.enable_progress_bar, dlog.is_progress_bar_enabled())
    ]
    with contextlib.suppress(ImportError):
        import transformers.utils.logging as tlog

        bars.append(
            (tlog.disable_progress_bar, tlog.enable_progress_bar, tlog.is_progress_bar_enabled())
        )
    with contextlib.suppress(ImportError):
        import huggingface_hub.utils as hub

        bars.append(
            (
                hub.disable_progress_bars,
                hub.enable_progress_bars,
                not hub.are_progress_bars_disabled(),
            )
        )
    names = ("diffusers", "transformers", "huggingface_hub")
    levels = {n: logging.getLogger(n).level for n in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.ERROR)
    for disable, _, _ in bars:
        disable()
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        for _, enable, was_enabled in bars:
            if was_enabled:
                enable()


# Pipelines that return video frames (`num_frames`, `.frames`).
VIDEO_KINDS = ("animatediff", "wan")


def pipeline_kind(pipe: Any) -> str:
    name = type(pipe).__name__
    if name.startswith("AnimateDiff"):
        return "animatediff"
    if name.startswith("Wan"):
        return "wan"
    if name.startswith("PixArt"):
        return "pixart"
    if "XL" in name:
        return "sdxl"
    if name.startswith("StableDiffusion"):
        return "sd"
    return "other"


def default_max_downsample(pipe: Any) -> int:
    """SDXL has no attention at full resolution: merge from downsample 2."""
    return 2 if pipeline_kind(pipe) == "sdxl" else 1


def tomesd_support(pipe: Any) -> str | None:
    """None when tomesd handles this pipeline, else why not (it patches `pipe.unet` only)."""
    kind = pipeline_kind(pipe)
    if getattr(pipe, "unet", None) is None:
        return (
            f"tomesd supports UNet pipelines only (Stable Diffusion, SDXL); "
            f"{type(pipe).__name__} has no unet"
        )
    if kind in ("sd", "sdxl"):
        return None
    if kind == "animatediff":
        return "tomesd would also merge the temporal (motion) attention blocks"
    return f"tomesd supports Stable Diffusion UNets, not {type(pipe).__name__}"


def read_prompts(prompt: list[str] | None, prompts_file: Path | None) -> list[str]:
    out = list(prompt or [])
    if prompts_file is not None:
        if not prompts_file.is_file():
            raise InputError(f"--prompts {prompts_file}: file not found")
        try:
            text = prompts_file.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError) as exc:
            why = "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else exc.strerror
            raise InputError(f"--prompts {prompts_file}: {why}") from None
        out += [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not out:
        raise InputError("give --prompt TEXT or --prompts FILE (one prompt per line)")
    return out


@dataclass
class Sampling:
    steps: int = 25
    guidance: float = 7.5
    height: int | None = None
    width: int | None = None
    frames: int = 16


def generate(
    pipe: Any,
    prompt: str,
    seed: int,
    sampling: Sampling,
    clock: Callable[[], float] = time.perf_counter,
) -> tuple[torch.Tensor, float]:
    """Images (N, 3, H, W) in [0, 1] (video: one row per frame; Wan rounds the frame count
    to 4k + 1) and the seconds it took,
    measured with `clock` after a device synchronisation at both ends."""
    device = pipe.device
    kwargs: dict[str, Any] = {
        "prompt": prompt,
        "num_inference_steps": sampling.steps,
        "guidance_scale": sampling.guidance,
        "generator": torch.Generator(device="cpu").manual_seed(seed),
        "output_type": "pt",
    }
    if sampling.height:
        kwargs["height"] = sampling.height
    if sampling.width:
        kwargs["width"] = sampling.width
    kind = pipeline_kind(pipe)
    video = kind in VIDEO_KINDS
    if video:
        kwargs["num_frames"] = sampling.frames
    if kind == "pixart":
        kwargs["use_resolution_binning"] = False
        kwargs["clean_caption"] = False  # needs bs4 + ftfy, and warns without them
    if getattr(pipe, "tokenizer", None) is None or getattr(pipe, "text_encoder", None) is None:
        raise InputError(
            f"the {type(pipe).__name__} has no tokenizer or text encoder: text prompts need both"
        )
    with quiet_libraries():
        _sync(device)
        start = clock()
        out = pipe(**kwargs)
        _sync(device)
        seconds = clock() - start
    images = out.frames if video else out.images
    images = torch.as_tensor(images).float().cpu()
    if images.ndim == 5:  # (B, F, C, H, W) video frames
        images = images.flatten(0, 1)
    return images.clamp(0, 1), seconds


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def attention_backend(name: str) -> Iterator[None]:
    """sdpa: torch's fused kernels (the default); math: the plain softmax(QK^T)V path."""
    if name == "sdpa":
        yield
        return
    if name != "math":
        raise InputError(f"--attention {name}: use sdpa or math")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(SDPBackend.MATH):
        yield


def patch(pipe: Any, method: str, ratio: float, **options: Any) -> None:
    """Apply one method to a clean pipeline: none, tomesd, tome or importance."""
    import tomerge_cli

    unpatch(pipe)
    if method == "none":
        return
    max_down = options.pop("max_downsample", None) or default_max_downsample(pipe)
    if method == "tomesd":
        why = tomesd_support(pipe)
        if why:
            raise ValueError(why)
        import tomesd

        tomesd.apply_patch(pipe, ratio=ratio, max_downsample=max_down)
        return
    tomerge_cli.apply_patch(pipe, ratio=ratio, mode=method, max_downsample=max_down, **options)


def unpatch(pipe: Any) -> None:
    import tomerge_cli

    tomerge_cli.remove_patch(pipe)
    if getattr(pipe, "unet", None) is None:  # tomesd only ever patches a unet
        return
    try:
        import tomesd
    except ImportError:
        return
    tomesd.remove_patch(pipe)
