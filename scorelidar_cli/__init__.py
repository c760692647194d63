"""ScoreLiDAR (ICCV 2025): LiDAR scene completion by a LiDiff-style diffusion teacher and a
few-step student distilled with variational score distillation and a structural loss.

    from scorelidar_cli import build_model, load_model, complete_scan, read_scan
    net, meta = load_model("runs/student")                 # a directory written by the CLI
    points, seconds = complete_scan(net, read_scan("scan.bin"), steps=8)

    from scorelidar_cli import distillation_term, structural_loss   # in your own loop

    from scorelidar_cli import DistillOptions, distill_model           # what `distill` runs
    student, metrics = distill_model(DistillOptions(teacher="runs/teacher", data="sim"))

Imports are lazy so that `scorelidar --help` does not load torch.
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "ModelConfig": ("scorelidar_cli.model", "ModelConfig"),
    "PRESETS": ("scorelidar_cli.model", "PRESETS"),
    "build_model": ("scorelidar_cli.model", "build_model"),
    "Schedule": ("scorelidar_cli.diffusion", "Schedule"),
    "sample": ("scorelidar_cli.diffusion", "sample"),
    "lidiff_loss": ("scorelidar_cli.diffusion", "lidiff_loss"),
    "distillation_term": ("scorelidar_cli.distill", "distillation_term"),
    "fake_score_loss": ("scorelidar_cli.distill", "fake_score_loss"),
    "student_sample": ("scorelidar_cli.distill", "student_sample"),
    "structural_loss": ("scorelidar_cli.structural", "structural_loss"),
    "chamfer_loss": ("scorelidar_cli.structural", "chamfer_loss"),
    "completion_metrics": ("scorelidar_cli.metrics", "completion_metrics"),
    "load_model": ("scorelidar_cli.pipeline", "load_model"),
    "save_model": ("scorelidar_cli.pipeline", "save_model"),
    "complete_scan": ("scorelidar_cli.pipeline", "complete_scan"),
    "read_scan": ("scorelidar_cli.io", "read_scan"),
    "write_scan": ("scorelidar_cli.io", "write_scan"),
    "open_dataset": ("scorelidar_cli.dataset", "open_dataset"),
    "simulate_sequence": ("scorelidar_cli.simulate", "simulate_sequence"),
    "SimulateOptions": ("scorelidar_cli.api", "SimulateOptions"),
    "TrainTeacherOptions": ("scorelidar_cli.api", "TrainTeacherOptions"),
    "DistillOptions": ("scorelidar_cli.api", "DistillOptions"),
    "TrainRefineOptions": ("scorelidar_cli.api", "TrainRefineOptions"),
    "CompleteOptions": ("scorelidar_cli.api", "CompleteOptions"),
    "EvaluateOptions": ("scorelidar_cli.api", "EvaluateOptions"),
    "simulate_scenes": ("scorelidar_cli.api", "simulate_scenes"),
    "train_teacher_model": ("scorelidar_cli.api", "train_teacher_model"),
    "distill_model": ("scorelidar_cli.api", "distill_model"),
    "train_refine_model": ("scorelidar_cli.api", "train_refine_model"),
    "complete_files": ("scorelidar_cli.api", "complete_files"),
    "evaluate_models": ("scorelidar_cli.api", "evaluate_models"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        module, attr = _EXPORTS[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'scorelidar_cli' has no attribute {name!r}")
