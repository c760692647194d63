"""The registry entry of `tomerge` (entry point group efficient_learning.tools)."""

from shared.registry import ToolSpec

TOOL = ToolSpec(
    "importance-based token merging for diffusers pipelines",
    "tomerge: a tiny offline pipeline with and without token merging",
    ("benchmarks.tomerge_speed", "benchmarks.tomerge_fidelity"),
    {
        "diffusers": "diffusers",
        "transformers": "transformers",
        "timm": "timm",
        "torchmetrics": "torchmetrics",
    },
)
