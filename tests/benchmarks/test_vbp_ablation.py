"""The vbp ablation's statistics and presets: bootstrap intervals over val images, the paired
verdict against VBP, the SwiGLU ViT preset (built only, not trained) and the check that a
Torch-Pruning result removed whole MLP neurons."""

from __future__ import annotations

import copy

import pytest
import timm
import torch

from benchmarks import vbp_ablation as bench
from shared.reference import recipe_key, recipe_of
from vbp_cli.mlps import find_mlps


def _build(preset: str) -> torch.nn.Module:
    recipe = bench.PRESETS[preset]
    torch.manual_seed(0)
    return timm.create_model(recipe["timm_name"], pretrained=False, **recipe["model_kwargs"])


def test_identical_predictions_are_on_par_with_a_zero_interval() -> None:
    gen = torch.Generator().manual_seed(0)
    hits = torch.rand(360, generator=gen) < 0.9
    index = bench.resample_index(len(hits))
    p = bench.paired_vs_vbp(hits.clone(), hits, index)
    assert (p["diff"], p["low"], p["high"], p["verdict"]) == (0.0, 0.0, 0.0, "on par")


def test_verdict_follows_the_side_of_the_interval() -> None:
    gen = torch.Generator().manual_seed(1)
    vbp = torch.rand(360, generator=gen) < 0.9
    worse = vbp.clone()
    worse[torch.nonzero(vbp).flatten()[:40]] = False  # 40 images VBP gets right, lost
    index = bench.resample_index(len(vbp))
    p = bench.paired_vs_vbp(worse, vbp, index)
    assert p["verdict"] == "beats" and p["high"] < 0
    assert p["diff"] == pytest.approx(-100 * 40 / 360)
    q = bench.paired_vs_vbp(vbp, worse, index)
    assert q["verdict"] == "worse" and q["low"] > 0
    # one image apart in 360: the interval spans zero
    close = vbp.clone()
    close[torch.nonzero(vbp).flatten()[0]] = False
    assert bench.paired_vs_vbp(close, vbp, index)["verdict"] == "on par"


def test_top1_interval_brackets_the_mean() -> None:
    index = bench.resample_index(360)
    assert bench.top1_interval(torch.ones(360, dtype=torch.bool), index) == (100.0, 100.0, 100.0)
    hits = torch.arange(360) % 4 != 0  # 75%
    top1, low, high = bench.top1_interval(hits, index)
    assert top1 == 75.0 and 69 < low < top1 < high < 81


def test_swiglu_preset_is_the_vit_with_gated_mlps() -> None:
    recipe = bench.PRESETS["vit-swiglu-16"]
    recipe_key(recipe_of(**recipe))  # JSON: the reference cache can key it
    model = _build("vit-swiglu-16")
    refs = find_mlps(model)
    assert [r.kind for r in refs] == ["gated"] * 6
    assert {r.hidden for r in refs} == {264}
    # only the MLPs differ from vit-small-16
    plain = _build("vit-small-16").state_dict()
    shapes = {k: v.shape for k, v in model.state_dict().items() if ".mlp." not in k}
    assert shapes == {k: v.shape for k, v in plain.items() if ".mlp." not in k}
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 10)


@pytest.mark.parametrize("preset", ["vit-small-16", "vit-swiglu-16"])
def test_torch_pruning_removes_whole_neurons(preset: str) -> None:
    model = _build(preset).eval()
    pruned = copy.deepcopy(model)
    bench.tp_prune(pruned, 0.5, "Torch-Pruning magnitude", calib=())
    widths = [r.hidden for r in find_mlps(pruned)]
    assert sum(widths) == sum(r.hidden for r in find_mlps(model)) // 2
    assert bench.structure_mismatch(model, pruned) is None
    if preset == "vit-swiglu-16":  # the up projection keeping other neurons is caught
        up = find_mlps(pruned)[0].input_layers[1]
        with torch.no_grad():
            up.weight.copy_(up.weight.roll(1, 0))
        assert "keeps other neurons" in bench.structure_mismatch(model, pruned)


def test_correctness_is_kept_per_image() -> None:
    assert bench.bits(torch.tensor([True, False, True])) == "101"
