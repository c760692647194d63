"""The registry entry of `scorelidar` (entry point group efficient_learning.tools)."""

from shared.registry import ToolSpec

TOOL = ToolSpec(
    "distilled LiDAR scene completion (spconv)",
    "scorelidar: complete a simulated LiDAR scan, teacher vs distilled student",
    ("benchmarks.scorelidar_bench",),
    {"spconv": "spconv", "diffusers": "diffusers", "scipy": "scipy"},
)
