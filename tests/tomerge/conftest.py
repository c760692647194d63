"""Helpers of the tomerge tests: calling the tiny pipelines of `tomerge_cli.tiny` with
made-up text embeddings, and counting the tokens that enter each self-attention."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from tomerge_cli import cost, dit, tiny
from tomerge_cli.patch import spatial_blocks

SIZE = 16  # latent side of the tiny UNet pipelines (their VAE does not downsample)
CALIBRATED = cost.MIN_WORK  # the measured break-even, before `merge_every_block`
CALIBRATED_CUDA = cost.MIN_WORK_CUDA


@pytest.fixture(autouse=True)
def merge_every_block(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tiny test models (widths 16-64, 16-256 tokens) are all below the measured
    break-even, so by default nothing would merge; the tests of the merging itself merge
    every block. Tests of the cost model set both back (CALIBRATED, CALIBRATED_CUDA)."""
    monkeypatch.setattr(cost, "MIN_WORK", 0)
    monkeypatch.setattr(cost, "MIN_WORK_CUDA", 0)


def call_kwargs(
    pipe: Any,
    steps: int,
    *,
    guidance: float = 5.0,
    seed: int | None = None,
    size: int = SIZE,
    **extra: Any,
) -> dict[str, Any]:
    """The arguments of one call of a tiny pipeline built without a text encoder: its text
    embeddings (and PixArt's masks), `steps` steps, a `size` x `size` latent, tensors out;
    a generator seeded with `seed` (else the global RNG draws). `extra` adds or overrides."""
    name = type(pipe).__name__
    cond, uncond = tiny.prompt_embeds(
        width=2 * tiny.EMBED if name.startswith("StableDiffusionXL") else tiny.EMBED
    )
    kw: dict[str, Any] = {
        "prompt_embeds": cond,
        "negative_prompt_embeds": uncond,
        "num_inference_steps": steps,
        "guidance_scale": guidance,
        "height": size,
        "width": size,
        "output_type": "pt",
    }
    if seed is not None:
        kw["generator"] = torch.Generator().manual_seed(seed)
    if name.startswith("PixArt"):  # text masks, and no resizing to the trained resolutions
        mask = torch.ones(1, cond.shape[1])
        kw |= {
            "prompt_attention_mask": mask,
            "negative_prompt_attention_mask": mask,
            "negative_prompt": None,
            "use_resolution_binning": False,
        }
    return kw | extra


def generate(pipe: Any, steps: int, **kw: Any) -> torch.Tensor:
    """Run a tiny pipeline (`call_kwargs`); its images, or its frames for a video pipeline."""
    out = pipe(**call_kwargs(pipe, steps, **kw))
    return out.frames if hasattr(out, "frames") else out.images


@contextlib.contextmanager
def attention_tokens(model: torch.nn.Module) -> Iterator[list[int]]:
    """Token counts entering the self-attention of every spatial (or DiT) block, per call;
    the hooks run after a patch's own, so they see the merged input."""
    seen: list[int] = []
    blocks = dit.dit_blocks(model) or spatial_blocks(model)
    handles = []
    for block in blocks:
        attn = getattr(block, "attn1", None) or block.attn
        handles.append(
            attn.register_forward_pre_hook(
                lambda m, a, k: seen.append((a[0] if a else k["hidden_states"]).shape[1]),
                with_kwargs=True,
            )
        )
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def no_hooks(model: torch.nn.Module) -> bool:
    """No hook and no instance-level forward left on any module of `model`."""
    return all(
        not m._forward_pre_hooks and not m._forward_hooks and "forward" not in vars(m)
        for m in model.modules()
    )
