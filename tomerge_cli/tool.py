"""The registry entry of `tomerge` (entry point group efficient_learning.tools)."""

from shared.registry import ToolSpec

TOOL = ToolSpec(
    name="tomerge",
    package="tomerge_cli",
    extra="tomerge",
    summary="importance-based token merging for diffusers pipelines",
    app="tomerge_cli.cli:app",
    demo="tomerge_cli.demo",
    demo_title="tomerge: a tiny offline pipeline with and without token merging",
    benchmarks=("benchmarks.tomerge_speed", "benchmarks.tomerge_fidelity"),
)
