"""What the commands do, as functions the CLI calls (and notebooks may call too)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.config import parse_json_object
from shared.errors import InputError
from shared.profiling import count_macs, count_params
from shared.timm_data import example_input
from vbp_cli.models import Architecture, build_model, save_model
from vbp_cli.prune import (
    CRITERIA,
    check_stats_match,
    mlp_mac_costs,
    neuron_scores,
    prune_model,
    ratio_for_mac_reduction,
)
from vbp_cli.statsfile import load_stats


@dataclass
class PruneReport:
    ratio: float
    criterion: str
    compensation: bool
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    widths_before: dict[str, int]
    widths_after: dict[str, int]
    target_macs_reduction: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def rows(self) -> list[tuple[str, Any, Any, str]]:
        def change(a: int, b: int) -> str:
            return f"{(b - a) / a:+.2%}"

        hid_b, hid_a = sum(self.widths_before.values()), sum(self.widths_after.values())
        return [
            (
                "GMACs",
                self.macs_before / 1e9,
                self.macs_after / 1e9,
                change(self.macs_before, self.macs_after),
            ),
            (
                "params (M)",
                self.params_before / 1e6,
                self.params_after / 1e6,
                change(self.params_before, self.params_after),
            ),
            ("MLP neurons", hid_b, hid_a, change(hid_b, hid_a)),
        ]

    def metrics(self) -> dict[str, Any]:
        return {
            "ratio": self.ratio,
            "criterion": self.criterion,
            "compensation": self.compensation,
            "target_macs_reduction": self.target_macs_reduction,
            "macs_before": self.macs_before,
            "macs_after": self.macs_after,
            "macs_reduction": 1 - self.macs_after / self.macs_before,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "params_reduction": 1 - self.params_after / self.params_before,
            "widths_before": self.widths_before,
            "widths_after": self.widths_after,
            **self.extra,
        }


def prune_with_report(
    model: nn.Module,
    arch: Architecture,
    stats_path: Path,
    *,
    ratio: float | None,
    target_macs_reduction: float | None,
    criterion: str = "variance",
    compensation: bool = True,
    round_to: int = 1,
    min_keep: int = 1,
    seed: int = 0,
    out_path: Path | None = None,
    source: dict[str, Any] | None = None,
) -> PruneReport:
    """Prune in place (to a ratio, or to a MAC-reduction target) and measure before/after."""
    if criterion not in CRITERIA:
        raise InputError(f"--criterion {criterion!r}: expected one of {', '.join(CRITERIA)}")
    from vbp_cli.mlps import find_mlps

    stats = load_stats(stats_path)
    mlps = find_mlps(model)
    check_stats_match(mlps, stats)
    example = example_input(model)
    macs_before, params_before = count_macs(model, example), count_params(model)
    widths_before = {ref.name: ref.hidden for ref in mlps}
    if target_macs_reduction is not None:
        gen = torch.Generator().manual_seed(seed)
        scores = {ref.name: neuron_scores(ref, stats[ref.name], criterion, gen) for ref in mlps}
        ratio = ratio_for_mac_reduction(
            scores,
            mlp_mac_costs(model, example),
            macs_before,
            target_macs_reduction,
            min_keep=min_keep,
            round_to=round_to,
        )
    assert ratio is not None
    widths_after = prune_model(
        model,
        stats,
        ratio,
        criterion=criterion,
        compensation=compensation,
        min_keep=min_keep,
        round_to=round_to,
        seed=seed,
    )
    report = PruneReport(
        ratio=ratio,
        criterion=criterion,
        compensation=compensation,
        macs_before=macs_before,
        macs_after=count_macs(model, example),
        params_before=params_before,
        params_after=count_params(model),
        widths_before=widths_before,
        widths_after=widths_after,
        target_macs_reduction=target_macs_reduction,
        extra={"round_to": round_to},
    )
    if out_path is not None:
        save_model(model, arch, out_path, extra={"source": source or {}, "prune": report.metrics()})
    return report


def _recorded_source(model_path: str) -> dict[str, Any]:
    """What `prune` recorded about the unpruned model in the pruned model's file."""
    from shared.checkpoints import read_metadata
    from vbp_cli.models import MODEL_FILE

    path = Path(model_path)
    meta = read_metadata(path / MODEL_FILE if path.is_dir() else path)
    return meta.get("source") or {}


def build_teacher(
    student_path: str | None,
    teacher: str | None,
    checkpoint: Path | None = None,
    pretrained: bool = False,
    kwargs: str | None = None,
) -> nn.Module:
    """The unpruned model: as given, or as recorded by `prune` in the student's file. A timm
    name without --teacher-kwargs takes the recorded kwargs (img_size, num_classes...)."""
    from vbp_cli.models import saved_model_path

    source = _recorded_source(student_path) if student_path else {}
    if teacher is None:
        if not source.get("model"):
            raise InputError(
                f"--model {student_path} does not record its unpruned model: pass --teacher"
            )
        ckpt = source.get("checkpoint")
        return build_model(
            source["model"],
            checkpoint=Path(ckpt) if ckpt else None,
            pretrained=bool(source.get("pretrained")),
            model_kwargs=source.get("model_kwargs") or None,
        )[0]
    parsed = parse_json_object(kwargs, "--teacher-kwargs")
    if not parsed and saved_model_path(teacher) is None:
        parsed = source.get("model_kwargs") or {}
    return build_model(teacher, checkpoint=checkpoint, pretrained=pretrained, model_kwargs=parsed)[
        0
    ]


def check_compatible(student: nn.Module, teacher: nn.Module) -> None:
    """Teacher and student must read the same images and predict the same classes."""
    from shared.timm_data import input_size

    if input_size(student) != input_size(teacher):
        raise InputError(
            f"--teacher takes input {input_size(teacher)}, the model "
            f"{input_size(student)}: pass --teacher-kwargs"
        )
    with torch.no_grad():
        classes = [m.eval()(example_input(m)).shape[-1] for m in (student, teacher)]
    if classes[0] != classes[1]:
        raise InputError(f"--teacher predicts {classes[1]} classes, the model {classes[0]}")


def finetune_run(
    run: Any,
    model: str,
    data: str,
    device: torch.device,
    *,
    teacher: str | None,
    teacher_checkpoint: Path | None,
    teacher_pretrained: bool,
    teacher_kwargs: str | None,
    epochs: float,
    batch_size: int,
    lr: float,
    weight_decay: float,
    kd_alpha: float,
    kd_temperature: float,
    amp: bool,
    num_workers: int,
    seed: int,
) -> dict[str, Any]:
    """Knowledge-distillation fine-tuning of a pruned model from its unpruned teacher."""
    from shared import distributed
    from shared.classify import FitConfig, evaluate_classifier, fit_classifier
    from shared.loaders import make_loader, shard
    from shared.timm_data import classification_data
    from vbp_cli.models import load_model_with_arch

    distributed.init(device)
    torch.manual_seed(seed)
    student, arch = load_model_with_arch(model)
    teacher_net = build_teacher(
        model, teacher, teacher_checkpoint, teacher_pretrained, teacher_kwargs
    )
    check_compatible(student, teacher_net)
    student.to(device)
    teacher_net.to(device).eval().requires_grad_(False)
    train = classification_data(data, student, "train", augment=True)
    val = classification_data(data, student, "val")
    loader = make_loader(
        train.dataset,
        batch_size,
        shuffle=True,
        seed=seed,
        num_workers=num_workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    if len(loader) == 0:
        raise InputError(f"--data {data}: fewer training images than --batch-size {batch_size}")
    wrapped = distributed.wrap_ddp(student, device)
    cfg = FitConfig(
        epochs=epochs,
        lr=lr,
        weight_decay=weight_decay,
        kd_alpha=kd_alpha,
        kd_temperature=kd_temperature,
        amp=amp,
    )
    fit = fit_classifier(
        wrapped, loader, cfg, device=device, teacher=teacher_net, run=run, description="finetune"
    )
    if distributed.is_main():
        save_model(
            student,
            arch,
            run.path("model.safetensors"),
            extra={"finetune": {"epochs": epochs, "data": data}},
        )
    val_loader = make_loader(
        shard(val.dataset), 256, shuffle=False, num_workers=num_workers, distribute=False
    )
    acc = evaluate_classifier(student, val_loader, device=device, teacher=teacher_net, amp=amp)
    distributed.cleanup()
    return {**fit, **acc, "model": str(run.path("model.safetensors"))}


def evaluate_model(
    model: str,
    data: str,
    device: torch.device,
    *,
    checkpoint: Path | None = None,
    pretrained: bool = False,
    model_kwargs: str | None = None,
    teacher: str | None = None,
    teacher_checkpoint: Path | None = None,
    teacher_pretrained: bool = False,
    teacher_kwargs: str | None = None,
    split: str = "val",
    batch_size: int = 128,
    throughput_batch: int = 32,
    speed: bool = True,
    amp: bool = True,
    num_workers: int = 4,
) -> dict[str, Any]:
    from shared.classify import evaluate_classifier
    from shared.loaders import make_loader
    from shared.profiling import measure_latency, measure_throughput
    from shared.timm_data import classification_data

    net, _ = build_model(
        model,
        checkpoint=checkpoint,
        pretrained=pretrained,
        model_kwargs=parse_json_object(model_kwargs, "--model-kwargs"),
    )
    teacher_net = None
    if teacher:
        from vbp_cli.models import saved_model_path

        student_path = model if saved_model_path(model) is not None else None
        teacher_net = build_teacher(
            student_path, teacher, teacher_checkpoint, teacher_pretrained, teacher_kwargs
        )
        check_compatible(net, teacher_net)
        teacher_net.to(device)
    example = example_input(net)
    out: dict[str, Any] = {"params": count_params(net), "macs": count_macs(net, example)}
    net.to(device)
    ds = classification_data(data, net, split)
    loader = make_loader(ds.dataset, batch_size, shuffle=False, num_workers=num_workers)
    out |= evaluate_classifier(net, loader, device=device, teacher=teacher_net, amp=amp)
    if speed:
        lat = measure_latency(net, example.to(device), device=device, amp=amp)
        thr = measure_throughput(
            net, example_input(net, throughput_batch).to(device), device=device, amp=amp
        )
        out |= {
            "latency_ms": lat["median_ms"],
            "throughput": thr["images_per_s"],
            "throughput_batch": throughput_batch,
        }
    out["device"] = str(device)
    return out


def benchmark_models(
    dense: str,
    checkpoint: Path | None,
    pretrained: bool,
    pruned: str,
    device: torch.device,
    *,
    batch_sizes: list[int],
    repeats: int = 5,
    amp: bool = True,
    model_kwargs: str | None = None,
) -> list[dict[str, Any]]:
    from shared.profiling import compare_speed

    dense_net, _ = build_model(
        dense,
        checkpoint=checkpoint,
        pretrained=pretrained,
        model_kwargs=parse_json_object(model_kwargs, "--model-kwargs"),
    )
    pruned_net, _ = build_model(pruned)
    models = {"dense": dense_net.to(device).eval(), "pruned": pruned_net.to(device).eval()}
    return compare_speed(
        models,
        lambda b: example_input(dense_net, b),
        batch_sizes,
        repeats=repeats,
        device=device,
        amp=amp,
    )
