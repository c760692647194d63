"""The registry entry of `hello` (entry point group efficient_learning.tools)."""

from shared.registry import ToolSpec

TOOL = ToolSpec(
    "dataset distillation with a CLIP+LoRA label projector (open_clip)",
    "hello: distil digits to IPC 10, projector vs hard labels",
    ("benchmarks.hello_storage",),
    {"open_clip": "open_clip_torch", "timm": "timm"},
)
