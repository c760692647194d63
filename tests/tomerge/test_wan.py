"""Token merging in Wan 2.x (video, 3D rotary) and Sana (linear attention) transformers,
built from configs and called directly as their pipelines do."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import tomerge_cli
from tests.tomerge.conftest import generate, no_hooks
from tomerge_cli import dit, tiny

FRAMES, H, W = 2, 4, 4  # latent frames and token grid of the Wan calls (latent 8x8, patch 2)
N = H * W


def _wan_latents(seed: int = 0, frames: int = FRAMES) -> torch.Tensor:
    return torch.randn(1, 16, frames, 2 * H, 2 * W, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _sample_wan(model, latents: torch.Tensor, steps: int = 3) -> list[torch.Tensor]:
    """Euler flow matching with CFG as Wan's pipeline runs it: a conditional and an
    unconditional call per step, with the same timestep."""
    g = torch.Generator().manual_seed(1)
    cond, uncond = (torch.randn(1, 3, tiny.EMBED, generator=g) for _ in range(2))
    x, outs = latents, []
    for t in (900.0, 600.0, 300.0)[:steps]:
        ts = torch.full((1,), t)
        c = model(hidden_states=x, timestep=ts, encoder_hidden_states=cond).sample
        u = model(hidden_states=x, timestep=ts, encoder_hidden_states=uncond).sample
        outs += [c, u]
        x = x - 0.3 * (u + 4.0 * (c - u))
    return outs


def _count_tokens(model) -> tuple[list[int], list]:
    seen: list[int] = []
    handles = [
        block.attn1.register_forward_pre_hook(
            lambda m, a, k: seen.append((a[0] if a else k["hidden_states"]).shape[1]),
            with_kwargs=True,
        )
        for block in dit.dit_blocks(model)
    ]
    return seen, handles


@pytest.mark.parametrize("window", [1, 2])
def test_wan_merges_image_tokens_per_frame_or_frame_group(window: int) -> None:
    model = tiny.tiny_wan_transformer().eval()
    tomerge_cli.apply_patch(model, ratio=0.5, importance="auto", frame_window=window)
    seen, _ = _count_tokens(model)
    _sample_wan(model, _wan_latents())
    kept = FRAMES * N - FRAMES * int(N * 0.5)  # the same count either way at this ratio
    assert seen == [kept] * (3 * 2 * 2)  # steps x passes x blocks
    merger = tomerge_cli.get_merger(model)
    assert isinstance(merger, dit.WanTokenMerger) and merger.step.index == 2  # 2 calls a step
    stats = merger.stats  # tokens counted per matched unit (a frame or a frame group)
    assert stats["merged_calls"] == 3 * 2 * 2 and stats["tokens_in"] == 12 * window * N
    assert stats["tokens_kept"] * 2 == stats["tokens_in"]


def test_wan_frame_groups_let_tokens_merge_across_frames() -> None:
    """Frame 1 repeats frame 0: with frame_window=2 a token whose twin in the other frame
    is a destination merges into it (similarity 1), across the frame boundary."""
    model = tiny.tiny_wan_transformer().eval()
    tomerge_cli.apply_patch(model, ratio=0.5, mode="tome", prune_steps=0, frame_window=2)
    _sample_wan(model, _wan_latents(), steps=1)  # sets the step's grid and partition
    frame = torch.randn(1, N, 24, generator=torch.Generator().manual_seed(2))
    merge = tomerge_cli.get_merger(model)._dit_matching(torch.cat([frame, frame], 1))
    inner = merge.inner  # one unit of two frames
    assert merge.units == 1 and inner.slot.shape == (1, FRAMES * N)
    into = inner.kept.gather(1, inner.into)  # the destination of each merged token
    assert ((inner.merged // N) != (into // N)).any()
    assert merge.n_kept == FRAMES * N - int(FRAMES * N * 0.5)


def test_wan_merging_identical_tokens_with_identical_positions_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tokens equal within each 2x2 cell of each frame, rotary rows equal too: ratio 0.75
    leaves one token per cell at that position, and the block's output is the unmerged one."""
    model = tiny.tiny_wan_transformer().eval()
    block = model.blocks[0]
    dim = 24
    g = torch.Generator().manual_seed(5)
    cells = torch.randn(1, FRAMES, H // 2, W // 2, dim, generator=g)
    x = cells.repeat_interleave(2, 2).repeat_interleave(2, 3).reshape(1, FRAMES * N, dim)
    ctx = torch.randn(1, 3, dim, generator=g)
    temb = torch.randn(1, 6, dim, generator=g)
    cos, sin = model.rope(_wan_latents())
    f, y, xx = torch.meshgrid(torch.arange(FRAMES), torch.arange(H), torch.arange(W), indexing="ij")
    cell_rows = (f * N + y // 2 * 2 * W + xx // 2 * 2).flatten()
    rotary = (cos[:, cell_rows], sin[:, cell_rows])

    def run() -> torch.Tensor:
        with torch.no_grad():
            return block(x, ctx, temb, rotary)

    base = run()
    tomerge_cli.apply_patch(
        model, ratio=0.75, mode="tome", prune_steps=0, use_rand=False, blocks=[0, 1]
    )
    _sample_wan(model, _wan_latents(), steps=1)  # sets the step's grid and partition
    seen, _ = _count_tokens(model)
    merged = run()
    assert seen == [FRAMES * N // 4]
    torch.testing.assert_close(merged, base, atol=1e-5, rtol=1e-5)
    monkeypatch.setattr(  # control: rotary rows that do not follow the kept tokens
        dit, "merge_frame_rotary", lambda emb, kept: tuple(e[:, : kept.shape[1]] for e in emb)
    )
    assert not torch.allclose(run(), base, atol=1e-3)


@pytest.mark.parametrize("family", ["wan", "sana"])
def test_ratio_zero_remove_patch_and_seeds(family: str) -> None:
    model, sample, latents = _family(family)
    base = torch.stack(sample(model, latents(0)))
    tomerge_cli.apply_patch(model, ratio=0.0)
    assert torch.equal(torch.stack(sample(model, latents(0))), base)
    tomerge_cli.apply_patch(model, ratio=0.5, importance="auto", importance_start=1)
    a, b = sample(model, latents(0)), sample(model, latents(0))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))  # same seed, same output
    assert not torch.equal(torch.stack(a), base)
    assert tomerge_cli.get_merger(model).stats["partitions"]["importance"] >= 1
    tomerge_cli.remove_patch(model)
    assert torch.equal(torch.stack(sample(model, latents(0))), base)
    assert no_hooks(model)


def test_wan_cfg_importance_comes_from_its_two_calls() -> None:
    model = tiny.tiny_wan_transformer().eval()
    tomerge_cli.apply_patch(model, ratio=0.5, importance="cfg", no_cfg="error")
    outs = _sample_wan(model, _wan_latents())
    merger = tomerge_cli.get_merger(model)
    want = (outs[-2] - outs[-1]).abs().mean(1).flatten(0, 1)  # (frames, 8, 8)
    torch.testing.assert_close(merger.importance, want)
    assert merger.stats["partitions"] == {"importance": 1, "grid": 0, "grid_prune": 2}


def _sana_latents(seed: int) -> torch.Tensor:
    return torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _sample_sana(model, latents: torch.Tensor, steps: int = 3) -> list[torch.Tensor]:
    """Sana's pipeline layout: a CFG batch [uncond; cond]."""
    g = torch.Generator().manual_seed(1)
    ctx = torch.randn(2, 3, 16, generator=g)
    x, outs = latents, []
    for t in (900.0, 600.0, 300.0)[:steps]:
        v = model(
            hidden_states=torch.cat([x, x]), encoder_hidden_states=ctx, timestep=torch.full((2,), t)
        ).sample
        outs.append(v)
        uncond, cond = v.chunk(2)
        x = x - 0.3 * (uncond + 4.0 * (cond - uncond))
    return outs


def _family(family: str):
    if family == "wan":
        return tiny.tiny_wan_transformer().eval(), _sample_wan, _wan_latents
    return tiny.tiny_sana_transformer().eval(), _sample_sana, _sana_latents


def test_sana_merges_the_linear_attention_input() -> None:
    model = tiny.tiny_sana_transformer().eval()
    tomerge_cli.apply_patch(model, ratio=0.5, merge_mlp=True)  # its conv MLP stays whole
    seen, _ = _count_tokens(model)
    _sample_sana(model, _sana_latents(0))
    assert seen == [64 - 32] * (3 * 2)
    assert isinstance(tomerge_cli.get_merger(model), dit.WanTokenMerger)


@pytest.mark.slow  # a whole (tiny) pipeline, VAE included
def test_tiny_wan_pipeline_generates_merged_frames() -> None:
    pipe = tiny.tiny_wan()
    kw = {"num_frames": 5, "size": 64}
    base = generate(pipe, 3, seed=0, **kw)
    tomerge_cli.apply_patch(pipe, ratio=0.5, importance="auto", importance_start=1)
    out = generate(pipe, 3, seed=0, **kw)
    assert out.shape == base.shape == (1, 5, 3, 64, 64)
    assert tomerge_cli.get_merger(pipe).stats["partitions"]["importance"] == 2
    assert not torch.equal(out, base)


@pytest.mark.slow  # a whole (tiny) text-to-video pipeline through the command line
def test_generate_writes_the_frames_and_a_gif_of_a_wan_folder(tmp_path) -> None:
    import json

    from PIL import Image

    from tests.helpers import run_cli

    tiny.tiny_wan(tokenizer_dir=tmp_path / "tok").save_pretrained(tmp_path / "wan")
    out = tmp_path / "gen"
    res = run_cli(
        "tomerge", "generate", "--pipeline", tmp_path / "wan", "--prompt", "a red cube",
        "--frames", "5", "--height", "64", "--width", "64", "--steps", "2", "--ratio", "0.5",
        "--no-skip-unprofitable", "--out", out, "--json", "--quiet",
    )  # fmt: skip
    assert res.code == 0, res.stderr
    metrics = json.loads(res.stdout)
    assert metrics["pipeline_class"] == "WanPipeline"
    assert metrics["images"] == 5 and metrics["merge_stats"]["merged_calls"] > 0
    frames = [out / "images" / f"000_f{j:03d}.png" for j in range(5)]
    assert all(f.is_file() for f in frames)
    with Image.open(out / "images" / "000.gif") as gif:
        assert gif.n_frames == 5 and gif.size == (64, 64)
        gif.seek(4)  # the clip's last frame is the last PNG (up to the GIF palette)
        last = np.asarray(gif.convert("RGB"), dtype=np.float64)
    png = np.asarray(Image.open(frames[-1]).convert("RGB"), dtype=np.float64)
    assert np.abs(last - png).mean() < 8


def test_the_cost_model_counts_every_frame_wan_attends_over(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Wan's self-attention runs over all frames at once, so the break-even compares the
    whole sequence (frames x tokens per frame), not one frame, with the threshold."""
    from tomerge_cli import cost

    width = 24  # tiny_wan_transformer: 2 heads x 12
    per_frame, frames = 0.5 * N * width, 0.5 * FRAMES * N * width  # ratio x tokens x width
    for threshold, merges in ((per_frame + 1, True), (frames + 1, False)):
        monkeypatch.setattr(cost, "MIN_WORK", threshold)
        model = tiny.tiny_wan_transformer().eval()
        tomerge_cli.apply_patch(model, ratio=0.5, mode="tome")
        _sample_wan(model, _wan_latents(), steps=1)
        stats = tomerge_cli.get_merger(model).stats
        assert (stats["merged_calls"] > 0) == merges, (threshold, stats)
        assert (stats["skipped_unprofitable"] > 0) != merges


def _host_syncs(model, latents: torch.Tensor) -> int:
    """Ops that read a tensor's value back to the host (a sync on a GPU) in one call."""
    from torch.profiler import ProfilerActivity, profile

    ctx = torch.randn(latents.shape[0], 3, tiny.EMBED, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(hidden_states=latents, timestep=torch.full((latents.shape[0],), 600.0),
              encoder_hidden_states=ctx)  # fmt: skip
    wanted = {"aten::item", "aten::equal", "aten::_local_scalar_dense", "aten::nonzero"}
    return sum(e.name in wanted for e in prof.events())


def test_host_syncs_per_call_do_not_grow_with_the_merged_blocks() -> None:
    """A batch of two videos keeps different tokens per video: every merged block's rotary
    rows are taken per video without first reading back whether the rows agree, so the
    host syncs of a call are the step's own, whatever the number of merged blocks."""
    latents = torch.cat([_wan_latents(0), _wan_latents(1)])
    syncs = []
    for layers in (2, 4):
        model = tiny.tiny_wan_transformer(layers=layers).eval()
        tomerge_cli.apply_patch(
            model, ratio=0.5, mode="tome", prune_steps=0, blocks=list(range(layers)),
            skip_unprofitable=False,
        )  # fmt: skip
        _host_syncs(model, latents)  # the first call sets up the step's grid
        syncs.append(_host_syncs(model, latents))
        assert tomerge_cli.get_merger(model).stats["merged_calls"] == 2 * layers
    assert syncs[0] == syncs[1]


def _live_merges() -> int:
    import gc

    from tomerge_cli.merge import Merge

    gc.collect()
    return sum(isinstance(o, (Merge, dit.FrameMerge)) for o in gc.get_objects())


def test_no_merge_outlives_its_block() -> None:
    """Each block drops its merge indices when it is done, so a call leaves none alive
    (the rest of the model, and the time between calls, need not hold them)."""
    model = tiny.tiny_wan_transformer(layers=4).eval()
    tomerge_cli.apply_patch(model, ratio=0.5, mode="tome", prune_steps=0, blocks=[0, 1, 2, 3],
                            skip_unprofitable=False)  # fmt: skip
    before = _live_merges()
    _sample_wan(model, _wan_latents(), steps=2)
    assert tomerge_cli.get_merger(model).stats["merged_calls"] == 2 * 2 * 4
    assert _live_merges() == before


def test_a_fingerprint_tells_the_same_tensor_from_another_without_a_copy() -> None:
    """The step keeps at most Fingerprint.VALUES values per batch row of its latents (not a
    copy of them); equal tensors match, a tensor changed everywhere does not, and a CFG
    batch's second half compares row by row with a call on that half."""
    x = torch.randn(2, 16, 3, 40, 40)  # 76,800 values a row
    fp = dit.Fingerprint(x)
    assert fp.values.numel() <= 2 * dit.Fingerprint.VALUES
    assert fp.same(dit.Fingerprint(x.clone()))
    assert not fp.same(dit.Fingerprint(x + 1e-3))
    assert not fp.same(dit.Fingerprint(x[:1]))
    assert torch.equal(fp.values[1:], dit.Fingerprint(x[1:]).values)


@pytest.mark.parametrize(("importance", "cfg", "held"), [("auto", True, 0), ("cfg", True, 0),
                                                          ("step-delta", False, 1)])  # fmt: skip
def test_only_step_delta_holds_a_prediction_past_its_step(importance, cfg, held) -> None:
    """Once the sampler drops a step's predictions, the CFG map (two calls per step, as
    Wan's pipeline runs it) keeps none of them alive during later calls, which would add a
    prediction to every call's peak memory; step-delta keeps exactly one, the previous
    step's, which its next map needs."""
    import weakref

    model = tiny.tiny_wan_transformer().eval()
    tomerge_cli.apply_patch(model, ratio=0.5, importance=importance, prune_steps=0)
    dropped: list[weakref.ref] = []  # storages of the predictions of earlier steps
    alive: list[int] = []
    count = lambda m, a: alive.append(sum(r() is not None for r in dropped))  # noqa: E731
    model.register_forward_pre_hook(count)
    g = torch.Generator().manual_seed(1)
    contexts = [torch.randn(1, 3, tiny.EMBED, generator=g) for _ in range(1 + cfg)]
    x = _wan_latents()
    with torch.no_grad():
        for t in (900.0, 700.0, 500.0, 300.0):
            ts = torch.full((1,), t)
            preds = [model(hidden_states=x, timestep=ts, encoder_hidden_states=c).sample
                     for c in contexts]  # fmt: skip
            x = x - 0.2 * (preds[-1] + 4.0 * (preds[0] - preds[-1]))
            dropped += [weakref.ref(p.untyped_storage()) for p in preds]
            del preds
    merger = tomerge_cli.get_merger(model)
    assert merger.stats["partitions"]["importance"] >= 2  # the maps were drawn
    assert alive[0] == 0 and max(alive[1:]) == held
