"""The registry entry of `vbp` (entry point group efficient_learning.tools)."""

from shared.registry import ToolSpec

TOOL = ToolSpec(
    "Variance-Based Pruning of trained networks (timm)",
    "vbp: prune a digits ViT by 50%",
    ("benchmarks.vbp_ablation", "benchmarks.vbp_speed"),
    {"timm": "timm", "onnx": "onnx", "onnxruntime": "onnxruntime"},
)
