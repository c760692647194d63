"""The registry entry of `vbp` (entry point group efficient_learning.tools)."""

from shared.registry import ToolSpec

TOOL = ToolSpec(
    name="vbp",
    package="vbp_cli",
    extra="vbp",
    summary="Variance-Based Pruning of trained networks (timm)",
    app="vbp_cli.cli:app",
    demo="vbp_cli.demo",
    demo_title="vbp: prune a digits ViT by 50%",
    benchmarks=("benchmarks.vbp_ablation", "benchmarks.vbp_speed"),
)
