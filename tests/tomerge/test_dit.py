"""Token merging in diffusion transformers (SD3, Flux) and step-delta importance, on tiny
transformers built from configs and called directly as a sampler would, or through
diffusers' Flux / SD3 pipelines without text encoders or VAE (embeddings in, latents out)."""

from __future__ import annotations

import warnings

import pytest
import torch

import tomerge_cli
from tests.tomerge.conftest import generate, no_hooks
from tomerge_cli import dit
from tomerge_cli.merge import Merge, importance_map

H = W = 4  # token grid (Flux: packed tokens; SD3: 8x8 latent, patch 2)
N = H * W
TEXT = 3


def _sd3(dual: bool = False):
    """SD3-shaped; dual=True: SD3.5-medium shaped (a second, image-only attention)."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    return SD3Transformer2DModel(
        dual_attention_layers=(0,) if dual else (),
        qk_norm="rms_norm" if dual else None,
        sample_size=8,
        patch_size=2,
        in_channels=4,
        num_layers=2,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        caption_projection_dim=16,
        pooled_projection_dim=16,
        out_channels=4,
    ).eval()


def _flux(layers: int = 1, single: int = 1):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    return FluxTransformer2DModel(
        in_channels=16,
        num_layers=layers,
        num_single_layers=single,
        attention_head_dim=8,
        num_attention_heads=2,
        joint_attention_dim=16,
        pooled_projection_dim=16,
        guidance_embeds=True,  # Flux-dev shaped: guidance-distilled, no CFG batch
        axes_dims_rope=(2, 2, 4),
    ).eval()


def _img_ids(h: int = H, w: int = W) -> torch.Tensor:
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([torch.zeros_like(ys), ys, xs], -1).reshape(-1, 3).float()


TIMES = (1.0, 0.75, 0.5, 0.25)


@torch.no_grad()
def _sample_flux(model, latents: torch.Tensor, steps: int = 4) -> list[torch.Tensor]:
    """Euler flow-matching loop, batch without a CFG pair (guidance embedded)."""
    torch.manual_seed(1)
    b = latents.shape[0]
    ctx, pooled = torch.randn(1, TEXT, 16).expand(b, -1, -1), torch.randn(1, 16).expand(b, -1)
    x, outs = latents, []
    for t in TIMES[:steps]:
        v = model(
            hidden_states=x,
            encoder_hidden_states=ctx,
            pooled_projections=pooled,
            timestep=torch.full((b,), t),
            img_ids=_img_ids(),
            txt_ids=torch.zeros(TEXT, 3),
            guidance=torch.full((b,), 3.5),
        ).sample
        outs.append(v)
        x = x - 0.25 * v
    return outs


@torch.no_grad()
def _sample_sd3(model, latents: torch.Tensor, steps: int = 3) -> list[torch.Tensor]:
    """Euler loop with a CFG batch [uncond; cond] (the SD3 pipeline's layout)."""
    torch.manual_seed(1)
    ctx, pooled = torch.randn(2, TEXT, 16), torch.randn(2, 16)
    x, outs = latents, []
    for t in (900.0, 600.0, 300.0)[:steps]:
        v = model(
            hidden_states=torch.cat([x, x]),
            encoder_hidden_states=ctx,
            pooled_projections=pooled,
            timestep=torch.full((2,), t),
        ).sample
        uncond, cond = v.chunk(2)
        outs.append(v)
        x = x - 0.3 * (uncond + 4.0 * (cond - uncond))
    return outs


def _flux_latents(b: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, N, 16, generator=torch.Generator().manual_seed(seed))


def _sd3_latents(seed: int = 0) -> torch.Tensor:
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


def _argument(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def test_sd3_merges_image_tokens_only_and_leaves_the_text_input_alone() -> None:
    model = _sd3()
    blocks = model.transformer_blocks
    seen: list[tuple[int, int, int, torch.Tensor]] = []

    def record(m, args, kwargs):
        i = 0 if m is blocks[0].attn else 1
        hs, ctx = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
        seen.append((i, hs.shape[1], ctx.shape[1], ctx.clone()))

    base_ctx: list[torch.Tensor] = []
    handle = blocks[0].attn.register_forward_pre_hook(
        lambda m, a, k: base_ctx.append(k["encoder_hidden_states"].clone()), with_kwargs=True
    )
    base = _sample_sd3(model, _sd3_latents())
    handle.remove()

    tomerge_cli.apply_patch(model, ratio=0.5, importance="auto")
    for block in blocks:  # registered after the patch: sees the merged input
        block.attn.register_forward_pre_hook(record, with_kwargs=True)
    out = _sample_sd3(model, _sd3_latents())
    merger = tomerge_cli.get_merger(model)
    assert isinstance(merger, dit.DiTTokenMerger) and merger.blocks == list(blocks)
    assert {s[1] for s in seen} == {N - int(N * 0.5)}  # image tokens merged in every block
    assert {s[2] for s in seen} == {TEXT}  # text tokens never merged
    first = [s[3] for s in seen if s[0] == 0]
    assert all(
        torch.equal(a, b) for a, b in zip(first, base_ctx, strict=True)
    )  # the context path as is
    assert merger.stats["partitions"] == {"importance": 1, "grid": 0, "grid_prune": 2}
    # auto on a CFG batch: the paper's map |eps_cond - eps_uncond| of the last step
    assert torch.equal(merger.importance, importance_map(out[-1], 4))
    assert not torch.equal(torch.stack(out), torch.stack(base))


def test_flux_merges_image_tokens_and_their_rotary_rows_in_both_block_kinds() -> None:
    model = _flux()
    rows: dict[str, list] = {"double": [], "single": []}
    base_cos = model.pos_embed(torch.cat([torch.zeros(TEXT, 3), _img_ids()]))[0]
    tomerge_cli.apply_patch(model, ratio=0.5, importance="step-delta")
    for kind, block in (
        ("double", model.transformer_blocks[0]),
        ("single", model.single_transformer_blocks[0]),
    ):
        block.attn.register_forward_pre_hook(
            lambda m, a, k, kind=kind: rows[kind].append(
                (k["hidden_states"].shape[1], k["image_rotary_emb"][0])
            ),
            with_kwargs=True,
        )
    _sample_flux(model, _flux_latents(), steps=2)
    kept = N - int(N * 0.5)
    assert [n for n, _ in rows["double"]] == [kept] * 2  # image stream only
    assert [n for n, _ in rows["single"]] == [TEXT + kept] * 2  # text + merged image
    for _, cos in rows["double"] + rows["single"]:
        assert cos.shape[0] == TEXT + kept
        assert torch.equal(cos[:TEXT], base_cos[:TEXT])  # text rows untouched
    assert tomerge_cli.get_merger(model).stats["merged_calls"] == 2 * 2


def _keeping(kept: torch.Tensor, n: int) -> Merge:
    """A Merge that keeps `kept` (B, k) of n tokens per image (its indices flat over B * n)."""
    b = kept.shape[0]
    flat = kept + torch.arange(b)[:, None] * n
    none = torch.zeros(b, 0, dtype=torch.long)
    return Merge(flat, none, none, torch.zeros(b, n, dtype=torch.long), False)


def test_merge_rotary_gives_each_kept_token_its_own_row() -> None:
    table = torch.arange(2 + 6, dtype=torch.float)[:, None].repeat(1, 4)  # row i holds i
    merge = _keeping(torch.tensor([[4, 0, 2]]), 6)
    assert merge.kept.tolist() == [[4, 0, 2]]
    cos, sin = dit.merge_rotary((table, table + 100), merge, text=2)
    assert cos[:, 0].tolist() == [0, 1, 6, 2, 4] and torch.equal(sin, cos + 100)
    merge = _keeping(torch.tensor([[4, 0, 2], [1, 3, 5]]), 6)  # a batch: rows per image
    assert merge.kept.tolist() == [[4, 0, 2], [1, 3, 5]]
    per_image = dit.merge_rotary(table, merge, text=2)
    assert per_image.shape == (2, 5, 4)
    assert per_image[0, :, 0].tolist() == [0, 1, 6, 2, 4]
    assert per_image[1, :, 0].tolist() == [0, 1, 3, 5, 7]


def _cell_duplicates(b: int, dim: int) -> torch.Tensor:
    """(b, N, dim) tokens equal within each 2x2 cell, distinct across cells."""
    cells = torch.randn(b, H // 2, W // 2, dim, generator=torch.Generator().manual_seed(5))
    return cells.repeat_interleave(2, 1).repeat_interleave(2, 2).reshape(b, N, dim)


@pytest.mark.parametrize("merge_mlp", [False, True])
def test_merging_identical_tokens_with_identical_positions_changes_nothing(
    merge_mlp: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Duplicate tokens in each 2x2 cell, whose rotary rows are also identical: ratio 0.75
    merges each cell into one token at that position, so attention (no text tokens: the
    softmax then has the same weight per distinct key) and MLP give the unmerged output."""
    model = _flux()
    dim = model.inner_dim
    double, single = model.transformer_blocks[0], model.single_transformer_blocks[0]
    x = _cell_duplicates(1, dim)
    text = torch.zeros(1, 0, dim)
    temb = torch.randn(1, dim, generator=torch.Generator().manual_seed(6))
    ys, xs = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    cell_ids = torch.stack([torch.zeros_like(ys), ys // 2 * 2, xs // 2 * 2], -1).reshape(-1, 3)
    rotary = model.pos_embed(cell_ids.float())

    def blocks() -> list[torch.Tensor]:
        with torch.no_grad():
            return [
                blk(
                    hidden_states=x, encoder_hidden_states=text, temb=temb, image_rotary_emb=rotary
                )[1]
                for blk in (double, single)
            ]

    base = blocks()
    tomerge_cli.apply_patch(
        model, ratio=0.75, mode="tome", prune_steps=0, use_rand=False, merge_mlp=merge_mlp
    )
    _sample_flux(model, _flux_latents(), steps=1)  # sets the step's grid and partition
    seen: list[int] = []
    for blk in (double, single):
        blk.attn.register_forward_pre_hook(
            lambda m, a, k: seen.append(k["hidden_states"].shape[1]), with_kwargs=True
        )
    merged = blocks()
    assert seen == [N // 4, N // 4]  # one token per cell entered attention
    for got, want in zip(merged, base, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # control: rotary rows that do not follow the kept tokens break it
    monkeypatch.setattr(
        dit, "merge_rotary", lambda emb, merge, t: tuple(e[: t + merge.n_kept] for e in emb)
    )
    wrong = blocks()
    assert not torch.allclose(wrong[0], base[0], atol=1e-3)


@pytest.mark.parametrize("family", ["sd3", "sd3.5", "flux"])
def test_ratio_zero_and_remove_patch_are_bit_identical(family: str) -> None:
    model = _flux() if family == "flux" else _sd3(dual=family == "sd3.5")
    sample = _sample_flux if family == "flux" else _sample_sd3
    latents = _flux_latents(b=2) if family == "flux" else _sd3_latents()
    base = torch.stack(sample(model, latents))
    tomerge_cli.apply_patch(model, ratio=0.0, importance="auto")
    assert torch.equal(torch.stack(sample(model, latents)), base)
    tomerge_cli.apply_patch(model, ratio=0.5, importance="auto", merge_mlp=True)
    seen: list[int] = []
    handles = [  # every attention and MLP
        module.register_forward_pre_hook(
            lambda m, a, k: seen.append(_argument(a, k).shape[1]), with_kwargs=True
        )
        for module in model.modules()
        if type(module).__name__ in ("FeedForward", "Attention", "FluxAttention")
    ]
    merged = torch.stack(sample(model, latents))
    for handle in handles:
        handle.remove()
    assert not torch.equal(merged, base)
    stats = tomerge_cli.get_merger(model).stats
    assert stats["merged_calls"] > 0 and stats["tokens_kept"] * 2 == stats["tokens_in"]
    assert N not in seen  # no layer saw the full image token count (text-only ones: TEXT)
    if family == "sd3.5":
        assert model.transformer_blocks[0].attn2 is not None
    tomerge_cli.remove_patch(model)
    assert torch.equal(torch.stack(sample(model, latents)), base)
    assert no_hooks(model)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_same_seed_gives_the_same_output(family: str) -> None:
    model = _sd3() if family == "sd3" else _flux()
    sample = _sample_sd3 if family == "sd3" else _sample_flux

    def latents(seed: int) -> torch.Tensor:
        return _sd3_latents(seed) if family == "sd3" else _flux_latents(b=2, seed=seed)

    tomerge_cli.apply_patch(model, ratio=0.5, importance="auto", importance_start=1)
    a, b = sample(model, latents(3)), sample(model, latents(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    first = tomerge_cli.get_merger(model).generator.initial_seed()
    sample(model, latents(4))
    assert tomerge_cli.get_merger(model).generator.initial_seed() != first


def test_images_of_a_batch_are_merged_as_if_alone() -> None:
    """Different images keep different tokens: each gets its own rotary rows (no random
    draw here, so that a batch and a single image choose alike)."""
    model = _flux()
    tomerge_cli.apply_patch(
        model, ratio=0.5, importance="step-delta", use_rand=False, dst_choice="topk"
    )
    lat = _flux_latents(b=2)
    both = torch.stack(_sample_flux(model, lat, steps=3))  # step 2: importance partition
    assert tomerge_cli.get_merger(model).stats["partitions"]["importance"] == 1
    for i in range(2):
        alone = torch.stack(_sample_flux(model, lat[i : i + 1], steps=3))
        torch.testing.assert_close(both[:, i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_step_delta_importance_without_a_cfg_pair() -> None:
    """Flux-dev shaped (guidance embedded, batch 1): from step 2 the partition comes from
    |eps_t - eps_{t-1}|; the same run with importance='cfg' has no map and stays on the grid."""
    model = _flux()
    lat = _flux_latents()
    tomerge_cli.apply_patch(model, ratio=0.5, importance="cfg")
    with pytest.warns(UserWarning, match="step-delta"):
        grid = _sample_flux(model, lat)
    assert tomerge_cli.get_merger(model).stats["partitions"]["importance"] == 0

    tomerge_cli.apply_patch(model, ratio=0.5, importance="auto")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "needs CFG" warning with step-delta
        delta = _sample_flux(model, lat)
    merger = tomerge_cli.get_merger(model)
    assert merger.stats["partitions"] == {"importance": 2, "grid": 0, "grid_prune": 2}
    assert all(
        torch.equal(a, b) for a, b in zip(delta[:2], grid[:2], strict=True)
    )  # steps 0-1: grid
    assert not torch.equal(delta[2], grid[2]) and not torch.equal(delta[3], grid[3])
    want = (delta[3] - delta[2]).abs().mean(-1).view(1, H, W)  # per token, channels averaged
    torch.testing.assert_close(merger.importance, want)

    tomerge_cli.apply_patch(model, ratio=0.5, importance="cfg", no_cfg="error")
    with pytest.raises(ValueError, match="step-delta"):
        _sample_flux(model, lat)


def test_step_delta_map_matches_its_definition() -> None:
    prev, eps = torch.zeros(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.equal(dit.step_delta_map(eps, prev), eps.abs().mean(1))
    learned_sigma = torch.cat([eps, 100 * torch.ones(2, 3, 4, 4)], 1)
    assert torch.equal(
        dit.step_delta_map(learned_sigma, torch.zeros(2, 6, 4, 4), 3), eps.abs().mean(1)
    )
    video = torch.randn(1, 3, 5, 4, 4)
    assert dit.step_delta_map(video, torch.zeros_like(video)).shape == (5, 4, 4)


def test_bad_importance_is_refused() -> None:
    model = _sd3()
    with pytest.raises(ValueError, match="importance must be one of cfg, step-delta, auto"):
        tomerge_cli.apply_patch(model, importance="bogus")
    assert tomerge_cli.get_merger(model) is None and no_hooks(model)


def test_an_unsupported_transformer_block_is_named() -> None:
    from diffusers import LTXVideoTransformer3DModel

    from shared.errors import InputError
    from tomerge_cli import api

    model = LTXVideoTransformer3DModel(
        in_channels=4,
        out_channels=4,
        patch_size=1,
        patch_size_t=1,
        num_attention_heads=2,
        attention_head_dim=8,
        cross_attention_dim=16,
        num_layers=1,
        caption_channels=16,
    )
    families = "LTXVideoTransformerBlock.*FluxSingleTransformerBlock.*Wan.*Sana"
    with pytest.raises(ValueError, match=families):
        tomerge_cli.apply_patch(model)
    assert no_hooks(model)
    # the commands turn it into bad input (exit 2, one line)
    with pytest.raises(InputError, match=families) as err:
        api.apply_method(type("Pipe", (), {"transformer": model})(), "importance", 0.5, {})
    assert "\n" not in str(err.value)


@pytest.mark.slow  # a whole (tiny) pipeline
def test_unet_pipelines_take_step_delta_importance_without_cfg() -> None:
    """A turbo / LCM-like run (guidance 1, no CFG batch) on a UNet: importance from step 2."""
    from tomerge_cli import tiny

    pipe = tiny.tiny_sd()
    tomerge_cli.apply_patch(pipe, ratio=0.5, importance="auto", prune_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = generate(pipe, 3, guidance=1.0, seed=0, negative_prompt_embeds=None)
    merger = tomerge_cli.get_merger(pipe)
    assert isinstance(merger, dit.ImportanceTokenMerger)
    assert merger.stats["partitions"] == {"importance": 1, "grid": 1, "grid_prune": 1}
    assert merger.importance.shape == (1, 16, 16) and torch.isfinite(out).all()


# -- several calls per step (Flux with true_cfg_scale > 1, SD3 skip-layer guidance) -----


def _bare_pipeline(cls, model):
    """A diffusers pipeline of class `cls` around the transformer `model`, every other
    required component (VAE, text encoders, tokenizers) None: embeddings in, latents out."""
    import inspect

    from diffusers import FlowMatchEulerDiscreteScheduler

    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    parts = {p.name: None for p in params if p.default is inspect.Parameter.empty}
    pipe = cls(**{**parts, "scheduler": FlowMatchEulerDiscreteScheduler(), "transformer": model})
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _flux_pipeline(model):
    """A FluxPipeline around `model`: 64x64 pixels are a 4x4 grid of packed tokens."""
    from diffusers import FluxPipeline

    return _bare_pipeline(FluxPipeline, model)


def _embeds(negative: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    kw = {"prompt_embeds": torch.randn(1, TEXT, 16, generator=g)}
    kw["pooled_prompt_embeds"] = torch.randn(1, 16, generator=g)
    if negative:  # true CFG: a second transformer call per step
        kw["negative_prompt_embeds"] = torch.randn(1, TEXT, 16, generator=g)
        kw["negative_pooled_prompt_embeds"] = torch.randn(1, 16, generator=g)
    return kw


def _run_pipeline(pipe, true_cfg: bool, steps: int = 4) -> torch.Tensor:
    return pipe(
        **_embeds(negative=true_cfg),
        true_cfg_scale=4.0 if true_cfg else 1.0,
        height=16 * H,  # 16 pixels a token: VAE factor 8 (no VAE) x 2 (packing)
        width=16 * W,
        num_inference_steps=steps,
        output_type="latent",
        generator=torch.Generator().manual_seed(1),
    ).images


def _outputs(model) -> list[torch.Tensor]:
    """The transformer's prediction of every call from now on (a hook after the patch's)."""
    outs: list[torch.Tensor] = []
    model.register_forward_hook(
        lambda m, a, out: outs.append((out[0] if isinstance(out, tuple) else out.sample).clone())
    )
    return outs


def _cfg_map(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| per packed token, channels averaged, on the (1, H, W) token grid."""
    return (a - b).abs().mean(-1).view(1, H, W)


@torch.no_grad()
def _sample_flux_true_cfg(model, latents: torch.Tensor, steps: int = 4) -> list[torch.Tensor]:
    """FluxPipeline's loop with true_cfg_scale > 1: a conditional then an unconditional
    call per step, on the same latents at the same timestep; returns [cond, uncond, ...]."""
    g = torch.Generator().manual_seed(1)
    cond, uncond = (torch.randn(1, TEXT, 16, generator=g) for _ in range(2))
    pooled = torch.randn(1, 16, generator=g)
    x, outs = latents, []
    for t in TIMES[:steps]:
        c, u = (
            model(
                hidden_states=x,
                encoder_hidden_states=ctx,
                pooled_projections=pooled,
                timestep=torch.full((1,), t),
                img_ids=_img_ids(),
                txt_ids=torch.zeros(TEXT, 3),
                guidance=torch.full((1,), 3.5),
            ).sample
            for ctx in (cond, uncond)
        )
        outs += [c, u]
        x = x - 0.25 * (u + 4.0 * (c - u))
    return outs


def test_flux_true_cfg_counts_one_step_per_pair_of_calls() -> None:
    """FluxPipeline with a negative prompt and true_cfg_scale > 1 calls the transformer
    twice per step: the step counter, the partition and the prune / importance schedule
    advance once per step, and both calls merge with the step's one partition."""
    model = _flux()
    pipe = _flux_pipeline(model)
    # on the transformer: a patched FluxPipeline fails (test_a_patched_flux_pipeline_runs)
    tomerge_cli.apply_patch(pipe.transformer, ratio=0.5, importance="auto")
    merger = tomerge_cli.get_merger(model)
    steps: list[int] = []
    kept: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda m, a: steps.append(merger.step.index))
    model.transformer_blocks[0].attn.register_forward_pre_hook(
        lambda m, a, k: kept.append(k["image_rotary_emb"][0][TEXT:].clone()), with_kwargs=True
    )
    _run_pipeline(pipe, true_cfg=True)
    assert steps == [0, 0, 1, 1, 2, 2, 3, 3]
    assert merger.stats["partitions"] == {"importance": 2, "grid": 0, "grid_prune": 2}
    assert merger.stats["merged_calls"] == 8 * 2  # calls x blocks
    for cond, uncond in zip(kept[::2], kept[1::2], strict=True):  # same kept positions
        assert torch.equal(cond, uncond)


@pytest.mark.parametrize("importance", ["auto", "cfg", "step-delta"])
def test_flux_true_cfg_importance_is_the_cfg_map_of_the_two_calls(
    importance: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With "auto" and "cfg" the partition of step k comes from |eps_cond - eps_uncond| of
    step k - 1 (the paper's map, here from the two calls); "step-delta" ignores the second
    call and compares the conditional predictions of two steps."""
    import tomerge_cli.patch as patch

    used: list[torch.Tensor] = []
    resize = patch.resize_importance
    monkeypatch.setattr(
        patch, "resize_importance", lambda imp, h, w: used.append(imp.clone()) or resize(imp, h, w)
    )
    model = _flux()
    tomerge_cli.apply_patch(model, ratio=0.5, importance=importance, no_cfg="error")
    outs = _sample_flux_true_cfg(model, _flux_latents())
    cond, uncond = outs[::2], outs[1::2]
    if importance == "step-delta":
        want = [_cfg_map(cond[k], cond[k - 1]) for k in (1, 2)]
    else:
        want = [_cfg_map(cond[k], uncond[k]) for k in (1, 2)]
    assert len(used) == 2  # one importance partition per step, at steps 2 and 3
    for got, expected in zip(used, want, strict=True):
        torch.testing.assert_close(got, expected)


def test_flux_true_cfg_ratio_zero_and_remove_patch_are_bit_identical() -> None:
    model = _flux()
    lat = _flux_latents()
    base = torch.stack(_sample_flux_true_cfg(model, lat))
    tomerge_cli.apply_patch(model, ratio=0.0, importance="auto")
    assert torch.equal(torch.stack(_sample_flux_true_cfg(model, lat)), base)
    tomerge_cli.apply_patch(model, ratio=0.5, importance="auto", merge_mlp=True)
    merged = torch.stack(_sample_flux_true_cfg(model, lat))
    assert not torch.equal(merged, base)
    assert tomerge_cli.get_merger(model).stats["partitions"]["importance"] == 2
    tomerge_cli.remove_patch(model)
    assert torch.equal(torch.stack(_sample_flux_true_cfg(model, lat)), base)
    assert no_hooks(model)


def test_guidance_distilled_flux_after_a_true_cfg_run_uses_step_delta() -> None:
    """One call per step (Flux-dev without a negative prompt), with the same patch that
    just ran true CFG: importance="auto" takes |eps_t - eps_{t-1}| again."""
    model = _flux()
    pipe = _flux_pipeline(model)
    tomerge_cli.apply_patch(pipe.transformer, ratio=0.5, importance="auto")
    merger = tomerge_cli.get_merger(model)
    _run_pipeline(pipe, true_cfg=True)
    outs = _outputs(model)
    _run_pipeline(pipe, true_cfg=False)
    assert len(outs) == 4 and merger.step.index == 3
    torch.testing.assert_close(merger.importance, _cfg_map(outs[3], outs[2]))
    assert merger.stats["partitions"] == {"importance": 4, "grid": 0, "grid_prune": 4}


@pytest.mark.parametrize("again", ["other latents", "the same call"])
def test_a_second_call_at_a_timestep_without_cfg_is_a_step_of_its_own(again: str) -> None:
    """CFG's second pass is the same latents with other conditioning. A call on other
    latents (a second-order sampler's correction) or the same call again (a timing loop)
    at that timestep gets its own step."""
    model = _flux()
    g = torch.Generator().manual_seed(1)
    cond, uncond = (torch.randn(1, TEXT, 16, generator=g) for _ in range(2))
    lat = _flux_latents()

    @torch.no_grad()
    def call(x: torch.Tensor, ctx: torch.Tensor) -> None:
        model(
            hidden_states=x,
            encoder_hidden_states=ctx,
            pooled_projections=torch.zeros(1, 16),
            timestep=torch.full((1,), TIMES[0]),
            img_ids=_img_ids(),
            txt_ids=torch.zeros(TEXT, 3),
            guidance=torch.full((1,), 3.5),
        )

    tomerge_cli.apply_patch(model, ratio=0.5, importance="auto")
    call(lat, cond)
    if again == "other latents":
        call(lat + 0.1, uncond)
    else:
        call(lat, cond)
    merger = tomerge_cli.get_merger(model)
    assert merger.step.index == 1 and not merger.second_pass
    tomerge_cli.apply_patch(model, ratio=0.5, importance="auto")  # control: true CFG
    call(lat, cond)
    call(lat, uncond)
    merger = tomerge_cli.get_merger(model)
    assert merger.step.index == 0 and merger.second_pass


@pytest.mark.parametrize("true_cfg", [True, False], ids=["true-cfg", "distilled"])
def test_a_patched_flux_pipeline_runs_merges_and_is_deterministic(true_cfg: bool) -> None:
    """The whole pipeline patched (as `tomerge generate` does): FluxPipeline checks
    set_timesteps' signature for `sigmas`, which the patch's wrapper must keep."""
    pipe = _flux_pipeline(_flux())
    plain = _run_pipeline(pipe, true_cfg=true_cfg)
    tomerge_cli.apply_patch(pipe, ratio=0.5, importance="auto")
    merged = _run_pipeline(pipe, true_cfg=true_cfg)
    assert not torch.equal(merged, plain)
    assert torch.equal(_run_pipeline(pipe, true_cfg=true_cfg), merged)
    tomerge_cli.remove_patch(pipe)
    assert torch.equal(_run_pipeline(pipe, true_cfg=true_cfg), plain)


def test_sd3_skip_layer_guidance_calls_belong_to_their_step() -> None:
    """SD3's pipeline with skip_guidance_layers calls the transformer a second time per
    step on the conditional half of the CFG batch: no step of its own, and the map stays
    |eps_cond - eps_uncond| of the CFG batch (importance='cfg' finds one at every step)."""
    from diffusers import StableDiffusion3Pipeline

    model = _sd3(dual=True)
    # latents out; 64x64 pixels are an 8x8 latent, a 4x4 token grid
    pipe = _bare_pipeline(StableDiffusion3Pipeline, model)
    g = torch.Generator().manual_seed(2)
    embeds = {
        name: torch.randn(1, *shape, generator=g)
        for name, shape in (
            ("prompt_embeds", (TEXT, 16)),
            ("negative_prompt_embeds", (TEXT, 16)),
            ("pooled_prompt_embeds", (16,)),
            ("negative_pooled_prompt_embeds", (16,)),
        )
    }
    tomerge_cli.apply_patch(pipe, ratio=0.5, importance="cfg", no_cfg="error")
    merger = tomerge_cli.get_merger(pipe)
    calls: list[tuple[int, int]] = []
    model.register_forward_pre_hook(
        lambda m, a, k: calls.append((k["hidden_states"].shape[0], merger.step.index)),
        with_kwargs=True,
    )
    outs = _outputs(model)
    pipe(
        **embeds,
        height=64,
        width=64,
        num_inference_steps=4,
        guidance_scale=4.0,
        skip_guidance_layers=[1],
        skip_layer_guidance_start=0.0,  # from step 1 on
        skip_layer_guidance_stop=1.0,
        output_type="latent",
    )
    assert calls == [(2, 0), (2, 1), (1, 1), (2, 2), (1, 2), (2, 3), (1, 3)]
    assert merger.stats["partitions"]["importance"] == 2 + 2  # steps 2, 3: CFG and SLG calls
    torch.testing.assert_close(merger.importance, importance_map(outs[-2], 4))


def _host_syncs(model, latents: torch.Tensor) -> int:
    """Ops that read a tensor's value back to the host (a sync on a GPU) in one call."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        _sample_flux(model, latents, steps=1)
    wanted = {"aten::item", "aten::equal", "aten::_local_scalar_dense", "aten::nonzero"}
    return sum(e.name in wanted for e in prof.events())


def test_flux_host_syncs_per_call_do_not_grow_with_the_merged_blocks() -> None:
    """A batch of two images: each merged block takes per-image rotary rows without reading
    back whether the images kept the same tokens, so a call's host syncs are the step's
    own, whatever the number of merged blocks."""
    latents = torch.cat([_flux_latents(seed=0), _flux_latents(seed=1)])
    syncs = []
    for layers in (1, 2):
        model = _flux(layers=layers, single=layers)
        every = list(range(2 * layers))
        tomerge_cli.apply_patch(
            model, ratio=0.5, mode="tome", prune_steps=0, blocks=every, skip_unprofitable=False
        )
        _host_syncs(model, latents)  # the first call sets up the step's grid
        syncs.append(_host_syncs(model, latents))
        assert tomerge_cli.get_merger(model).stats["merged_calls"] == 2 * 2 * layers
    assert syncs[0] == syncs[1]
