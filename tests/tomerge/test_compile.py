"""torch.compile of a patched model: users compile their diffusion transformers, and the
merging hooks must neither break compilation nor change what it computes."""

from __future__ import annotations

import shutil

import pytest
import torch

import tomerge_cli
from tests.tomerge import test_dit, test_wan
from tomerge_cli import tiny

NEEDS_COMPILER = pytest.mark.skipif(
    not any(shutil.which(c) for c in ("g++", "c++", "clang++")),
    reason="torch.compile's CPU backend (inductor) needs a C++ compiler",
)


def _family(name: str):
    """(model, sampler, latents) of a tiny model of each DiT family the patch supports."""
    if name == "wan":
        return tiny.tiny_wan_transformer().eval(), test_wan._sample_wan, test_wan._wan_latents()
    if name == "flux":
        return test_dit._flux(), test_dit._sample_flux, test_dit._flux_latents()
    return test_dit._sd3(dual=True), test_dit._sample_sd3, test_dit._sd3_latents()


@pytest.mark.slow
@NEEDS_COMPILER
@pytest.mark.parametrize("family", ["wan", "flux", "sd35"])
def test_a_compiled_patched_model_samples_as_the_eager_one(family: str) -> None:
    """Importance merging with every block merged: the compiled model (inductor) gives the
    eager patched outputs and merges the same tokens, step by step."""
    torch._dynamo.reset()
    model, sample, latents = _family(family)
    every = list(range(len(tomerge_cli.dit.dit_blocks(model))))
    options = dict(ratio=0.5, mode="importance", importance="auto", prune_steps=1,
                   skip_unprofitable=False, blocks=every)  # fmt: skip
    unpatched = sample(model, latents)
    tomerge_cli.apply_patch(model, **options)
    eager = sample(model, latents)
    stats = tomerge_cli.get_merger(model).stats
    eager_stats = {k: stats[k] for k in ("merged_calls", "tokens_kept", "partitions")}
    tomerge_cli.remove_patch(model)
    tomerge_cli.apply_patch(model, **options)  # the same seeded partitions again
    compiled = sample(torch.compile(model), latents)
    stats = tomerge_cli.get_merger(model).stats
    assert {k: stats[k] for k in eager_stats} == eager_stats
    assert eager_stats["partitions"]["importance"] >= 1  # the map was used, not only grids
    for e, c, u in zip(eager, compiled, unpatched, strict=True):
        torch.testing.assert_close(c, e, rtol=1e-4, atol=1e-4)
        assert (e - u).abs().max() > 1e-3  # merging changed the output being compared


@pytest.mark.slow
@NEEDS_COMPILER
@pytest.mark.parametrize("how", ["torch.compile", "module.compile"])
def test_patching_a_model_compiled_before_takes_effect_and_removing_it_too(how: str) -> None:
    """torch.compile does not guard on module hooks: compiled before apply_patch, the model
    would run its old code and merge nothing (and keep merging after remove_patch)."""
    torch._dynamo.reset()
    model = tiny.tiny_wan_transformer().eval()
    call = {"hidden_states": test_wan._wan_latents(), "timestep": torch.tensor([900.0]),
            "encoder_hidden_states": torch.randn(1, 3, tiny.EMBED)}  # fmt: skip
    options = dict(ratio=0.5, mode="tome", prune_steps=0, skip_unprofitable=False, blocks=[0, 1])
    with torch.no_grad():
        tomerge_cli.apply_patch(model, **options)
        eager = model(**call).sample
        tomerge_cli.remove_patch(model)
        unpatched = model(**call).sample
        if how == "module.compile":
            model.compile()
            compiled, patched = model, model
        else:  # the pipeline's transformer replaced by the compiled wrapper
            compiled = torch.compile(model)
            patched = compiled
        torch.testing.assert_close(compiled(**call).sample, unpatched)
        tomerge_cli.apply_patch(patched, **options)  # same seeded partition as `eager`
        out = compiled(**call).sample
        assert tomerge_cli.get_merger(patched).stats["merged_calls"] == 2
        torch.testing.assert_close(out, eager, rtol=1e-4, atol=1e-4)
        tomerge_cli.remove_patch(patched)
        torch.testing.assert_close(compiled(**call).sample, unpatched)
