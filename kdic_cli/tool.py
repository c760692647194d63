"""The registry entry of `kdic` (entry point group efficient_learning.tools)."""

from shared.registry import ToolSpec

TOOL = ToolSpec(
    "knowledge distillation for learned image codecs (compressai)",
    "kdic: compress a photo with a small codec and its distilled student",
    ("benchmarks.kdic_rd",),
)
