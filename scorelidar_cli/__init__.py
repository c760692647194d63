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

from shared.lazy import lazy_exports

# module -> the names it exports
_MODULES = {
    "model": ("ModelConfig", "PRESETS", "build_model"),
    "diffusion": ("Schedule", "sample", "lidiff_loss"),
    "distill": ("distillation_term", "fake_score_loss", "student_sample"),
    "structural": ("structural_loss", "chamfer_loss"),
    "metrics": ("completion_metrics",),
    "pipeline": ("load_model", "save_model", "complete_scan"),
    "io": ("read_scan", "write_scan"),
    "dataset": ("open_dataset",),
    "simulate": ("simulate_sequence",),
    "api": (
        "SimulateOptions",
        "TrainTeacherOptions",
        "DistillOptions",
        "TrainRefineOptions",
        "CompleteOptions",
        "EvaluateOptions",
        "simulate_scenes",
        "train_teacher_model",
        "distill_model",
        "train_refine_model",
        "complete_files",
        "evaluate_models",
    ),
}
_EXPORTS = {
    name: f"scorelidar_cli.{mod}:{name}" for mod, names in _MODULES.items() for name in names
}
__all__ = sorted(_EXPORTS)
__getattr__ = lazy_exports(__name__, _EXPORTS)
