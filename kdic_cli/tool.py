"""The registry entry of `kdic` (entry point group efficient_learning.tools)."""

from shared.registry import ToolSpec

TOOL = ToolSpec(
    name="kdic",
    package="kdic_cli",
    extra="kdic",
    summary="knowledge distillation for learned image codecs (compressai)",
    app="kdic_cli.cli:app",
    demo="kdic_cli.demo",
    demo_title="kdic: compress a photo with a small codec and its distilled student",
    benchmarks=("benchmarks.kdic_rd",),
)
