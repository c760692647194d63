"""VBP's algorithm on models built from timm configs (no weights needed)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import timm
import torch

from shared.profiling import count_macs
from vbp_cli.mlps import find_mlps
from vbp_cli.models import Architecture, load_model, save_model
from vbp_cli.prune import (
    MagnitudeImportance,
    RandomImportance,
    VarianceImportance,
    prune_model,
    select_neurons,
)
from vbp_cli.stats import NeuronStats, StatsCollector, collect_stats

TINY_VIT = dict(img_size=32, patch_size=4, num_classes=10, embed_dim=48, depth=3, num_heads=2)


def tiny_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", **TINY_VIT).eval()


def batches(n: int = 3, size: int = 8, img: int = 32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(size, 3, img, img, generator=g) for _ in range(n)]


def test_ratio_zero_gives_identical_outputs() -> None:
    model = tiny_vit()
    x = batches(1)[0]
    before = model(x)
    stats = collect_stats(model, batches())
    widths = prune_model(model, stats, 0.0)
    assert all(w == ref.hidden for w, ref in zip(widths.values(), find_mlps(model), strict=True))
    assert torch.equal(model(x), before)


def small_model(family: str) -> tuple[torch.nn.Module, int]:
    """A small random model of each supported family, and its input size."""
    torch.manual_seed(0)
    if family == "vit":
        return tiny_vit(), 32
    if family == "deit_distilled":
        kw = {**TINY_VIT, "depth": 2}
        return timm.create_model("deit_tiny_distilled_patch16_224", **kw).eval(), 32
    if family == "swin":
        kw = dict(img_size=56, embed_dim=24, depths=(1, 1), num_heads=(1, 2), num_classes=10)
        return timm.create_model("swin_tiny_patch4_window7_224", **kw).eval(), 56
    conv_mlp = family == "convnext_conv_mlp"  # 1x1-conv MLP in NCHW, else Linear in NHWC
    # layer scale 1 instead of timm's 1e-6, so that the MLPs visibly matter for the output
    kw = dict(depths=(1, 1, 1, 1), dims=(16, 24, 32, 48), num_classes=10, conv_mlp=conv_mlp)
    kw["ls_init_value"] = 1.0
    return timm.create_model("convnext_atto", **kw).eval(), 32


FAMILIES = ["vit", "deit_distilled", "swin", "convnext_conv_mlp", "convnext_linear"]


@pytest.mark.parametrize("family", FAMILIES)
def test_pruning_constant_neurons_is_exact(family: str) -> None:
    """A neuron whose activation never changes carries no information: removing it with
    mean-shift compensation must leave every output unchanged, in every family."""
    model, img = small_model(family)
    constant = {}
    with torch.no_grad():
        for ref in find_mlps(model):
            idx = torch.tensor([1, 5, 7])
            ref.fc1.weight[idx] = 0.0  # h_i = act(b_i): a constant, non-zero after GELU
            ref.fc1.bias[idx] = torch.tensor([0.8, -0.3, 1.7])
            constant[ref.name] = idx
    x = batches(1, 4, img)[0]
    before = model(x)
    stats = collect_stats(model, batches(2, 4, img))
    for name, idx in constant.items():
        assert stats[name].var[idx].abs().max() < 1e-12
    n_const = sum(len(i) for i in constant.values())
    total = sum(ref.hidden for ref in find_mlps(model))
    widths = prune_model(model, stats, n_const / total)
    assert sum(widths.values()) == total - n_const
    for ref in find_mlps(model):  # exactly the constant (all-zero) fc1 rows went
        assert ref.fc1.weight.flatten(1).abs().sum(1).min() > 0
    after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    # and the compensation is what makes it exact: without it the outputs move
    model2, _ = small_model(family)
    with torch.no_grad():
        for ref in find_mlps(model2):
            ref.fc1.weight[constant[ref.name]] = 0.0
            ref.fc1.bias[constant[ref.name]] = torch.tensor([0.8, -0.3, 1.7])
    prune_model(model2, stats, n_const / total, compensation=False)
    assert (model2(x) - before).abs().max() > 1e-4


def test_importance_classes_score_the_hidden_neuron_group() -> None:
    model = tiny_vit()
    stats = collect_stats(model, batches(2))
    ref = find_mlps(model)[0]
    assert torch.equal(VarianceImportance(stats)(ref), stats[ref.name].var)
    w1, w2, b1 = ref.fc1.weight.double(), ref.fc2.weight.double(), ref.fc1.bias.double()
    expected = (w1.square().sum(1) + w2.square().sum(0) + b1.square()).sqrt()
    torch.testing.assert_close(MagnitudeImportance()(ref), expected.detach())
    a, b = RandomImportance(3)(ref), RandomImportance(3)(ref)
    assert torch.equal(a, b) and a.shape == (ref.hidden,)
    # an importance object is accepted wherever a criterion name is
    m1, m2 = tiny_vit(), tiny_vit()
    w_name = prune_model(m1, stats, 0.4, criterion="magnitude")
    w_obj = prune_model(m2, stats, 0.4, criterion=MagnitudeImportance())
    assert w_name == w_obj
    x = batches(1)[0]
    assert torch.equal(m1(x), m2(x))


@pytest.mark.filterwarnings("ignore:Unwrapped parameters")
def test_variance_importance_drives_torch_pruning() -> None:
    """VarianceImportance plugs into Torch-Pruning's MetaPruner: it scores only the MLP
    hidden-neuron groups, and the neurons removed are exactly the lowest-variance ones."""
    tp = pytest.importorskip("torch_pruning")
    model = tiny_vit()
    stats = collect_stats(model, batches(2))
    before = {ref.name: ref.fc1.weight.detach().clone() for ref in find_mlps(model)}
    attn = model.blocks[0].attn.qkv.weight.shape
    pruner = tp.pruner.MetaPruner(
        model,
        torch.randn(1, 3, 32, 32),
        importance=VarianceImportance(stats, model),
        pruning_ratio=0.5,
        ignored_layers=[model.head],
    )
    pruner.step()
    for ref in find_mlps(model):
        var = stats[ref.name].var
        assert ref.hidden == var.numel() // 2
        kept = torch.sort(torch.topk(var, ref.hidden).indices).values
        assert torch.equal(ref.fc1.weight, before[ref.name][kept])
        removed = torch.ones(var.numel(), dtype=torch.bool)
        removed[kept] = False
        assert var[removed].max() <= var[kept].min()
    assert model.blocks[0].attn.qkv.weight.shape == attn  # other groups untouched
    assert model(batches(1)[0]).shape == (8, 10)


def test_statistics_equal_float64_reference() -> None:
    model = tiny_vit()
    data = batches(4)
    captured: dict[str, list[torch.Tensor]] = {ref.name: [] for ref in find_mlps(model)}
    hooks = [
        ref.fc2.register_forward_pre_hook(
            lambda m, a, n=ref.name: captured[n].append(a[0].reshape(-1, a[0].shape[-1]).double())
        )
        for ref in find_mlps(model)
    ]
    stats = collect_stats(model, data)
    for h in hooks:
        h.remove()
    for name, chunks in captured.items():
        ref = torch.cat(chunks)  # every token of every image is one sample
        assert stats[name].count == ref.shape[0] == 4 * 8 * 65
        # per-batch moments come from float32 activations: they agree to float32 precision
        torch.testing.assert_close(stats[name].mean, ref.mean(0), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(stats[name].var, ref.var(0, correction=0), rtol=1e-5, atol=1e-7)


def test_chan_merge_equals_single_pass() -> None:
    x = torch.randn(1000, 7, dtype=torch.float64) * 3 + 5
    whole, parts = NeuronStats.empty(7), NeuronStats.empty(7)
    whole.update(x)
    for chunk in torch.split(x, [1, 333, 600, 66]):
        p = NeuronStats.empty(7)
        p.update(chunk)
        parts.merge(p.count, p.mean, p.m2)
    assert parts.count == 1000
    torch.testing.assert_close(parts.mean, whole.mean, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(parts.var, whole.var, rtol=1e-12, atol=1e-12)


def test_global_ranking_floor_and_rounding() -> None:
    scores = {
        "a": torch.tensor([0.1, 0.2, 0.3, 5.0]),
        "b": torch.tensor([1.0, 2.0, 3.0, 4.0]),
        "c": torch.tensor([0.01, 0.02, 0.03, 0.04]),
    }
    keep = select_neurons(scores, 0.5)
    # the six lowest scores overall: all of c (the floor keeps its best) and a's two smallest
    assert keep["a"].tolist() == [2, 3]
    assert keep["b"].tolist() == [0, 1, 2, 3]
    assert keep["c"].tolist() == [3]
    keep = select_neurons(scores, 0.5, round_to=2)
    assert [len(v) for v in keep.values()] == [2, 4, 2]
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        select_neurons(scores, 1.0)


def test_saved_pruned_model_reloads_with_identical_outputs(tmp_path: Path) -> None:
    model = tiny_vit()
    stats = collect_stats(model, batches())
    prune_model(model, stats, 0.6)
    path = save_model(model, Architecture("vit_tiny_patch16_224", TINY_VIT), tmp_path / "m.st")
    loaded = load_model(path)
    assert type(loaded).__module__.startswith("timm.")
    x = batches(1)[0]
    assert torch.equal(loaded(x), model(x))
    widths = [ref.hidden for ref in find_mlps(loaded)]
    assert widths == [ref.hidden for ref in find_mlps(model)] and sum(widths) < 3 * 192


def _closed_form_vit_macs(
    depth: int, dim: int, widths: list[int], tokens: int = 197, patch: int = 16, classes: int = 1000
) -> int:
    patches = tokens - 1
    per_block = [
        4 * tokens * dim * dim + 2 * tokens * tokens * dim + 2 * tokens * dim * h for h in widths
    ]
    return patches * 3 * patch * patch * dim + sum(per_block) + dim * classes


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,depth,dim", [("deit_tiny_patch16_224", 12, 192), ("deit_base_patch16_224", 12, 768)]
)
def test_pruned_deit_macs_match_closed_form(name: str, depth: int, dim: int) -> None:
    model = timm.create_model(name).eval()
    gen = torch.Generator().manual_seed(0)
    stats = {}
    for ref in find_mlps(model):
        s = NeuronStats.empty(ref.hidden)
        s.merge(
            100,
            torch.randn(ref.hidden, generator=gen),
            torch.rand(ref.hidden, generator=gen, dtype=torch.float64),
        )
        stats[ref.name] = s
    widths = prune_model(model, stats, 0.55)
    assert len(set(widths.values())) > 1, "global ranking gives uneven widths"
    expected = _closed_form_vit_macs(depth, dim, list(widths.values()))
    assert count_macs(model, torch.randn(1, 3, 224, 224)) == expected


@pytest.mark.slow
def test_deit_base_at_055_matches_published_cost() -> None:
    """Paper: DeiT-B with 55% of MLP neurons removed -> 11.44 G MACs (-34.93%), 55.40 M
    params (-36.01%): widths do not matter for the totals, only their sum."""
    model = timm.create_model("deit_base_patch16_224").eval()
    before = count_macs(model, torch.randn(1, 3, 224, 224))
    stats = {
        ref.name: NeuronStats(
            1,
            torch.zeros(ref.hidden, dtype=torch.float64),
            torch.arange(ref.hidden, dtype=torch.float64),
        )
        for ref in find_mlps(model)
    }
    prune_model(model, stats, 0.55)
    after = count_macs(model, torch.randn(1, 3, 224, 224))
    params = sum(p.numel() for p in model.parameters())
    assert abs(after / 1e9 - 11.44) < 0.02
    assert abs(1 - after / before - 0.3493) < 0.002
    assert abs(params / 1e6 - 55.40) < 0.05


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,count",
    [
        ("swin_tiny_patch4_window7_224", 12),
        ("deit_tiny_distilled_patch16_224", 12),
        ("convnext_atto", 12),
    ],
)
def test_supported_families_prune_and_run(name: str, count: int) -> None:
    model = timm.create_model(name, num_classes=10).eval()
    mlps = find_mlps(model)
    assert len(mlps) == count
    stats = {
        ref.name: NeuronStats(
            10,
            torch.zeros(ref.hidden, dtype=torch.float64),
            torch.rand(ref.hidden, dtype=torch.float64),
        )
        for ref in mlps
    }
    reference = copy.deepcopy(model)
    total = sum(ref.hidden for ref in mlps)
    widths = prune_model(model, stats, 0.5)
    # half of the neurons gone, from the modules themselves, and the model still runs
    assert sum(ref.hidden for ref in find_mlps(model)) == sum(widths.values())
    assert sum(widths.values()) == total - int(0.5 * total)
    x = torch.randn(1, 3, 224, 224)
    assert model(x).shape == reference(x).shape


def test_unsupported_model_names_the_families() -> None:
    model = timm.create_model("resnet18")
    with pytest.raises(ValueError, match="ViT, DeiT.*Swin.*ConvNeXt"):
        find_mlps(model)


def test_collector_hooks_are_removed() -> None:
    model = tiny_vit()
    with StatsCollector(model):
        pass
    assert all(not ref.fc2._forward_pre_hooks for ref in find_mlps(model))
