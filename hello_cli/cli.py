"""The `hello` command line: parse, call hello_cli.api, print. Options are declared once, on
the dataclasses of hello_cli.api."""

from __future__ import annotations

from typing import Any

from hello_cli.api import (
    BuildProjectorOptions,
    DistillOptions,
    EvaluateOptions,
    SynthesizeOptions,
    TrainStudentOptions,
)
from shared.cli import create_app, run_app
from shared.options import Invocation, tool_command

app = create_app(
    "hello",
    (
        "Label-lightened dataset distillation (HeLlO, ICCV 2025): a CLIP+LoRA label projector"
        " replaces gigabytes of stored soft labels."
    ),
)


@tool_command(app, "build-projector", BuildProjectorOptions)
def build_projector_cmd(cfg: BuildProjectorOptions, inv: Invocation) -> dict[str, Any]:
    """The zero-shot projector: encoder + W from the class names' CLIP text embeddings
    (open_clip) or from class-mean features on real data (timm). No low-rank factors yet."""
    from hello_cli import api

    return api.run_build_projector(cfg, out=inv.run.dir, device=inv.device)[1]


@tool_command(app, "distill", DistillOptions, train=True)
def distill_cmd(cfg: DistillOptions, inv: Invocation) -> dict[str, Any]:
    """Train low-rank updates of the projector against the teacher's soft labels on real
    images; save only the factors; report its storage and its agreement with the teacher."""
    from hello_cli import api

    return api.run_distill(cfg, run=inv.run, device=inv.device)[1]


@tool_command(app, "synthesize", SynthesizeOptions)
def synthesize_cmd(cfg: SynthesizeOptions, inv: Invocation) -> dict[str, Any]:
    """RDED-style synthetic images: random crops scored by the teacher's cross-entropy, the
    lowest kept and tiled 2x2; writes an image folder (with classes.json for the order)."""
    from hello_cli import api

    return api.run_synthesize(cfg, out=inv.run.dir, device=inv.device)[2]


@tool_command(app, "train-student", TrainStudentOptions, train=True)
def train_student_cmd(cfg: TrainStudentOptions, inv: Invocation) -> dict[str, Any]:
    """Train a student from scratch on augmented synthetic images, labels computed for every
    augmented batch; report real-validation top-1 and the label storage the run needed."""
    from hello_cli import api

    return api.run_train_student(cfg, run=inv.run, device=inv.device)[1]


@tool_command(app, "evaluate", EvaluateOptions, out="optional")
def evaluate_cmd(cfg: EvaluateOptions, inv: Invocation) -> dict[str, Any]:
    """Projector vs teacher on real validation images (top-1, agreement) and the storage
    table: projector bytes vs the stored soft labels it replaces."""
    from hello_cli import api

    metrics = api.run_evaluate(cfg, device=inv.device)
    rows = metrics["storage"]
    inv.console.table(
        "label storage (bytes)",
        ["setting", "stored soft labels", "projector", "projector / stored (%)"],
        [list(r.values()) for r in rows],
    )
    return metrics


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
