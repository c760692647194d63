"""Token merging in diffusion transformers (SD3, Flux) and step-delta importance, on tiny
transformers built from configs and called directly as a sampler would."""

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


def test_merge_rotary_gives_each_kept_token_its_own_row() -> None:
    table = torch.arange(2 + 6, dtype=torch.float)[:, None].repeat(1, 4)  # row i holds i
    kept = torch.tensor([[4, 0, 2], [4, 0, 2]])
    merge = Merge(
        kept,
        torch.tensor([[1, 3, 5]] * 2),
        torch.zeros(2, 3).long(),
        torch.zeros(2, 6).long(),
        False,
    )
    cos, sin = dit.merge_rotary((table, table + 100), merge, text=2)
    assert cos[:, 0].tolist() == [0, 1, 6, 2, 4] and torch.equal(sin, cos + 100)
    merge.kept = torch.tensor([[4, 0, 2], [1, 3, 5]])  # images kept different tokens
    per_image = dit.merge_rotary(table, merge, text=2)
    assert per_image.shape == (2, 5, 4)
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
