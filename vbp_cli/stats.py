"""Post-activation statistics of every MLP hidden neuron (VBP step 1).

The neuron is the down projection's input: act(up(x)) for plain MLPs, act(gate(x)) * up(x)
for gated ones. Every token (or every spatial position, for 1x1-conv MLPs) of every image or
text window is one sample.
Each batch's moments are merged into float64 running (count, mean, M2) with Chan's
parallel formula, which is also how statistics from several processes are combined:
merging is exact, so N processes give the same result as one.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vbp_cli.mlps import MlpRef, VBPError, find_mlps


@dataclass
class NeuronStats:
    """Running moments of one MLP's hidden neurons (float64)."""

    count: int
    mean: torch.Tensor  # (hidden,)
    m2: torch.Tensor  # (hidden,) sum of squared deviations

    @classmethod
    def empty(cls, width: int) -> NeuronStats:
        zeros = torch.zeros(width, dtype=torch.float64)
        return cls(0, zeros, zeros.clone())

    @property
    def var(self) -> torch.Tensor:
        """Population variance (the expected squared error of replacing h_i by mu_i)."""
        return self.m2 / max(self.count, 1)

    def merge(self, count: int, mean: torch.Tensor, m2: torch.Tensor) -> None:
        """Chan et al.'s pairwise update: (n_a, mean_a, M2_a) + (n_b, mean_b, M2_b)."""
        if count == 0:
            return
        mean, m2 = mean.to(torch.float64).cpu(), m2.to(torch.float64).cpu()
        if self.count == 0:
            self.count, self.mean, self.m2 = count, mean.clone(), m2.clone()
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + m2 + delta.square() * (self.count * count / total)
        self.count = total

    def update(self, samples: torch.Tensor) -> None:
        """Merge a (n, hidden) block of samples, then Chan's update of the float64
        accumulators.

        The block's moments come from sums of (x - K), K the running mean so far (or the
        block's first sample): two plain reductions in the activations' precision, about
        twice as fast as a fused variance kernel, and without cancellation because K is close
        to the mean (a constant neuron gives exactly zero variance)."""
        x = samples.detach()
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()  # bf16/fp16 under AMP
        n = x.shape[0]
        if n == 0:
            return
        shift = self.mean.to(x) if self.count else x[0].clone()
        d = x - shift
        s1 = d.sum(0).double()
        s2 = d.square().sum(0).double()
        mean = shift.double() + s1 / n
        m2 = (s2 - s1 * s1 / n).clamp_min(0.0)
        self.merge(n, mean, m2)


def _samples(layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """fc2's input as (samples, hidden): tokens for Linear, positions for 1x1 conv."""
    if isinstance(layer, nn.Conv2d):
        return hidden.movedim(1, -1).reshape(-1, hidden.shape[1])
    return hidden.reshape(-1, hidden.shape[-1])


class StatsCollector:
    """Forward pre-hooks on every down projection that accumulate its input's moments."""

    def __init__(self, model: nn.Module, mlps: list[MlpRef] | None = None) -> None:
        self.mlps = mlps if mlps is not None else find_mlps(model)
        self.stats = {ref.name: NeuronStats.empty(ref.hidden) for ref in self.mlps}
        self.mask: torch.Tensor | None = None  # (batch, tokens) attention mask of the batch
        self._handles = [
            ref.down_layer.register_forward_pre_hook(self._hook(ref)) for ref in self.mlps
        ]

    def _hook(self, ref: MlpRef):  # noqa: ANN202
        stats = self.stats[ref.name]

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            hidden = args[0]
            if self.mask is not None and hidden.shape[:-1] == self.mask.shape:
                stats.update(hidden[self.mask])  # padding tokens are not samples
            else:
                stats.update(_samples(module, hidden))

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> StatsCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def merge_across_ranks(stats: dict[str, NeuronStats]) -> dict[str, NeuronStats]:
    """Combine every rank's statistics exactly (Chan), in rank order, on all ranks."""
    from shared import distributed

    if distributed.world_size() == 1:
        return stats
    parts = distributed.all_gather_object({k: (s.count, s.mean, s.m2) for k, s in stats.items()})
    merged = {k: NeuronStats.empty(s.mean.numel()) for k, s in stats.items()}
    for part in parts:
        for name, (count, mean, m2) in part.items():
            merged[name].merge(count, mean, m2)
    return merged


def run_batch(model: nn.Module, batch: Any, device: torch.device) -> Any:
    """`model(batch)` for a tensor, `model(**batch)` for a dict of keyword inputs (e.g. a
    tokenizer's input_ids/attention_mask), `model(*batch)` for a tuple or list."""
    if isinstance(batch, torch.Tensor):
        return model(batch.to(device, non_blocking=True))
    if isinstance(batch, Mapping):
        return model(**{k: _to(v, device) for k, v in batch.items()})
    if isinstance(batch, (tuple, list)):
        return model(*(_to(v, device) for v in batch))
    raise VBPError(f"a batch must be a tensor, a dict or a tuple, not {type(batch).__name__}")


def _to(value: Any, device: torch.device) -> Any:
    return value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value


@torch.no_grad()
def collect_stats(
    model: nn.Module,
    batches: Iterable[torch.Tensor | Mapping[str, Any]],
    *,
    device: torch.device | str = "cpu",
    amp: bool = False,
) -> dict[str, NeuronStats]:
    """VBP statistics of `model` over batches: preprocessed image tensors, or dicts of
    keyword inputs (`model(**batch)`, e.g. {"input_ids": ..., "attention_mask": ...}).
    With an attention mask, only the unmasked tokens count.

    Under torch.distributed each rank passes its own shard; the result is merged exactly.
    """
    from shared.device import autocast

    device = torch.device(device)
    model.eval()
    with StatsCollector(model) as collector:
        for batch in batches:
            mask = batch.get("attention_mask") if isinstance(batch, Mapping) else None
            collector.mask = mask.to(device).bool() if isinstance(mask, torch.Tensor) else None
            with autocast(device, enabled=amp):
                run_batch(model, batch, device)
    return merge_across_ranks(collector.stats)
