"""The registry entry of `hello` (entry point group efficient_learning.tools)."""

from shared.registry import ToolSpec

TOOL = ToolSpec(
    name="hello",
    package="hello_cli",
    extra="hello",
    summary="dataset distillation with a CLIP+LoRA label projector (open_clip)",
    app="hello_cli.cli:app",
    demo="hello_cli.demo",
    demo_title="hello: distil digits to IPC 10, projector vs hard labels",
    benchmarks=("benchmarks.hello_storage",),
)
