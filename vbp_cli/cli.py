"""The `vbp` command line: parse, call `vbp_cli.api`, print. Options live in
`vbp_cli.options`."""

from __future__ import annotations

from shared.cli import create_app, run_app
from shared.options import Invocation, tool_command
from vbp_cli.options import (
    BenchmarkOptions,
    CollectStatsOptions,
    EvaluateOptions,
    ExportOptions,
    FinetuneOptions,
    PruneOptions,
)

app = create_app(
    "vbp",
    "Variance-Based Pruning of trained vision transformers and ConvNeXts (ICCV 2025): "
    "collect MLP activation statistics, prune the lowest-variance neurons globally with "
    "mean-shift compensation, fine-tune with distillation.",
)


def _api():  # noqa: ANN202 (torch and timm load only when a command runs)
    from shared.deps import require

    require("vbp", "timm")
    from vbp_cli import api

    return api


@tool_command(app, "collect-stats", CollectStatsOptions)
def collect_stats_cmd(cfg: CollectStatsOptions, inv: Invocation) -> dict:
    """Mean and variance of every MLP hidden neuron after its activation (every token one
    sample, float64 Welford/Chan). Under torchrun/srun each rank takes a share of the
    images and the statistics are merged exactly."""
    return _api().collect_stats_from_options(cfg, out=inv.run.dir, device=inv.device)[1]


@tool_command(app, "prune", PruneOptions, device=False)
def prune_cmd(cfg: PruneOptions, inv: Invocation) -> dict:
    """Remove the lowest-variance MLP neurons by one global ranking, fold their means into
    fc2's bias, and write a dense, smaller model."""
    _, report = _api().prune_to_file(cfg, out=inv.path("model.safetensors"))
    inv.console.table("vbp prune", ["", "before", "after", "change"], report.rows())
    inv.console.info(f"pruned model: {inv.path('model.safetensors')}")
    return report.metrics()


@tool_command(app, "finetune", FinetuneOptions, train=True)
def finetune_cmd(cfg: FinetuneOptions, inv: Invocation) -> dict:
    """Recover accuracy with logit distillation from the unpruned model (AdamW + cosine, AMP
    on GPU, DDP under torchrun/srun, checkpoints and --resume). An image model trains on
    --data images with timm augmentation and reports top-1; a language model (a pruned
    transformers folder) on --data text:PATH windows, distilling the next-token
    distributions of --teacher (default: the folder it was pruned from), and reports
    held-out perplexity before and after; it is written as the same kind of folder."""
    return _api().finetune(cfg, device=inv.device, run=inv.run)


@tool_command(app, "evaluate", EvaluateOptions, out="optional")
def evaluate_cmd(cfg: EvaluateOptions, inv: Invocation) -> dict:
    """Top-1/top-5 (and agreement with a teacher), params, MACs, batch-1 latency and
    throughput."""
    return _api().evaluate(cfg, device=inv.device)


@tool_command(app, "benchmark", BenchmarkOptions, out="optional")
def benchmark_cmd(cfg: BenchmarkOptions, inv: Invocation) -> dict:
    """Latency and throughput of the dense and pruned models in the same run (interleaved,
    synchronised), and their ratio."""
    result = _api().benchmark(cfg, device=inv.device)
    columns = ("model", "batch_size", "ms_per_batch", "images_per_s", "speedup")
    rows = [tuple(r[c] for c in columns) for r in result["rows"]]
    inv.console.table("vbp benchmark", ["model", "batch", "ms/batch", "images/s", "speed-up"], rows)
    return result


@tool_command(app, "export", ExportOptions, out="none", device=False)
def export_cmd(cfg: ExportOptions, inv: Invocation) -> dict:
    """Export to ONNX, TorchScript, torch.export (.pt2) or a timm folder; each file is loaded
    back and checked against PyTorch on another batch size before it is kept."""
    from shared.deps import require

    if cfg.onnx is not None or cfg.format == "onnx":
        require("vbp", "onnx", "onnxruntime")
    return _api().export(cfg)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
