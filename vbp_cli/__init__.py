"""Variance-Based Pruning (ICCV 2025) for timm models.

    from vbp_cli import collect_stats, prune, load_model
    stats = collect_stats(model, batches)          # {mlp name: NeuronStats}
    widths = prune(model, stats, ratio=0.5)        # in place, dense, mean-shift compensated
    prune(model, stats, 0.5, criterion=MagnitudeImportance())  # or any importance object
    model = load_model("runs/pruned")              # a plain nn.Module

Imports are lazy so that `vbp --help` does not load torch.
"""

from __future__ import annotations

from shared.lazy import lazy_exports

_EXPORTS = {
    "collect_stats": "vbp_cli.stats:collect_stats",
    "NeuronStats": "vbp_cli.stats:NeuronStats",
    "prune": "vbp_cli.prune:prune_model",
    "find_mlps": "vbp_cli.mlps:find_mlps",
    "NeuronImportance": "vbp_cli.prune:NeuronImportance",
    "VarianceImportance": "vbp_cli.prune:VarianceImportance",
    "MagnitudeImportance": "vbp_cli.prune:MagnitudeImportance",
    "RandomImportance": "vbp_cli.prune:RandomImportance",
    "load_model": "vbp_cli.models:load_model",
    "save_model": "vbp_cli.models:save_model",
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
