"""Neuron selection and structured removal with mean-shift compensation (VBP steps 2-3).

One global ranking over all MLP neurons of the network; the lowest fraction goes. For each
removed set P of an MLP: b2 <- b2 + W2[:, P] @ mu[P], then rows P of fc1 and columns P of
fc2 are deleted. Replacing h_i by its mean costs exactly var_i in expected squared error,
which is why variance is the criterion.

Criteria are importance classes in Torch-Pruning's style (`VarianceImportance`,
`MagnitudeImportance`, `RandomImportance`: `importance(group) -> scores`), so VBP's
variance criterion also plugs into Torch-Pruning's pruners (`importance=
VarianceImportance(stats, model)`; those prune without mean-shift compensation).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from vbp_cli.mlps import MlpRef, VBPError, find_mlps, resized_layer
from vbp_cli.stats import NeuronStats

CRITERIA = ("variance", "magnitude", "random")


def _weight2d(layer: nn.Module) -> torch.Tensor:
    return layer.weight.detach().reshape(layer.weight.shape[0], -1)


# -- importance criteria ---------------------------------------------------------------------
class NeuronImportance:
    """A pruning criterion in Torch-Pruning's style: `importance(group) -> scores`, one score
    per hidden neuron, higher = keep.

    A group is the set of parameters tied to an MLP's hidden neurons (fc1 rows and bias,
    fc2 columns): either vbp's `MlpRef`, or a Torch-Pruning `Group` whose coupled layers
    include an MLP's fc1 output channels. For Torch-Pruning groups the criterion needs the
    `model` (to know which layer is which MLP's fc1) and returns None for every other group,
    so a Torch-Pruning pruner leaves attention and embedding widths alone."""

    def __init__(self, model: nn.Module | None = None) -> None:
        self.model = model
        self._fc1: dict[int, MlpRef] | None = None

    def scores(self, ref: MlpRef) -> torch.Tensor:
        """Scores of all hidden neurons of one MLP (length `ref.hidden`)."""
        raise NotImplementedError

    def __call__(self, group: Any) -> torch.Tensor | None:
        if isinstance(group, MlpRef):
            return self.scores(group)
        return self._torch_pruning_group(group)

    @torch.no_grad()
    def _torch_pruning_group(self, group: Any) -> torch.Tensor | None:
        from torch_pruning.pruner import function

        if self.model is None:
            raise VBPError(f"{type(self).__name__}(model=...) is needed for Torch-Pruning groups")
        if self._fc1 is None:
            self._fc1 = {id(ref.fc1): ref for ref in find_mlps(self.model)}
        out_fns = (function.prune_linear_out_channels, function.prune_conv_out_channels)
        n_root = len(group[0].idxs)
        for i, (dep, idxs) in enumerate(group):
            ref = self._fc1.get(id(dep.layer))
            if ref is None or dep.pruning_fn not in out_fns:
                continue
            full = self.scores(ref)
            out = torch.zeros(n_root, dtype=torch.float32, device=ref.fc1.weight.device)
            root = torch.as_tensor(group[i].root_idxs, dtype=torch.long, device=out.device)
            out[root] = full[torch.as_tensor(idxs, dtype=torch.long)].float().to(out.device)
            return out
        return None  # not an MLP hidden-neuron group: nothing to prune here


class VarianceImportance(NeuronImportance):
    """VBP's criterion: the post-activation variance of each neuron over the data. Replacing
    a neuron by its mean (and folding that into fc2's bias) costs exactly its variance in
    expected squared error, so the lowest-variance neurons are the cheapest to remove."""

    def __init__(self, stats: Mapping[str, NeuronStats], model: nn.Module | None = None) -> None:
        super().__init__(model)
        self.stats = stats

    def scores(self, ref: MlpRef) -> torch.Tensor:
        stats = self.stats.get(ref.name)
        if stats is None:
            raise VBPError(f"the variance criterion needs statistics for {ref.name}")
        if stats.mean.numel() != ref.hidden:
            raise VBPError(
                f"statistics of {ref.name} have {stats.mean.numel()} neurons, the model "
                f"{ref.hidden} (collected before another pruning step?)"
            )
        return stats.var.clone()


class MagnitudeImportance(NeuronImportance):
    """Group L2 norm of everything tied to a neuron (fc1 row + bias, fc2 column), the
    grouping dependency-graph pruners use."""

    def scores(self, ref: MlpRef) -> torch.Tensor:
        w1, w2 = _weight2d(ref.fc1).double(), _weight2d(ref.fc2).double()
        sq = w1.square().sum(1) + w2.square().sum(0)
        if ref.fc1.bias is not None:
            sq = sq + ref.fc1.bias.detach().double().square()
        return sq.sqrt().cpu()


class RandomImportance(NeuronImportance):
    """Uniform random scores (the ablation baseline); seeded, so a selection repeats."""

    def __init__(self, seed: int = 0, model: nn.Module | None = None) -> None:
        super().__init__(model)
        self.generator = torch.Generator().manual_seed(seed)

    def scores(self, ref: MlpRef) -> torch.Tensor:
        return torch.rand(ref.hidden, generator=self.generator, dtype=torch.float64)


def make_importance(
    criterion: str | NeuronImportance,
    stats: Mapping[str, NeuronStats] | None = None,
    *,
    seed: int = 0,
    model: nn.Module | None = None,
) -> NeuronImportance:
    """The criterion named `criterion` (one of CRITERIA), or `criterion` itself."""
    if isinstance(criterion, NeuronImportance):
        return criterion
    if criterion == "variance":
        if stats is None:
            raise VBPError("the variance criterion needs statistics")
        return VarianceImportance(stats, model)
    if criterion == "magnitude":
        return MagnitudeImportance(model)
    if criterion == "random":
        return RandomImportance(seed, model)
    raise VBPError(f"criterion {criterion!r}: expected one of {', '.join(CRITERIA)}")


def mlp_scores(mlps: list[MlpRef], importance: NeuronImportance) -> dict[str, torch.Tensor]:
    """Scores of every MLP's neurons, in module order (the order random scores are drawn)."""
    return {ref.name: importance(ref) for ref in mlps}


def select_neurons(
    scores: Mapping[str, torch.Tensor],
    ratio: float,
    *,
    min_keep: int = 1,
    round_to: int = 1,
) -> dict[str, torch.Tensor]:
    """Sorted indices of the neurons each MLP keeps after removing `ratio` of all neurons by
    one global ranking. At least `min_keep` neurons stay per MLP; with `round_to` > 1 each
    kept width is rounded to the nearest multiple (highest scores kept)."""
    if not 0.0 <= ratio < 1.0:
        raise VBPError(f"pruning ratio {ratio}: must be in [0, 1)")
    if round_to < 1:
        raise VBPError(f"round_to {round_to}: must be >= 1")
    names = list(scores)
    flat = torch.cat([scores[n].double() for n in names])
    owner = torch.cat([torch.full((scores[n].numel(),), i) for i, n in enumerate(names)])
    n_remove = int(round(ratio * flat.numel()))
    removed = torch.zeros(flat.numel(), dtype=torch.bool)
    if n_remove:
        # stable sort: ties broken by position, so the result is deterministic
        order = torch.sort(flat, stable=True).indices
        removed[order[:n_remove]] = True
    keep: dict[str, torch.Tensor] = {}
    for i, name in enumerate(names):
        s = scores[name].double()
        width = s.numel()
        n_keep = int((~removed[owner == i]).sum())
        n_keep = max(n_keep, min(min_keep, width))
        if round_to > 1:
            n_keep = min(width, max(round_to, round_to * round(n_keep / round_to)))
        top = torch.sort(s, descending=True, stable=True).indices[:n_keep]
        keep[name] = torch.sort(top).values
    return keep


@torch.no_grad()
def prune_mlp(ref: MlpRef, keep: torch.Tensor, mean: torch.Tensor | None) -> None:
    """Keep hidden neurons `keep` of one MLP in place; fold the removed neurons' means into
    fc2's bias when `mean` is given (mean-shift compensation)."""
    fc1, fc2 = ref.fc1, ref.fc2
    width = ref.hidden
    keep = keep.to(torch.long).cpu()
    if keep.numel() == width:
        return
    removed = torch.ones(width, dtype=torch.bool)
    removed[keep] = False
    w2 = _weight2d(fc2)  # (out, hidden)
    new_bias = fc2.bias.detach().double().clone() if fc2.bias is not None else None
    if mean is not None and removed.any():
        shift = w2[:, removed].double() @ mean.double().to(w2.device)[removed]
        if new_bias is None:  # compensation needs a bias: add one
            new_bias = torch.zeros(w2.shape[0], dtype=torch.float64, device=w2.device)
        new_bias += shift
    dev = fc1.weight.device
    idx = keep.to(dev)
    new_fc1 = resized_layer(fc1, out_features=keep.numel())
    new_fc1.weight.copy_(fc1.weight.detach().index_select(0, idx))
    if fc1.bias is not None:
        new_fc1.bias.copy_(fc1.bias.detach().index_select(0, idx))
    new_fc2 = resized_layer(fc2, in_features=keep.numel(), bias=new_bias is not None)
    new_fc2.weight.copy_(fc2.weight.detach().index_select(1, idx))
    if new_bias is not None:
        new_fc2.bias.copy_(new_bias.to(fc2.weight.dtype))
    ref.module.fc1, ref.module.fc2 = new_fc1, new_fc2


def check_stats_match(mlps: list[MlpRef], stats: Mapping[str, NeuronStats]) -> None:
    widths = {ref.name: ref.hidden for ref in mlps}
    missing = sorted(set(widths) - set(stats))
    extra = sorted(set(stats) - set(widths))
    if missing or extra:
        what = (
            f"the model has {missing[:2]} not in the stats"
            if missing
            else f"the stats have {extra[:2]} not in the model"
        )
        raise VBPError(f"the statistics do not match the model: {what}")
    for name, width in widths.items():
        if stats[name].mean.numel() != width:
            raise VBPError(
                f"the statistics do not match the model: {name} has width {width} in the model and "
                f"{stats[name].mean.numel()} in the stats (collected on another model?)"
            )


def prune_model(
    model: nn.Module,
    stats: Mapping[str, NeuronStats] | None,
    ratio: float,
    *,
    criterion: str | NeuronImportance = "variance",
    compensation: bool = True,
    min_keep: int = 1,
    round_to: int = 1,
    seed: int = 0,
) -> dict[str, int]:
    """Prune `model` in place; returns the new hidden width of every MLP.

    `criterion` is a name of CRITERIA or a `NeuronImportance` (e.g. your own subclass);
    `seed` seeds the random criterion."""
    mlps = find_mlps(model)
    if stats is not None:
        check_stats_match(mlps, stats)
    if compensation and stats is None:
        raise VBPError("mean-shift compensation needs statistics")
    scores = mlp_scores(mlps, make_importance(criterion, stats, seed=seed))
    keep = select_neurons(scores, ratio, min_keep=min_keep, round_to=round_to)
    for ref in mlps:
        mean = stats[ref.name].mean if (compensation and stats is not None) else None
        prune_mlp(ref, keep[ref.name], mean)
    return {ref.name: int(keep[ref.name].numel()) for ref in mlps}


def mlp_mac_costs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """MACs that one hidden neuron costs in each MLP for this input: positions x (in + out).

    Exact for Linear and 1x1 convs (one multiply-add per weight per position)."""
    mlps = find_mlps(model)
    positions: dict[str, int] = {}
    handles = []
    for ref in mlps:

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], name: str = ref.name) -> None:
            x = args[0]
            per = x.shape[-1] if isinstance(module, nn.Linear) else x.shape[1]
            positions[name] = x.numel() // per

        handles.append(ref.fc1.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            model(example)
            model.train(was)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for ref in mlps:
        fin = _weight2d(ref.fc1).shape[1]
        fout = _weight2d(ref.fc2).shape[0]
        out[ref.name] = positions[ref.name] * (fin + fout)
    return out


def ratio_for_mac_reduction(
    scores: Mapping[str, torch.Tensor],
    costs: Mapping[str, int],
    total_macs: int,
    target: float,
    *,
    min_keep: int = 1,
    round_to: int = 1,
) -> float:
    """Smallest global pruning ratio whose selection removes at least `target` of all MACs."""
    if not 0.0 < target < 1.0:
        raise VBPError(f"target MAC reduction {target}: must be in (0, 1)")

    def reduction(ratio: float) -> float:
        keep = select_neurons(scores, ratio, min_keep=min_keep, round_to=round_to)
        removed = sum((scores[n].numel() - keep[n].numel()) * costs[n] for n in scores)
        return removed / total_macs

    ceiling = reduction(1.0 - 1e-9)
    if ceiling < target:
        raise VBPError(
            f"target MAC reduction {target}: MLPs hold at most {ceiling:.1%} of this "
            "model's MACs at the floor of one neuron per block"
        )
    lo, hi = 0.0, 1.0 - 1e-9
    n_total = sum(s.numel() for s in scores.values())
    for _ in range(max(20, math.ceil(math.log2(n_total)) + 2)):
        mid = (lo + hi) / 2
        if reduction(mid) >= target:
            hi = mid
        else:
            lo = mid
    return hi
