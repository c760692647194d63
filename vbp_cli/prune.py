"""Neuron selection and structured removal with mean-shift compensation (VBP steps 2-3).

One global ranking over all MLP neurons of the network; the lowest fraction goes. For each
removed set P of an MLP: b2 <- b2 + W2[:, P] @ mu[P], then rows P of fc1 and columns P of
fc2 are deleted. Replacing h_i by its mean costs exactly var_i in expected squared error,
which is why variance is the criterion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from shared.errors import InputError
from vbp_cli.mlps import MlpRef, find_mlps, resized_layer
from vbp_cli.stats import NeuronStats

CRITERIA = ("variance", "magnitude", "random")


def _weight2d(layer: nn.Module) -> torch.Tensor:
    return layer.weight.detach().reshape(layer.weight.shape[0], -1)


def neuron_scores(
    ref: MlpRef, stats: NeuronStats | None, criterion: str, generator: torch.Generator
) -> torch.Tensor:
    """Importance of each hidden neuron of one MLP (higher = keep)."""
    if criterion == "variance":
        if stats is None:
            raise InputError(f"variance criterion needs statistics for {ref.name}")
        return stats.var.clone()
    if criterion == "magnitude":
        # Group L2 norm of everything tied to the neuron (fc1 row + bias, fc2 column), the
        # grouping dependency-graph pruners use.
        sq = _weight2d(ref.fc1).double().square().sum(1) + _weight2d(ref.fc2).double().square().sum(
            0
        )
        if ref.fc1.bias is not None:
            sq = sq + ref.fc1.bias.detach().double().square()
        return sq.sqrt().cpu()
    if criterion == "random":
        return torch.rand(ref.hidden, generator=generator, dtype=torch.float64)
    raise InputError(f"--criterion {criterion!r}: expected one of {', '.join(CRITERIA)}")


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
        raise InputError(f"--ratio {ratio}: must be in [0, 1)")
    if round_to < 1:
        raise InputError(f"--round-to {round_to}: must be >= 1")
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
        raise InputError(f"--stats do not match the model: {what}")
    for name, width in widths.items():
        if stats[name].mean.numel() != width:
            raise InputError(
                f"--stats do not match the model: {name} has width {width} in the model and "
                f"{stats[name].mean.numel()} in the stats (collected on another model?)"
            )


def prune_model(
    model: nn.Module,
    stats: Mapping[str, NeuronStats] | None,
    ratio: float,
    *,
    criterion: str = "variance",
    compensation: bool = True,
    min_keep: int = 1,
    round_to: int = 1,
    seed: int = 0,
) -> dict[str, int]:
    """Prune `model` in place; returns the new hidden width of every MLP."""
    mlps = find_mlps(model)
    if stats is not None:
        check_stats_match(mlps, stats)
    if compensation and stats is None:
        raise InputError("mean-shift compensation needs statistics (--stats)")
    generator = torch.Generator().manual_seed(seed)
    scores = {
        ref.name: neuron_scores(ref, stats.get(ref.name) if stats else None, criterion, generator)
        for ref in mlps
    }
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
        raise InputError(f"--target-macs-reduction {target}: must be in (0, 1)")

    def reduction(ratio: float) -> float:
        keep = select_neurons(scores, ratio, min_keep=min_keep, round_to=round_to)
        removed = sum((scores[n].numel() - keep[n].numel()) * costs[n] for n in scores)
        return removed / total_macs

    ceiling = reduction(1.0 - 1e-9)
    if ceiling < target:
        raise InputError(
            f"--target-macs-reduction {target}: MLPs hold at most {ceiling:.1%} of this "
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
