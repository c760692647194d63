"""The `scorelidar` command line: thin, parses and prints; the method lives in the modules."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shared.cli import (
    CheckpointEveryOpt,
    ConfigOpt,
    DeviceOpt,
    JsonOpt,
    OutOpt,
    QuietOpt,
    ResumeOpt,
    SeedOpt,
    command,
    create_app,
    pick_device,
    run_app,
)

TOOL = "scorelidar"
app = create_app(
    TOOL,
    (
        "Distilled LiDAR scene completion (ScoreLiDAR, ICCV 2025): a diffusion teacher on "
        "sparse convolutions and a few-step student trained by score distillation."
    ),
)

DataOpt = Annotated[
    Path,
    typer.Option(
        "--data", "-d", help="Dataset root in the SemanticKITTI layout (sequences/XX/...)."
    ),
]
SequencesOpt = Annotated[
    str,
    typer.Option(
        "--sequences",
        help="Sequences to use: 'all', a list such as '00-07,09,10', or kitti-train "
        "(00-07, 09, 10) / kitti-val (08).",
    ),
]
StepsOpt = Annotated[int, typer.Option("--steps", "-k", min=1, help="DPM-Solver++ steps.")]
GuidanceOpt = Annotated[
    float,
    typer.Option(
        "--guidance", help="Classifier-free guidance weight (1: no guidance, one pass per step)."
    ),
]
RefineOpt = Annotated[
    Path | None,
    typer.Option("--refine", help="A refinement net from train-refine: x6 points per output."),
]
SolverOpt = Annotated[
    str, typer.Option("--solver", help="sde (DPM-Solver++ SDE, LiDiff's) or ode (DPM-Solver++).")
]


def _require() -> None:
    from shared.deps import require

    require(TOOL, "spconv", "diffusers", "scipy")


def _progress(console):
    return lambda items, desc: console.progress(items, desc)


def _step_hook(bar):
    def hook(step: int, logs: dict[str, float]) -> None:
        bar.advance(**{k: v for k, v in logs.items() if k in ("loss", "vsd", "scene_cd")})

    return hook


@app.command("simulate")
def simulate_cmd(
    ctx: typer.Context,
    out: OutOpt,
    scenes: Annotated[int, typer.Option("--scenes", min=1, help="Sequences to write.")] = 4,
    frames: Annotated[int, typer.Option("--frames", min=1, help="Scans per sequence.")] = 10,
    azimuths: Annotated[
        int, typer.Option("--azimuths", min=16, help="Rays per beam per revolution (64 beams).")
    ] = 512,
    seed: SeedOpt = 0,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Synthetic driving scenes in the SemanticKITTI layout (velodyne/*.bin, labels/*.label,
    poses.txt, calib.txt): a 64-beam sensor ray-cast against ground, cars, buildings, walls,
    poles and one moving car. The same --seed writes the same files."""
    _require()
    from scorelidar_cli.api import simulate_scenes

    with command(ctx, TOOL, out) as run:
        info = simulate_scenes(out, scenes, frames, azimuths, seed, _progress(run.console))
        metrics = run.save_metrics(info | {"data": str(out)})
        run.console.summary(metrics, "scorelidar simulate")


@app.command("train-teacher")
def train_teacher_cmd(
    ctx: typer.Context,
    data: DataOpt,
    out: OutOpt,
    sequences: SequencesOpt = "all",
    preset: Annotated[
        str, typer.Option("--preset", help="small (trains on a CPU) | tiny | lidiff (24 M).")
    ] = "small",
    model_config: Annotated[
        str | None,
        typer.Option(
            "--model-config",
            help='JSON overrides of the preset, e.g. \'{"channels": [16, 32], "decoder": [16]}\'.',
        ),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimizer steps.")] = 2000,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Scenes.")] = 2,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate (cosine).")] = 2e-3,
    cfg_dropout: Annotated[
        float, typer.Option("--cfg-dropout", help="Share of scenes trained unconditionally.")
    ] = 0.1,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    resume: ResumeOpt = False,
    checkpoint_every: CheckpointEveryOpt = 200,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train the LiDiff teacher: noise the ground-truth points, predict the noise
    (MSE + 5 x mean/std regulariser), condition on the partial scan with CFG dropout.
    Runs under torchrun/srun with DDP; --resume continues from resume.pt."""
    _require()
    import torch

    from scorelidar_cli.api import frame_pool, resolve_config
    from scorelidar_cli.model import build_model
    from scorelidar_cli.pipeline import MODEL_FILE, save_model
    from scorelidar_cli.training import TeacherConfig, train_teacher
    from shared import distributed
    from shared.config import parse_json_object

    overrides = parse_json_object(model_config, "--model-config")
    with command(ctx, TOOL, out, resume=resume, checkpoint_every=checkpoint_every) as run:
        dev = pick_device(device)
        distributed.init(dev)
        torch.manual_seed(seed)
        arch = resolve_config(preset, overrides)
        pool = frame_pool(data, sequences, arch.radius)
        net = build_model(arch)
        cfg = TeacherConfig(steps, batch_size, lr, cfg_dropout, seed=seed)
        with run.console.progress_bar("train-teacher", steps) as bar:
            info = train_teacher(
                net,
                pool,
                cfg,
                dev,
                state=run.load_state(),
                on_step=_step_hook(bar),
                save_state=run.step_done,
            )
        if distributed.is_main():
            save_model(
                run.path(MODEL_FILE),
                net,
                "teacher",
                {"steps": steps, "data": str(data), "sequences": sequences},
            )
        from shared.profiling import count_params

        metrics = run.save_metrics(
            info
            | {
                "frames": len(pool),
                "params": count_params(net),
                "world_size": distributed.world_size(),
                "model": str(run.path(MODEL_FILE)),
            }
        )
        run.console.summary(metrics, "scorelidar train-teacher")
        distributed.cleanup()


@app.command("distill")
def distill_cmd(
    ctx: typer.Context,
    teacher: Annotated[Path, typer.Option("--teacher", help="Output dir of train-teacher.")],
    data: DataOpt,
    out: OutOpt,
    sequences: SequencesOpt = "all",
    steps: Annotated[int, typer.Option("--steps", min=1, help="Student updates.")] = 500,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Scenes.")] = 1,
    lr: Annotated[float, typer.Option("--lr", help="Student learning rate.")] = 2e-4,
    fake_lr: Annotated[float, typer.Option("--fake-lr", help="Fake-score learning rate.")] = 2e-4,
    vsd_weight: Annotated[
        float, typer.Option("--vsd-weight", help="Weight of the score-distillation term.")
    ] = 1.0,
    scene_weight: Annotated[
        float, typer.Option("--scene-weight", help="Scene-wise Chamfer weight.")
    ] = 0.5,
    point_weight: Annotated[
        float, typer.Option("--point-weight", help="Point-wise distance-matrix weight.")
    ] = 0.01,
    key_fraction: Annotated[
        float, typer.Option("--key-fraction", help="Share of GT points used as key points.")
    ] = 1 / 30,
    structural: Annotated[
        bool,
        typer.Option("--structural/--no-structural", help="The structural loss (ablation: off)."),
    ] = True,
    real_guidance: Annotated[
        float, typer.Option("--real-guidance", help="CFG weight of the teacher's score.")
    ] = 1.0,
    sampler_steps: Annotated[
        int,
        typer.Option(
            "--sampler-steps",
            min=1,
            help="1: train the one-step sample from x_T (the paper). K > 1 (ours): run the "
            "student's K-step sampler without gradient to a random one of its steps and train "
            "the sample from there, so every step of a K-step completion is trained.",
        ),
    ] = 1,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    resume: ResumeOpt = False,
    checkpoint_every: CheckpointEveryOpt = 100,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Distil the teacher into a few-step student: student and fake score start from the
    teacher; the fake score learns the student's samples (denoising loss); the student
    follows the score-distillation gradient (eps_real - eps_fake) through its one-step
    sample, plus the structural loss (scene Chamfer and key-point distance matrices)."""
    _require()
    import torch

    from scorelidar_cli.api import frame_pool
    from scorelidar_cli.pipeline import MODEL_FILE, load_model, save_model
    from scorelidar_cli.training import DistillConfig, distill_student
    from shared import distributed
    from shared.errors import InputError

    if not 0 < key_fraction <= 1:
        raise InputError(f"--key-fraction {key_fraction}: must be in (0, 1]")
    teacher_net, meta = load_model(teacher)
    with command(ctx, TOOL, out, resume=resume, checkpoint_every=checkpoint_every) as run:
        dev = pick_device(device)
        distributed.init(dev)
        torch.manual_seed(seed)
        pool = frame_pool(data, sequences, teacher_net.config.radius)
        cfg = DistillConfig(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            fake_lr=fake_lr,
            vsd_weight=vsd_weight,
            scene_weight=scene_weight,
            point_weight=point_weight,
            key_fraction=key_fraction,
            structural=structural,
            real_guidance=real_guidance,
            sampler_steps=sampler_steps,
            seed=seed,
        )
        with run.console.progress_bar("distill", steps) as bar:
            student, info = distill_student(
                teacher_net,
                pool,
                cfg,
                dev,
                state=run.load_state(),
                on_step=_step_hook(bar),
                save_state=run.step_done,
            )
        if distributed.is_main():
            save_model(
                run.path(MODEL_FILE),
                student,
                "student" if structural else "student-no-structural",
                {
                    "teacher": str(teacher),
                    "steps": steps,
                    "structural": structural,
                    "sampler_steps": sampler_steps,
                },
            )
        metrics = run.save_metrics(
            info
            | {
                "frames": len(pool),
                "world_size": distributed.world_size(),
                "model": str(run.path(MODEL_FILE)),
            }
        )
        run.console.summary(metrics, "scorelidar distill")
        distributed.cleanup()


@app.command("train-refine")
def train_refine_cmd(
    ctx: typer.Context,
    model: Annotated[Path, typer.Option("--model", "-m", help="Teacher or student dir.")],
    data: DataOpt,
    out: OutOpt,
    sequences: SequencesOpt = "all",
    steps: Annotated[int, typer.Option("--steps", min=1, help="Optimizer steps.")] = 300,
    completion_steps: Annotated[
        int, typer.Option("--completion-steps", min=1, help="Solver steps of the coarse pass.")
    ] = 4,
    up: Annotated[int, typer.Option("--up", min=1, help="Points made from each point.")] = 6,
    lr: Annotated[float, typer.Option("--lr", help="AdamW learning rate.")] = 2e-3,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    resume: ResumeOpt = False,
    checkpoint_every: CheckpointEveryOpt = 100,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """LiDiff's optional refinement: complete every training frame once with --model, then
    train a sparse-conv net to turn each point into --up points (Chamfer to ground truth).
    Use it with `complete --refine DIR` / `evaluate --refine DIR`."""
    _require()
    from scorelidar_cli.api import train_refine_run
    from shared import distributed

    with command(ctx, TOOL, out, resume=resume, checkpoint_every=checkpoint_every) as run:
        dev = pick_device(device)
        distributed.init(dev)
        info = train_refine_run(
            run, model, data, sequences, steps, completion_steps, lr, up, seed, dev
        )
        metrics = run.save_metrics(info | {"world_size": distributed.world_size()})
        run.console.summary(metrics, "scorelidar train-refine")
        distributed.cleanup()


@app.command("complete")
def complete_cmd(
    ctx: typer.Context,
    scans: Annotated[
        list[Path], typer.Argument(help="Scans to complete: .bin (KITTI), .ply, .npy, .pcd.")
    ],
    model: Annotated[Path, typer.Option("--model", "-m", help="A teacher or student dir.")],
    out: OutOpt,
    steps: StepsOpt = 8,
    guidance: GuidanceOpt = 1.0,
    solver: SolverOpt = "sde",
    refine: RefineOpt = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Complete each scan into a dense scene: writes <out>/<scan name>.ply and the time per
    frame (sampling only) in metrics.json."""
    _require()
    from scorelidar_cli.api import complete_files

    with command(ctx, TOOL, out) as run:
        dev = pick_device(device, run.console)
        rows = complete_files(scans, model, out, steps, guidance, solver, seed, dev, refine)
        run.console.table(
            f"scorelidar complete ({steps} steps)",
            ["scan", "in pts", "out pts", "s/frame", "kept<=5cm"],
            [
                (Path(r["scan"]).name, r["input_points"], r["output_points"], r["seconds"],
                 r["kept_within_5cm"])
                for r in rows
            ],
        )  # fmt: skip
        metrics = run.save_metrics(
            {
                "steps": steps,
                "s_per_frame": sum(r["seconds"] for r in rows) / len(rows),
                "scans": rows,
            }
        )
        if json_output:
            run.console.summary(metrics)


@app.command("evaluate")
def evaluate_cmd(
    ctx: typer.Context,
    model: Annotated[
        list[Path], typer.Option("--model", "-m", help="Model dir; repeat to compare several.")
    ],
    data: DataOpt,
    steps: Annotated[
        list[int], typer.Option("--steps", "-k", min=1, help="Solver steps; repeat for several.")
    ],
    sequences: SequencesOpt = "all",
    guidance: GuidanceOpt = 1.0,
    solver: SolverOpt = "sde",
    refine: Annotated[
        Path | None,
        typer.Option("--refine", help="Also score every model after this refinement net."),
    ] = None,
    max_frames: Annotated[
        int, typer.Option("--max-frames", min=0, help="Evaluate at most N frames (0: all).")
    ] = 0,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Optional directory for metrics.json.")
    ] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Chamfer distance, BEV JSD, precision/recall/F-score AUC (5-10 cm), IoU at 0.5/0.2/0.1 m
    (+-50 m) and seconds per frame, for every model at every step count, side by side."""
    _require()
    from scorelidar_cli.api import evaluate_models

    with command(ctx, TOOL, out) as run:
        dev = pick_device(device, run.console)
        rows = evaluate_models(
            model, data, sequences, steps, guidance, solver, seed, max_frames, dev,
            _progress(run.console), refine,
        )  # fmt: skip
        cols = ["cd", "jsd", "fscore", "iou_0.5m", "iou_0.2m", "iou_0.1m", "s_per_frame"]
        run.console.table(
            f"scorelidar evaluate ({rows[0]['frames']} frames; IoU at 0.5 / 0.2 / 0.1 m)",
            ["model", "role", "steps", "CD", "JSD", "F", "IoU.5", "IoU.2", "IoU.1", "s/frame"],
            [(Path(r["model"]).name, r["role"], r["steps"], *[r[c] for c in cols])
             for r in rows],
        )  # fmt: skip
        metrics = run.save_metrics({"rows": rows})
        if json_output:
            run.console.summary(metrics)


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
