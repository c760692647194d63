"""The `vbp` command line: thin, parses and prints; the method lives in the modules."""

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

app = create_app(
    "vbp",
    "Variance-Based Pruning of trained vision transformers and ConvNeXts (ICCV 2025): "
    "collect MLP activation statistics, prune the lowest-variance neurons globally with "
    "mean-shift compensation, fine-tune with distillation.",
)

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="timm model name (e.g. deit_base_patch16_224) or the "
        "path of a model vbp wrote (a directory or its model.safetensors).",
    ),
]
CheckpointOpt = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint",
        help="Weights for a timm model name: .pth/.pt (read with weights_only) or .safetensors.",
    ),
]
PretrainedOpt = Annotated[
    bool, typer.Option("--pretrained", help="timm's hub weights (needs network or a hub cache).")
]
KwargsOpt = Annotated[
    str | None,
    typer.Option(
        "--model-kwargs",
        help="JSON overrides for timm.create_model, e.g. "
        '\'{"img_size": 32, "patch_size": 4, "num_classes": 10}\'.',
    ),
]
TeacherCheckpointOpt = Annotated[
    Path | None, typer.Option("--teacher-checkpoint", help="Weights for a timm-name teacher.")
]
TeacherPretrainedOpt = Annotated[
    bool, typer.Option("--teacher-pretrained", help="Teacher from timm's hub weights.")
]
TeacherKwargsOpt = Annotated[
    str | None,
    typer.Option(
        "--teacher-kwargs",
        help="JSON kwargs for a timm-name teacher (default: the ones the pruned model records).",
    ),
]
DataOpt = Annotated[
    str,
    typer.Option(
        "--data",
        "-d",
        help="Image folder (ImageNet layout, optionally with train/ and val/) or builtin:digits.",
    ),
]
BatchOpt = Annotated[int, typer.Option("--batch-size", "-b", min=1, help="Images per batch.")]
WorkersOpt = Annotated[
    int, typer.Option("--num-workers", min=-1, help="Data loader workers (-1: auto).")
]
AmpOpt = Annotated[
    bool,
    typer.Option(
        "--amp/--no-amp", help="Mixed precision on CUDA (bf16 where supported); ignored on CPU."
    ),
]


def _model(model: str, checkpoint: Path | None, pretrained: bool, model_kwargs: str | None):
    from shared.config import parse_json_object
    from vbp_cli.models import build_model

    return build_model(
        model,
        checkpoint=checkpoint,
        pretrained=pretrained,
        model_kwargs=parse_json_object(model_kwargs, "--model-kwargs"),
    )


def _require() -> None:
    from shared.deps import require

    require("vbp", "timm")


def resolve_workers(requested: int, data: str) -> int:
    from shared.loaders import resolve_workers as resolve

    return resolve(requested, data)


@app.command("collect-stats")
def collect_stats_cmd(
    ctx: typer.Context,
    model: ModelOpt,
    data: DataOpt,
    out: OutOpt,
    checkpoint: CheckpointOpt = None,
    pretrained: PretrainedOpt = False,
    model_kwargs: KwargsOpt = None,
    split: Annotated[str, typer.Option(help="Split of --data to use.")] = "train",
    batches: Annotated[int, typer.Option(min=0, help="Batches to use (0: the whole split).")] = 0,
    batch_size: BatchOpt = 64,
    num_workers: WorkersOpt = -1,
    amp: AmpOpt = True,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Mean and variance of every MLP hidden neuron after its activation (every token one
    sample, float64 Welford/Chan). Under torchrun/srun each rank takes a share of the
    images and the statistics are merged exactly."""
    _require()
    import itertools
    import time

    from shared import distributed
    from shared.loaders import make_loader, shard
    from shared.timm_data import classification_data
    from vbp_cli.stats import collect_stats
    from vbp_cli.statsfile import save_stats

    with command(ctx, "vbp", out) as run:
        dev = pick_device(device)
        distributed.init(dev)
        net, arch = _model(model, checkpoint, pretrained, model_kwargs)
        net.to(dev)
        ds = classification_data(data, net, split)
        loader = make_loader(
            shard(ds.dataset),
            batch_size,
            shuffle=batches > 0,
            seed=seed,
            num_workers=resolve_workers(num_workers, data),
            distribute=False,
        )
        n = min(batches, len(loader)) if batches else len(loader)
        images = (x for x, _ in itertools.islice(loader, n))
        start = time.perf_counter()
        stats = collect_stats(
            net, run.console.progress(images, "collect-stats", total=n), device=dev, amp=amp
        )
        seconds = time.perf_counter() - start
        save_stats(stats, run.path("stats.safetensors"), arch)
        samples = next(iter(stats.values())).count
        var = [s.var for s in stats.values()]
        metrics = run.save_metrics(
            {
                "mlps": len(stats),
                "neurons": sum(v.numel() for v in var),
                "samples_per_neuron": samples,
                "seconds": round(seconds, 3),
                "world_size": distributed.world_size(),
                "stats": str(run.path("stats.safetensors")),
            }
        )
        run.console.summary(metrics, "vbp collect-stats")
        distributed.cleanup()


@app.command("prune")
def prune_cmd(
    ctx: typer.Context,
    model: ModelOpt,
    stats: Annotated[
        Path, typer.Option(help="Output of collect-stats (its directory or stats.safetensors).")
    ],
    out: OutOpt,
    ratio: Annotated[
        float | None, typer.Option(help="Fraction of all MLP neurons to remove, in [0, 1).")
    ] = None,
    target_macs_reduction: Annotated[
        float | None,
        typer.Option(
            "--target-macs-reduction",
            help="Find the ratio that removes this fraction of the model's MACs, e.g. 0.35.",
        ),
    ] = None,
    criterion: Annotated[str, typer.Option(help="variance (VBP) | magnitude | random.")] = (
        "variance"
    ),
    compensation: Annotated[
        bool,
        typer.Option(
            "--compensation/--no-compensation", help="Mean-shift compensation into fc2's bias."
        ),
    ] = True,
    round_to: Annotated[
        int,
        typer.Option(
            min=1,
            help="Keep every hidden width a multiple of N (GEMM-friendly); 1 = exact ranking.",
        ),
    ] = 1,
    min_keep: Annotated[int, typer.Option(min=1, help="Neurons kept at least per MLP.")] = 1,
    checkpoint: CheckpointOpt = None,
    pretrained: PretrainedOpt = False,
    model_kwargs: KwargsOpt = None,
    seed: SeedOpt = 0,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Remove the lowest-variance MLP neurons by one global ranking, fold their means into
    fc2's bias, and write a dense, smaller model."""
    _require()
    from shared.errors import InputError

    if (ratio is None) == (target_macs_reduction is None):
        raise InputError("give exactly one of --ratio and --target-macs-reduction")
    from vbp_cli.api import prune_with_report

    with command(ctx, "vbp", out) as run:
        net, arch = _model(model, checkpoint, pretrained, model_kwargs)
        source = {
            "model": model,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "pretrained": pretrained,
            "model_kwargs": arch.model_kwargs,
        }
        report = prune_with_report(
            net,
            arch,
            stats,
            ratio=ratio,
            target_macs_reduction=target_macs_reduction,
            criterion=criterion,
            compensation=compensation,
            round_to=round_to,
            min_keep=min_keep,
            seed=seed,
            out_path=run.path("model.safetensors"),
            source=source,
        )
        run.console.table("vbp prune", ["", "before", "after", "change"], report.rows())
        metrics = run.save_metrics(report.metrics())
        if json_output:
            run.console.summary(metrics)
        else:
            run.console.info(f"pruned model: {run.path('model.safetensors')}")


@app.command("finetune")
def finetune_cmd(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Option("--model", "-m", help="The pruned model (a path vbp wrote).")
    ],
    data: DataOpt,
    out: OutOpt,
    teacher: Annotated[
        str | None,
        typer.Option(
            help="The unpruned model: timm name or path. Default: the model prune started from."
        ),
    ] = None,
    teacher_checkpoint: TeacherCheckpointOpt = None,
    teacher_pretrained: TeacherPretrainedOpt = False,
    teacher_kwargs: TeacherKwargsOpt = None,
    epochs: Annotated[float, typer.Option(min=0.0, help="Epochs over --data's train split.")] = (
        10.0
    ),
    batch_size: BatchOpt = 64,
    lr: Annotated[float, typer.Option(help="Peak AdamW learning rate (cosine, warm-up).")] = 1e-4,
    weight_decay: Annotated[float, typer.Option(help="AdamW weight decay.")] = 0.05,
    kd_alpha: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Weight of the KD term: (1-a)*CE + a*T^2*KL.")
    ] = 0.5,
    kd_temperature: Annotated[float, typer.Option(min=0.01, help="KD temperature T.")] = 2.0,
    amp: AmpOpt = True,
    num_workers: WorkersOpt = -1,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    resume: ResumeOpt = False,
    checkpoint_every: CheckpointEveryOpt = 500,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Recover accuracy with logit distillation from the unpruned model (AdamW + cosine,
    timm augmentation, AMP on GPU, DDP under torchrun/srun, checkpoints and --resume)."""
    _require()
    from vbp_cli.api import finetune_run

    with command(ctx, "vbp", out, resume=resume, checkpoint_every=checkpoint_every) as run:
        dev = pick_device(device)
        metrics = finetune_run(
            run,
            model,
            data,
            dev,
            teacher=teacher,
            teacher_checkpoint=teacher_checkpoint,
            teacher_pretrained=teacher_pretrained,
            teacher_kwargs=teacher_kwargs,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            kd_alpha=kd_alpha,
            kd_temperature=kd_temperature,
            amp=amp,
            num_workers=resolve_workers(num_workers, data),
            seed=seed,
        )
        run.console.summary(run.save_metrics(metrics), "vbp finetune")


@app.command("evaluate")
def evaluate_cmd(
    ctx: typer.Context,
    model: ModelOpt,
    data: DataOpt,
    checkpoint: CheckpointOpt = None,
    pretrained: PretrainedOpt = False,
    model_kwargs: KwargsOpt = None,
    teacher: Annotated[
        str | None,
        typer.Option(help="Also report top-1 agreement with this model (timm name or vbp path)."),
    ] = None,
    teacher_checkpoint: TeacherCheckpointOpt = None,
    teacher_pretrained: TeacherPretrainedOpt = False,
    teacher_kwargs: TeacherKwargsOpt = None,
    split: Annotated[str, typer.Option(help="Split of --data.")] = "val",
    batch_size: BatchOpt = 128,
    throughput_batch: Annotated[int, typer.Option(min=1, help="Batch for throughput.")] = 32,
    speed: Annotated[
        bool, typer.Option("--speed/--no-speed", help="Measure latency and throughput.")
    ] = True,
    amp: AmpOpt = True,
    num_workers: WorkersOpt = -1,
    device: DeviceOpt = "auto",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Optional output directory for metrics.json.")
    ] = None,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Top-1/top-5 (and agreement with a teacher), params, MACs, batch-1 latency and
    throughput."""
    _require()
    from vbp_cli.api import evaluate_model

    with command(ctx, "vbp", out) as run:
        console = run.console
        dev = pick_device(device, console)
        metrics = evaluate_model(
            model,
            data,
            dev,
            checkpoint=checkpoint,
            pretrained=pretrained,
            model_kwargs=model_kwargs,
            teacher=teacher,
            teacher_checkpoint=teacher_checkpoint,
            teacher_pretrained=teacher_pretrained,
            teacher_kwargs=teacher_kwargs,
            split=split,
            batch_size=batch_size,
            throughput_batch=throughput_batch,
            speed=speed,
            amp=amp,
            num_workers=resolve_workers(num_workers, data),
        )
        console.summary(run.save_metrics(metrics), "vbp evaluate")


@app.command("benchmark")
def benchmark_cmd(
    ctx: typer.Context,
    model: Annotated[
        str, typer.Option("--model", "-m", help="The dense model (timm name or path).")
    ],
    pruned: Annotated[str, typer.Option(help="The pruned model (path vbp wrote).")],
    checkpoint: CheckpointOpt = None,
    pretrained: PretrainedOpt = False,
    model_kwargs: KwargsOpt = None,
    batch_size: Annotated[
        list[int], typer.Option("--batch-size", "-b", help="Batch sizes (repeat the flag).")
    ] = [1, 32],  # noqa: B006
    repeats: Annotated[int, typer.Option(min=1, help="Interleaved timing rounds.")] = 5,
    amp: AmpOpt = True,
    device: DeviceOpt = "auto",
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Optional output directory.")
    ] = None,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Latency and throughput of the dense and pruned models in the same run (interleaved,
    synchronised), and their ratio."""
    _require()
    from vbp_cli.api import benchmark_models

    with command(ctx, "vbp", out) as run:
        console = run.console
        dev = pick_device(device, console)
        rows = benchmark_models(
            model,
            checkpoint,
            pretrained,
            pruned,
            dev,
            batch_sizes=batch_size,
            repeats=repeats,
            amp=amp,
            model_kwargs=model_kwargs,
        )
        console.table(
            "vbp benchmark",
            ["model", "batch", "ms/batch", "images/s", "speed-up"],
            [
                (r["model"], r["batch_size"], r["ms_per_batch"], r["images_per_s"], r["speedup"])
                for r in rows
            ],
        )
        metrics = run.save_metrics({"rows": rows, "device": str(dev)})
        if json_output:
            console.summary(metrics)


@app.command("export")
def export_cmd(
    ctx: typer.Context,
    model: ModelOpt,
    onnx: Annotated[Path, typer.Option(help="Output .onnx file.")],
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 18,
    tolerance: Annotated[float, typer.Option(help="Largest allowed |onnx - torch|.")] = 1e-3,
    model_kwargs: KwargsOpt = None,
    checkpoint: CheckpointOpt = None,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export to ONNX (dynamic batch) and check it against PyTorch with onnxruntime."""
    _require()
    from shared.deps import require
    from shared.errors import ToolkitError
    from shared.timm_data import example_input
    from vbp_cli.export import check_onnx, export_onnx

    require("vbp", "onnx", "onnxruntime")
    with command(ctx, "vbp") as run:
        console = run.console
        net, _ = _model(model, checkpoint, False, model_kwargs)
        example = example_input(net, 2)
        export_onnx(net, example, onnx, opset=opset)
        diff = check_onnx(net, onnx, example)
        if diff > tolerance:
            onnx.unlink(missing_ok=True)
            raise ToolkitError(f"ONNX output differs from PyTorch by {diff:.2e} > {tolerance}")
        console.summary(
            {"onnx": str(onnx), "max_abs_diff": diff, "bytes": onnx.stat().st_size}, "vbp export"
        )


def main() -> None:
    run_app(app)


if __name__ == "__main__":
    main()
