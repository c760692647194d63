"""Neuron selection and structured removal with mean-shift compensation (VBP steps 2-3).

One global ranking over all MLP neurons of the network (or, with `uniform`, the same share of
every MLP, ranked within it); the lowest fraction goes. For each removed set P of an MLP:
b2 <- b2 + W2[:, P] @ mu[P], then rows P of the input layers (fc1; gate and up for gated
MLPs) and columns P of the down projection are deleted. A down projection without a bias
(LLaMA, Qwen2, Mistral) gets one when compensation is on. Replacing h_i by its mean costs
exactly var_i in expected squared error, which is why variance is the criterion.

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

from vbp_cli.mlps import MlpRef, VBPError, find_mlps, weight_matrix
from vbp_cli.stats import NeuronStats, run_batch

CRITERIA = ("variance", "magnitude", "random", "flap", "wanda")


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
            # plain MLPs only: a gated/packed neuron spans several layers' channels
            refs = find_mlps(self.model)
            self._fc1 = {id(ref.fc1): ref for ref in refs if ref.kind == "plain"}
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
        return self.neuron_stats(ref).var.clone()

    def neuron_stats(self, ref: MlpRef) -> NeuronStats:
        stats = self.stats.get(ref.name)
        if stats is None:
            raise VBPError(f"the {type(self).__name__} criterion needs statistics for {ref.name}")
        if stats.mean.numel() != ref.hidden:
            raise VBPError(
                f"statistics of {ref.name} have {stats.mean.numel()} neurons, the model "
                f"{ref.hidden} (collected before another pruning step?)"
            )
        return stats


def _down_column_norms(ref: MlpRef) -> torch.Tensor:
    return weight_matrix(ref.down_layer).double().square().sum(0).sqrt().cpu()


class FluctuationImportance(VarianceImportance):
    """FLAP's fluctuation metric (An et al., AAAI 2024), structured: the variance of the
    neuron times the squared norm of its down-projection column, i.e. the expected squared
    change of the MLP's output when the neuron is replaced by its mean."""

    def scores(self, ref: MlpRef) -> torch.Tensor:
        return self.neuron_stats(ref).var * _down_column_norms(ref).square()


class WandaImportance(VarianceImportance):
    """Structured Wanda (Sun et al., ICLR 2024): |down-projection column| x the L2 norm of
    the neuron over the data (sqrt(E[h_i^2]) = sqrt(var + mean^2))."""

    def scores(self, ref: MlpRef) -> torch.Tensor:
        s = self.neuron_stats(ref)
        return _down_column_norms(ref) * (s.var + s.mean.square()).sqrt()


class MagnitudeImportance(NeuronImportance):
    """Group L2 norm of everything tied to a neuron (its rows and biases in the input layers,
    both halves of a packed fc1, and its down-projection column), the grouping
    dependency-graph pruners use."""

    def scores(self, ref: MlpRef) -> torch.Tensor:
        hidden = ref.hidden
        sq = weight_matrix(ref.down_layer).double().square().sum(0)
        for layer in ref.input_layers:
            rows = weight_matrix(layer).double().square().sum(1)
            if layer.bias is not None:
                rows = rows + layer.bias.detach().double().square()
            sq = sq + rows.reshape(-1, hidden).sum(0)  # packed: the two halves of neuron i
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
    if criterion in ("flap", "wanda"):
        if stats is None:
            raise VBPError(f"the {criterion} criterion needs statistics")
        cls = FluctuationImportance if criterion == "flap" else WandaImportance
        return cls(stats, model)
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
    uniform: bool = False,
) -> dict[str, torch.Tensor]:
    """Sorted indices of the neurons each MLP keeps after removing `ratio` of all neurons by
    one global ranking (with `uniform`: `ratio` of each MLP's neurons, ranked within the MLP,
    so equal widths stay equal). At least `min_keep` neurons stay per MLP; with `round_to` > 1
    each kept width is rounded to the nearest multiple (highest scores kept)."""
    if not 0.0 <= ratio < 1.0:
        raise VBPError(f"pruning ratio {ratio}: must be in [0, 1)")
    if round_to < 1:
        raise VBPError(f"round_to {round_to}: must be >= 1")
    names = list(scores)
    flat = torch.cat([scores[n].double() for n in names])
    owner = torch.cat([torch.full((scores[n].numel(),), i) for i, n in enumerate(names)])
    n_remove = 0 if uniform else int(round(ratio * flat.numel()))
    removed = torch.zeros(flat.numel(), dtype=torch.bool)
    if n_remove:
        # stable sort: ties broken by position, so the result is deterministic
        order = torch.sort(flat, stable=True).indices
        removed[order[:n_remove]] = True
    keep: dict[str, torch.Tensor] = {}
    for i, name in enumerate(names):
        s = scores[name].double()
        width = s.numel()
        own = width - int(round(ratio * width))
        n_keep = own if uniform else int((~removed[owner == i]).sum())
        n_keep = max(n_keep, min(min_keep, width))
        if round_to > 1:
            n_keep = min(width, max(round_to, round_to * round(n_keep / round_to)))
        top = torch.sort(s, descending=True, stable=True).indices[:n_keep]
        keep[name] = torch.sort(top).values
    return keep


@torch.no_grad()
def prune_mlp(ref: MlpRef, keep: torch.Tensor, mean: torch.Tensor | None) -> None:
    """Keep hidden neurons `keep` of one MLP in place; fold the removed neurons' means into
    the down projection's bias when `mean` is given (mean-shift compensation; a bias is
    added when the layer has none)."""
    down = ref.down_layer
    width = ref.hidden
    keep = keep.to(torch.long).cpu()
    if keep.numel() == width:
        return
    removed = torch.ones(width, dtype=torch.bool)
    removed[keep] = False
    w2 = weight_matrix(down)  # (out, hidden)
    bias = down.bias.detach().double().clone() if down.bias is not None else None
    if mean is not None:
        shift = w2[:, removed.to(w2.device)].double() @ mean.double().to(w2.device)[removed]
        bias = shift if bias is None else bias + shift
    ref.slice(keep, bias)


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
    uniform: bool = False,
) -> dict[str, int]:
    """Prune `model` in place; returns the new hidden width of every MLP.

    `criterion` is a name of CRITERIA or a `NeuronImportance` (e.g. your own subclass);
    `seed` seeds the random criterion; `uniform` removes the same share of every MLP (ranked
    within it), which keeps a Hugging Face model expressible by its stock config."""
    mlps = find_mlps(model)
    if stats is not None:
        check_stats_match(mlps, stats)
    if compensation and stats is None:
        raise VBPError("mean-shift compensation needs statistics")
    scores = mlp_scores(mlps, make_importance(criterion, stats, seed=seed))
    keep = select_neurons(scores, ratio, min_keep=min_keep, round_to=round_to, uniform=uniform)
    for ref in mlps:
        mean = stats[ref.name].mean if (compensation and stats is not None) else None
        prune_mlp(ref, keep[ref.name], mean)
    return {ref.name: int(keep[ref.name].numel()) for ref in mlps}


def mlp_mac_costs(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """MACs that one hidden neuron costs in each MLP for this input: positions x (its weights:
    in per input-layer row, out in the down projection).

    Exact for Linear, Conv1D and 1x1 convs (one multiply-add per weight per position)."""
    mlps = find_mlps(model)
    positions: dict[str, int] = {}
    handles = []
    for ref in mlps:

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], name: str = ref.name) -> None:
            x = args[0]
            per = x.shape[1] if isinstance(module, nn.Conv2d) else x.shape[-1]
            positions[name] = x.numel() // per

        handles.append(ref.fc1.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            run_batch(model, example, next(model.parameters()).device)
            model.train(was)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for ref in mlps:
        per_neuron = sum(
            weight_matrix(x).shape[0] * weight_matrix(x).shape[1] for x in ref.input_layers
        )
        per_neuron = per_neuron // ref.hidden + weight_matrix(ref.down_layer).shape[0]
        out[ref.name] = positions[ref.name] * per_neuron
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
