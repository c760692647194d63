"""tomesd's own documented calls, with the import swapped (`import tomerge_cli as tomesd`),
on every supported pipeline built tiny from configs. Merging is checked by counting the
tokens that enter each self-attention (a forward pre-hook registered after the patch); where
nothing can be merged, a warning must say why."""

from __future__ import annotations

import warnings

import pytest
import torch

import tomerge_cli as tomesd  # the swap a tomesd user makes
from tests.tomerge.conftest import SIZE, attention_tokens, generate, no_hooks
from tomerge_cli import api, dit, tiny

N = SIZE * SIZE


def _sd_run(pipe) -> None:
    generate(pipe, 2, seed=0)


def _sdxl_run(pipe) -> None:
    pooled = torch.zeros(1, 2 * tiny.EMBED), torch.ones(1, 2 * tiny.EMBED)
    generate(
        pipe,
        2,
        size=2 * SIZE,
        pooled_prompt_embeds=pooled[0],
        negative_pooled_prompt_embeds=pooled[1],
    )


def _tokens(pipe, run, patch) -> list[int]:
    """Apply `patch` (a tomesd-style call, ours or tomesd's), run the pipeline, return the
    token counts; both patches removed afterwards."""
    import tomesd as real

    patch()
    try:
        with attention_tokens(pipe.unet) as seen:
            run(pipe)
        return seen
    finally:
        tomesd.remove_patch(pipe)
        real.remove_patch(pipe)


def test_signature_matches_tomesd_positionally() -> None:
    import inspect

    import tomesd as real

    ours = list(inspect.signature(tomesd.apply_patch).parameters.values())
    theirs = list(inspect.signature(real.apply_patch).parameters.values())
    assert [(p.name, p.default) for p in ours[: len(theirs)]] == [
        (p.name, p.default) for p in theirs
    ]
    assert all(p.kind is p.POSITIONAL_OR_KEYWORD for p in ours[: len(theirs)])
    assert list(inspect.signature(tomesd.remove_patch).parameters) == ["model"]


@pytest.mark.slow  # nine tiny SD generations
def test_sd_documented_calls_merge_like_tomesd_itself() -> None:
    import tomesd as real

    pipe = tiny.tiny_sd()
    base = _tokens(pipe, _sd_run, lambda: None)
    assert set(base) == {N, N // 4}  # full-resolution blocks and the mid block
    calls = {
        "apply_patch(pipe, ratio=0.5)": lambda t: t.apply_patch(pipe, ratio=0.5),
        "apply_patch(pipe.unet, 0.5)": lambda t: t.apply_patch(pipe.unet, 0.5),
        "all positional": lambda t: t.apply_patch(pipe, 0.5, 1, 2, 2, False, True, False, False),
        "keywords": lambda t: t.apply_patch(
            model=pipe,
            ratio=0.3,
            max_downsample=2,
            sx=2,
            sy=2,
            use_rand=True,
            merge_attn=True,
            merge_crossattn=True,
            merge_mlp=True,
        ),
    }
    seen = {}
    for name, call in calls.items():
        seen[name] = _tokens(pipe, _sd_run, lambda call=call: call(tomesd))
        theirs = _tokens(pipe, _sd_run, lambda call=call: call(real))
        assert seen[name] == theirs, name  # the same layers see the same token counts
    # three full-resolution blocks merged in each of the two steps
    assert seen["apply_patch(pipe, ratio=0.5)"].count(N // 2) == 3 * 2
    assert seen["apply_patch(pipe.unet, 0.5)"] == seen["apply_patch(pipe, ratio=0.5)"]
    # the keyword call: ratio 0.3, and max_downsample=2 merges the mid block too
    assert set(seen["keywords"]) == {N - int(N * 0.3), N // 4 - int(N // 4 * 0.3)}
    tomesd.apply_patch(pipe, ratio=0.5)
    tomesd.remove_patch(pipe)
    assert no_hooks(pipe.unet) and tomesd.get_merger(pipe) is None
    assert _tokens(pipe, _sd_run, lambda: None) == base


def test_tomesd_extreme_ratio_is_refused_with_the_reason() -> None:
    """tomesd's README: ratio=0.9, sx=4, sy=4 (it allows 1 - 1/(sx*sy)); we keep N/4."""
    pipe = tiny.tiny_sd()
    with pytest.raises(ValueError, match=r"ratio must be in \[0, 0.75\].*whatever sx and sy"):
        tomesd.apply_patch(pipe, ratio=0.9, sx=4, sy=4, max_downsample=2)
    assert tomesd.get_merger(pipe) is None and no_hooks(pipe.unet)


@pytest.mark.slow  # three tiny SDXL generations
def test_sdxl_with_tomesd_defaults_warns_that_nothing_is_merged() -> None:
    pipe = tiny.tiny_sdxl()
    with pytest.warns(UserWarning, match="no layer is patched.*use max_downsample=2") as caught:
        tomesd.apply_patch(pipe, ratio=0.5)  # tomesd's default max_downsample=1
    assert caught[0].filename == __file__  # points at the user's call
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "tomerge")  # said once, at apply time, not per step
        with attention_tokens(pipe.unet) as seen:
            _sdxl_run(pipe)
    assert set(seen) == {(2 * SIZE // 2) ** 2, (2 * SIZE // 4) ** 2}  # nothing merged
    tomesd.remove_patch(pipe)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", "tomerge")
        tomesd.apply_patch(pipe, ratio=0.5, max_downsample=2)
    with attention_tokens(pipe.unet) as seen:
        _sdxl_run(pipe)
    n2 = (2 * SIZE // 2) ** 2
    assert n2 - int(n2 * 0.5) in seen and n2 not in seen
    tomesd.remove_patch(pipe)
    assert no_hooks(pipe.unet)


def test_a_setting_that_merges_nothing_warns_at_run_time() -> None:
    """No static reason known (a ratio too small for the token count): the first step says so."""
    pipe = tiny.tiny_sd()
    tomesd.apply_patch(pipe.unet, 0.001)
    with pytest.warns(UserWarning, match="no layer was merged: ratio 0.001 removes no token"):
        generate(pipe, 1, guidance=7.5)  # the pipeline's default guidance


@pytest.mark.slow  # two tiny PixArt generations
def test_pixart_documented_calls_merge() -> None:
    pipe = tiny.tiny_pixart(layers=8)
    n = (32 // 2) ** 2  # patch size 2
    for call in (
        lambda: tomesd.apply_patch(pipe, ratio=0.5),
        lambda: tomesd.apply_patch(pipe.transformer, 0.5, 1, 2, 2, True, True, False, False),
    ):
        call()
        with attention_tokens(pipe.transformer) as seen:
            generate(pipe, 2, guidance=4.5, size=32)
        merged = n - int(n * 0.5)
        assert seen.count(merged) == 4 * 2 and seen.count(n) == 4 * 2  # middle half of 8
        tomesd.remove_patch(pipe)
        assert no_hooks(pipe.transformer)


@pytest.mark.slow  # a tiny AnimateDiff generation
def test_animatediff_documented_call_merges_spatial_attention_only() -> None:
    pipe = tiny.tiny_animatediff()
    tomesd.apply_patch(pipe, ratio=0.5)
    with attention_tokens(pipe.unet) as seen, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # diffusers' own deprecation notes
        generate(pipe, 2, num_frames=2)
    assert seen.count(N // 2) == 3 * 2  # three full-resolution spatial blocks, two steps
    tomesd.remove_patch(pipe)
    assert no_hooks(pipe.unet)


def test_sd3_and_flux_transformers_merge_with_the_tomesd_call() -> None:
    from tests.tomerge.test_dit import (
        H,
        W,
        _flux,
        _flux_latents,
        _sample_flux,
        _sample_sd3,
        _sd3,
        _sd3_latents,
    )

    n = H * W
    sd3 = _sd3()
    tomesd.apply_patch(sd3, 0.5)
    with attention_tokens(sd3) as seen:
        _sample_sd3(sd3, _sd3_latents(), steps=2)
    assert seen and set(seen) == {n - int(n * 0.5)}
    tomesd.remove_patch(sd3)
    flux = _flux()
    tomesd.apply_patch(model=flux, ratio=0.5)
    # guidance-distilled: no CFG batch, so importance="cfg" (the default) says why it
    # falls back to the grid, and the tokens are still merged
    with (
        pytest.warns(UserWarning, match="needs classifier-free guidance"),
        attention_tokens(flux) as seen,
    ):
        _sample_flux(flux, _flux_latents(), steps=3)
    assert seen and max(seen) < n  # single blocks: text + merged image tokens
    tomesd.remove_patch(flux)
    assert no_hooks(flux)


def _tiny_svd_unet():
    from diffusers import UNetSpatioTemporalConditionModel

    torch.manual_seed(0)
    return UNetSpatioTemporalConditionModel(
        sample_size=SIZE,
        in_channels=8,  # 4 noisy latents + 4 image latents, as SVD
        out_channels=4,
        down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
        up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
        block_out_channels=(32, 64),
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=24,
        layers_per_block=1,
        cross_attention_dim=16,
        num_attention_heads=(2, 4),
        num_frames=3,
    ).eval()


@pytest.mark.slow  # three steps of a tiny video UNet
@torch.no_grad()
def test_stable_video_diffusion_cfg_batch_is_recognised() -> None:
    """SVD's batch is [uncond; cond] with the image latents (zeros for uncond) concatenated
    into the channels of a (B, F, C, H, W) input: still a CFG pair, and the map is per frame."""
    unet = _tiny_svd_unet()
    frames = 3
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, frames, 4, SIZE, SIZE, generator=gen)
    image = torch.randn(1, frames, 4, SIZE, SIZE, generator=gen)
    tomesd.apply_patch(unet, 0.5, prune_steps=1, importance_start=1)
    merger = tomesd.get_merger(unet)
    outs = []
    with warnings.catch_warnings(), attention_tokens(unet) as seen:
        warnings.filterwarnings("error", "tomerge")  # no "needs classifier-free guidance"
        for t in (1.0, 0.5, 0.2):  # the pipeline's layout, step by step
            noisy = torch.cat([latents] * 2)
            x = torch.cat([noisy, torch.cat([torch.zeros_like(image), image])], dim=2)
            assert not torch.equal(x[:1], x[1:])  # the halves differ (image latents)
            outs.append(
                unet(
                    x,
                    torch.tensor(t),
                    encoder_hidden_states=torch.randn(2, 1, 16, generator=gen),
                    added_time_ids=torch.randn(2, 3, generator=gen),
                ).sample
            )
            latents = latents - 0.3 * outs[-1][1:]
            assert merger.step.cfg
    assert merger.stats["partitions"] == {"importance": 2, "grid": 0, "grid_prune": 1}
    assert seen.count(N // 2) == 3 * 3  # three full-resolution spatial blocks merged per step
    uncond, cond = outs[-1].chunk(2)  # (1, F, C, H, W): one map per frame, frames in order
    assert torch.allclose(merger.importance, (cond - uncond).abs().mean(dim=2)[0])
    temporal = [m for n, m in unet.named_modules() if "temporal_transformer_blocks" in n]
    assert temporal and all(not m._forward_pre_hooks for m in temporal)
    tomesd.remove_patch(unet)
    assert no_hooks(unet)


def test_importance_option_reaches_apply_patch(monkeypatch) -> None:
    assert api.IMPORTANCE == dit.IMPORTANCE
    for cls in (api.GenerateOptions, api.BenchmarkOptions, api.EvaluateOptions):
        cfg = cls(pipeline="p", importance="step-delta", **_required(cls))
        assert api.merge_options(cfg)["importance"] == "step-delta"
        assert cls(pipeline="p", **_required(cls)).importance == "cfg"  # the paper's default
    seen = {}
    monkeypatch.setattr(tomesd, "apply_patch", lambda pipe, **kw: seen.update(kw))
    monkeypatch.setattr(tomesd, "remove_patch", lambda pipe: pipe)
    from tomerge_cli.pipelines import patch

    patch(object(), "importance", 0.5, importance="auto", max_downsample=1)
    assert seen["importance"] == "auto"


def _required(cls) -> dict:
    return {"reference": "refs"} if cls is api.EvaluateOptions else {}


def test_importance_flag_is_on_each_command(tmp_path) -> None:
    from tests.helpers import run_cli

    for command in ("generate", "benchmark", "evaluate"):
        res = run_cli("tomerge", command, "--help")
        assert res.code == 0 and "--importance" in res.stdout, command
    out = tmp_path / "bad"
    res = run_cli("tomerge", "generate", "-p", "x", "--prompt", "a", "-o", out, "--importance", "y")
    assert res.code == 2 and "--importance: 'y' is not one of cfg, step-delta, auto" in res.stderr
    assert not out.exists()
