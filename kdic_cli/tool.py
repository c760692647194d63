"""The registry entry of `kdic` (entry point group efficient_learning.tools)."""

from shared.registry import ToolSpec

TOOL = ToolSpec(
    "knowledge distillation for learned image codecs (compressai)",
    "kdic: shipped codec and distilled student vs JPEG/WebP on held-out photos",
    ("benchmarks.kdic_students", "benchmarks.kdic_rd"),
    {"compressai": "compressai", "bjontegaard": "bjontegaard", "pytorch_msssim": "pytorch-msssim"},
)
