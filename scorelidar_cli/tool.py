"""The registry entry of `scorelidar` (entry point group efficient_learning.tools)."""

from shared.registry import ToolSpec

TOOL = ToolSpec(
    name="scorelidar",
    package="scorelidar_cli",
    extra="scorelidar",
    summary="distilled LiDAR scene completion (spconv)",
    app="scorelidar_cli.cli:app",
    demo="scorelidar_cli.demo",
    demo_title="scorelidar: complete a simulated LiDAR scan, teacher vs distilled student",
    benchmarks=("benchmarks.scorelidar_bench",),
)
