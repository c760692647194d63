"""The `scorelidar` command line: parses, calls `scorelidar_cli.api`, prints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from scorelidar_cli.api import (
    CompleteOptions,
    DistillOptions,
    EvaluateOptions,
    SimulateOptions,
    TrainRefineOptions,
    TrainTeacherOptions,
)
from shared.cli import create_app, run_app
from shared.options import Invocation, tool_command

app = create_app(
    "scorelidar",
    "Distilled LiDAR scene completion (ScoreLiDAR, ICCV 2025): a diffusion teacher on sparse "
    "convolutions and a few-step student trained by score distillation.",
)


def _progress(inv: Invocation) -> Any:
    return lambda items, desc: inv.console.progress(items, desc)


@tool_command(app, "simulate", SimulateOptions, device=False)
def simulate_cmd(cfg: SimulateOptions, inv: Invocation) -> dict:
    """Synthetic driving scenes in the SemanticKITTI layout (velodyne/*.bin, labels/*.label,
    poses.txt, calib.txt): a 64-beam sensor ray-cast against ground, cars, buildings, walls,
    poles and one moving car. The same --seed writes the same files."""
    from scorelidar_cli import api

    return api.simulate_scenes(cfg, inv.run.dir, _progress(inv))


@tool_command(app, "train-teacher", TrainTeacherOptions, train=True)
def train_teacher_cmd(cfg: TrainTeacherOptions, inv: Invocation) -> dict:
    """Train the LiDiff teacher: noise the ground-truth points, predict the noise
    (MSE + 5 x mean/std regulariser), condition on the partial scan with CFG dropout.
    Runs under torchrun/srun with DDP; --resume continues from resume.pt."""
    from scorelidar_cli import api

    return api.train_teacher_model(cfg, inv.run, inv.device)[1]


@tool_command(app, "distill", DistillOptions, train=True)
def distill_cmd(cfg: DistillOptions, inv: Invocation) -> dict:
    """Distil the teacher into a few-step student: student and fake score start from the
    teacher; the fake score learns the student's samples (denoising loss); the student
    follows the score-distillation gradient (eps_real - eps_fake) through its one-step
    sample, plus the structural loss (scene Chamfer and key-point distance matrices)."""
    from scorelidar_cli import api

    return api.distill_model(cfg, inv.run, inv.device)[1]


@tool_command(app, "train-refine", TrainRefineOptions, train=True)
def train_refine_cmd(cfg: TrainRefineOptions, inv: Invocation) -> dict:
    """LiDiff's optional refinement: complete every training frame once with --model, then
    train a sparse-conv net to turn each point into --up points (Chamfer to ground truth).
    Use it with `complete --refine DIR` / `evaluate --refine DIR`."""
    from scorelidar_cli import api

    return api.train_refine_model(cfg, inv.run, inv.device)[1]


@tool_command(app, "complete", CompleteOptions)
def complete_cmd(cfg: CompleteOptions, inv: Invocation) -> dict:
    """Complete each scan into a dense scene: writes <out>/<scan name>.ply (scans from several
    folders keep their path below the common folder, e.g. <out>/00/velodyne/000000.ply) and
    the time per frame (sampling only) in metrics.json."""
    from scorelidar_cli import api

    metrics = api.complete_files(cfg, inv.run.dir, inv.device)
    inv.console.table(
        f"scorelidar complete ({cfg.steps} steps)",
        ["scan", "in pts", "out pts", "s/frame", "kept<=5cm"],
        [(str(Path(r["output"]).relative_to(inv.run.dir)), r["input_points"],
          r["output_points"], r["seconds"], r["kept_within_5cm"]) for r in metrics["scans"]],
    )  # fmt: skip
    return metrics


@tool_command(app, "evaluate", EvaluateOptions, out="optional")
def evaluate_cmd(cfg: EvaluateOptions, inv: Invocation) -> dict:
    """Chamfer distance, BEV JSD, precision/recall/F-score AUC (5-10 cm), IoU at 0.5/0.2/0.1 m
    (+-50 m), seconds per frame and the speed-up over the first row (with its 95% interval),
    for every model at every step count, side by side."""
    from scorelidar_cli import api
    from scorelidar_cli.timing import speedup_text

    rows = api.evaluate_models(cfg, inv.device, _progress(inv))
    cols = ["cd", "jsd", "fscore", "iou_0.5m", "iou_0.2m", "iou_0.1m", "s_per_frame"]
    inv.console.table(
        f"scorelidar evaluate ({rows[0]['frames']} frames; IoU at 0.5 / 0.2 / 0.1 m; "
        f"{cfg.rounds} timing round(s), order rotated; speed-up over the first row, 95% "
        "interval)",
        ["model", "role", "steps", "CD", "JSD", "F", "IoU.5", "IoU.2", "IoU.1", "s/frame",
         "speed-up"],
        [(Path(r["model"]).name, r["role"], r["steps"], *[r[c] for c in cols],
          speedup_text(r))
         for r in rows],
    )  # fmt: skip
    return {"rows": rows}


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
