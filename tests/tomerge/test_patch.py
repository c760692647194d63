"""apply_patch / remove_patch on tiny stock diffusers pipelines built from configs."""

from __future__ import annotations

import warnings

import pytest
import torch

import tomerge_cli
from tests.tomerge.conftest import SIZE, attention_tokens, generate, no_hooks
from tomerge_cli import tiny


@pytest.fixture(scope="module")
def sd():
    return tiny.tiny_sd()


def _run(pipe, seed: int = 1, guidance: float = 5.0, steps: int = 4) -> torch.Tensor:
    return generate(pipe, steps, guidance=guidance, seed=seed)


@pytest.mark.slow
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_merged_attention_sees_n_minus_int_n_ratio_tokens(ratio: float) -> None:
    pipe = tiny.tiny_sd()
    tomerge_cli.apply_patch(pipe, ratio=ratio, mode="importance")
    with attention_tokens(pipe.unet) as seen:  # runs after the merge hook: sees merged input
        _run(pipe, steps=3)
    n = SIZE * SIZE
    assert n - int(n * ratio) in seen  # full-resolution blocks are merged
    assert set(seen) <= {n - int(n * ratio), n // 4}  # the half-resolution block is not
    stats = tomerge_cli.get_merger(pipe).stats["partitions"]
    assert stats["grid_prune"] >= 1 and stats["importance"] >= 1


@pytest.mark.slow
def test_ratio_zero_and_remove_patch_are_bit_identical(sd) -> None:
    base = _run(sd)
    tomerge_cli.apply_patch(sd, ratio=0.0)
    assert torch.equal(_run(sd), base)
    tomerge_cli.apply_patch(sd, ratio=0.5, mode="importance")
    merged = _run(sd)
    assert not torch.equal(merged, base)  # the patch does something...
    tomerge_cli.remove_patch(sd)
    assert torch.equal(_run(sd), base)  # ...and leaves nothing behind
    assert no_hooks(sd.unet)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["importance", "tome"])
def test_same_seed_gives_the_same_image(sd, mode: str) -> None:
    tomerge_cli.apply_patch(sd, ratio=0.5, mode=mode)
    try:
        a, b = _run(sd, seed=3), _run(sd, seed=3)
        assert torch.equal(a, b)
        assert not torch.equal(a, _run(sd, seed=4))
    finally:
        tomerge_cli.remove_patch(sd)


def test_destinations_are_drawn_from_the_pipeline_seed(sd) -> None:
    """The merge generator is seeded from the run (its initial latents), not global RNG."""
    tomerge_cli.apply_patch(sd, ratio=0.5, mode="tome", prune_steps=0)
    try:
        merger = tomerge_cli.get_merger(sd)
        _run(sd, seed=3, steps=1)
        first = merger.generator.initial_seed()
        torch.manual_seed(123)  # global RNG must not matter
        _run(sd, seed=3, steps=1)
        assert merger.generator.initial_seed() == first
        _run(sd, seed=4, steps=1)
        assert merger.generator.initial_seed() != first
    finally:
        tomerge_cli.remove_patch(sd)


def test_importance_map_has_the_latent_shape(sd) -> None:
    tomerge_cli.apply_patch(sd, ratio=0.5, mode="importance")
    try:
        _run(sd, steps=2)
        imp = tomerge_cli.get_merger(sd).importance
        assert imp is not None and imp.shape == (1, SIZE, SIZE)
        assert imp.min() >= 0 and imp.max() > 0
    finally:
        tomerge_cli.remove_patch(sd)


def test_partition_is_drawn_once_per_step_and_resolution() -> None:
    pipe = tiny.tiny_sd()
    tomerge_cli.apply_patch(pipe, ratio=0.5, mode="importance", prune_steps=1)
    _run(pipe, steps=4)
    merger = tomerge_cli.get_merger(pipe)
    assert sum(merger.stats["partitions"].values()) == 4  # one per step
    assert merger.stats["merged_calls"] == 4 * 3  # three full-resolution blocks


@pytest.mark.slow
def test_without_cfg_importance_falls_back_or_refuses(sd) -> None:
    tomerge_cli.apply_patch(sd, ratio=0.5, mode="importance")
    try:
        with pytest.warns(UserWarning, match="needs classifier-free guidance"):
            out = _run(sd, guidance=1.0)
        assert torch.isfinite(out).all()
        tomerge_cli.apply_patch(sd, ratio=0.5, mode="importance", no_cfg="error")
        with pytest.raises(ValueError, match="guidance_scale > 1"):
            _run(sd, guidance=1.0)
    finally:
        tomerge_cli.remove_patch(sd)


@pytest.mark.parametrize("ratio", [-0.1, 0.76])
def test_bad_ratio_is_refused_and_the_pipeline_untouched(sd, ratio: float) -> None:
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 0.75\]"):
        tomerge_cli.apply_patch(sd, ratio=ratio)
    assert tomerge_cli.get_merger(sd) is None


def test_a_model_without_transformer_blocks_gets_a_clear_message() -> None:
    from diffusers import UNet2DModel

    unet = UNet2DModel(
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        sample_size=8,
    )
    with pytest.raises(ValueError, match="no spatial diffusers BasicTransformerBlock"):
        tomerge_cli.apply_patch(unet)


@pytest.mark.slow
def test_sdxl_shaped_pipeline_merges_from_downsample_2() -> None:
    pipe = tiny.tiny_sdxl()
    pooled = torch.randn(1, 2 * tiny.EMBED), torch.randn(1, 2 * tiny.EMBED)
    kw = dict(pooled_prompt_embeds=pooled[0], negative_pooled_prompt_embeds=pooled[1])
    tomerge_cli.apply_patch(pipe, ratio=0.5)  # max_downsample 1: SDXL has nothing there
    generate(pipe, 3, size=32, **kw)
    assert tomerge_cli.get_merger(pipe).stats["merged_calls"] == 0
    tomerge_cli.apply_patch(pipe, ratio=0.5, max_downsample=2)
    out = generate(pipe, 3, size=32, **kw)
    stats = tomerge_cli.get_merger(pipe).stats
    assert stats["merged_calls"] == 3 * 3  # down 1 + up 2 blocks at level 2, 3 steps
    assert stats["tokens_kept"] * 2 == stats["tokens_in"]
    assert torch.isfinite(out).all()


@pytest.mark.slow
def test_pixart_patches_the_middle_blocks_with_ada_norm_single() -> None:
    pipe = tiny.tiny_pixart(layers=8)
    base = generate(pipe, 4, guidance=4.5, seed=0, size=32)
    tomerge_cli.apply_patch(pipe, ratio=0.5, merge_crossattn=True)
    merger = tomerge_cli.get_merger(pipe)
    blocks = pipe.transformer.transformer_blocks
    assert merger.blocks == list(blocks[2:6])  # middle half of 8
    out = generate(pipe, 4, guidance=4.5, seed=0, size=32)
    assert merger.stats["merged_calls"] == 4 * 4
    assert merger.stats["partitions"]["importance"] == 2  # steps 2 and 3
    assert merger.importance.shape == (1, 32, 32)  # learned sigma dropped, latent shape
    assert torch.isfinite(out).all() and not torch.equal(out, base)


@pytest.mark.slow
def test_animatediff_merges_spatial_attention_per_frame_only() -> None:
    pipe = tiny.tiny_animatediff()
    tomerge_cli.apply_patch(pipe, ratio=0.5)
    merger = tomerge_cli.get_merger(pipe)
    frames = 3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = generate(pipe, 3, num_frames=frames)
    assert torch.isfinite(out).all()
    assert merger.stats["tokens_in"] == merger.stats["merged_calls"] * SIZE * SIZE  # per frame
    assert merger.importance.shape == (frames, SIZE, SIZE)
    temporal = [m for n, m in pipe.unet.named_modules() if "motion_modules" in n]
    assert temporal and all(not m._forward_pre_hooks for m in temporal)
