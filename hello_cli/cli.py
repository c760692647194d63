"""The `hello` command line: parse, call hello_cli.api, print. Options are declared once, on
the dataclasses of hello_cli.api."""

from __future__ import annotations

from typing import Any

# the options' module is light (torch loads inside its functions): import it whole
from hello_cli import api
from shared.cli import create_app, run_app
from shared.options import Invocation, tool_command

app = create_app(
    "hello",
    (
        "Label-lightened dataset distillation (HeLlO, ICCV 2025): a CLIP+LoRA label projector"
        " replaces gigabytes of stored soft labels."
    ),
)


@tool_command(app, "build-projector", api.BuildProjectorOptions)
def build_projector_cmd(cfg: api.BuildProjectorOptions, inv: Invocation) -> dict[str, Any]:
    """The zero-shot projector: encoder + W from the class names' CLIP text embeddings
    (open_clip) or from class-mean features on real data (timm). No low-rank factors yet."""
    return api.run_build_projector(cfg, out=inv.run.dir, device=inv.device)[1]


@tool_command(app, "distill", api.DistillOptions, train=True)
def distill_cmd(cfg: api.DistillOptions, inv: Invocation) -> dict[str, Any]:
    """Train low-rank updates of the projector against the teacher's soft labels on real
    images; save only the factors; report its storage and its agreement with the teacher."""
    return api.run_distill(cfg, run=inv.run, device=inv.device)[1]


@tool_command(app, "synthesize", api.SynthesizeOptions)
def synthesize_cmd(cfg: api.SynthesizeOptions, inv: Invocation) -> dict[str, Any]:
    """RDED-style synthetic images: random crops scored by the teacher's cross-entropy, the
    lowest kept and tiled 2x2; writes an image folder (with classes.json for the order)."""
    return api.run_synthesize(cfg, out=inv.run.dir, device=inv.device)[2]


@tool_command(app, "train-student", api.TrainStudentOptions, train=True)
def train_student_cmd(cfg: api.TrainStudentOptions, inv: Invocation) -> dict[str, Any]:
    """Train a student from scratch on augmented synthetic images, labels computed for every
    augmented batch; report real-validation top-1 and the label storage the run needed."""
    return api.run_train_student(cfg, run=inv.run, device=inv.device)[1]


@tool_command(app, "evaluate", api.EvaluateOptions, out="optional")
def evaluate_cmd(cfg: api.EvaluateOptions, inv: Invocation) -> dict[str, Any]:
    """Projector vs teacher on real validation images (top-1, agreement) and the storage
    table: projector bytes vs the stored soft labels it replaces."""
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
