"""The `kdic` command line: thin, parses and prints; the method lives in the modules."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

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
from shared.errors import InputError

app = create_app(
    "kdic",
    (
        "Knowledge distillation for learned image codecs (ICCV 2025): build a slim student "
        "from a compressai codec, distill it stage by stage, and compress real files with it."
    ),
)

# -- options shared by the commands that load a model ----------------------------------
ArchOpt = Annotated[
    str | None,
    typer.Option(
        "--arch",
        help="Architecture: bmshj2018-hyperprior, mbt2018-mean, mbt2018, cheng2020-anchor, "
        "elic2022-official, s2c-conv. For a new model, a foreign compressai checkpoint "
        "(.pth/.pth.tar), or --pretrained.",
    ),
]
NOpt = Annotated[int | None, typer.Option("--N", help="Channel width N (hyperprior width).")]
MOpt = Annotated[int | None, typer.Option("--M", help="Latent width M.")]
QualityOpt = Annotated[
    int | None, typer.Option("--quality", min=1, max=8, help="compressai zoo quality (N, M).")
]
PretrainedOpt = Annotated[
    bool, typer.Option("--pretrained", help="compressai zoo weights for --arch/--quality.")
]
S2CWidthsOpt = Annotated[
    str | None, typer.Option("--s2c-widths", help="s2c-conv stage widths, e.g. 64,96,128.")
]
S2CBlocksOpt = Annotated[
    str | None, typer.Option("--s2c-blocks", help="s2c-conv blocks per stage, e.g. 1,2,2.")
]
DataOpt = Annotated[str, typer.Option("--data", help="builtin:photos or a folder of images.")]
LmbdaOpt = Annotated[
    float,
    typer.Option("--lmbda", min=0.0, help="RD trade-off: loss = lmbda*255^2*MSE + bpp."),
]
StepsOpt = Annotated[int, typer.Option("--steps", min=1, help="Optimiser steps in total.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Crops per step.")]
CropOpt = Annotated[int, typer.Option("--crop", min=16, help="Training crop size (pixels).")]
LrOpt = Annotated[float, typer.Option("--lr", min=0.0, help="Learning rate (Adam).")]
AuxLrOpt = Annotated[
    float, typer.Option("--aux-lr", min=0.0, help="Learning rate of the aux optimizer.")
]
WorkersOpt = Annotated[int, typer.Option("--workers", min=0, help="Data loader workers.")]


def _check_crop(crop: int) -> None:
    # the hyperprior halves the latent's size twice more: crops must divide by 64
    if crop % 64:
        raise InputError(f"--crop {crop}: must be a multiple of 64")


def _ints(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected comma-separated integers") from None


def _arch_spec(
    arch: str | None, n: int | None, m: int | None, quality: int | None,
    widths: str | None = None, blocks: str | None = None, flag: str = "--arch",
) -> dict[str, Any] | None:  # fmt: skip
    from kdic_cli.models import make_spec

    if arch is None:
        return None
    s2c = {}
    if widths:
        s2c["widths"] = _ints(widths, "--s2c-widths")
    if blocks:
        s2c["blocks"] = _ints(blocks, "--s2c-blocks")
    try:
        spec = make_spec(arch, N=n, M=m, quality=quality, s2c=s2c or None)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{flag} {arch}: {exc}") from None
    if quality is not None:
        spec["quality"] = quality
    return spec


def _load(
    source: str | None, flag: str, arch: dict[str, Any] | None, pretrained: bool = False
) -> tuple[Any, dict[str, Any]]:
    """A model from --teacher/--model: a checkpoint file or run directory, a foreign
    compressai checkpoint with --arch, or --pretrained."""
    from kdic_cli.models import MODEL_NAMES, load_model

    if pretrained:
        if arch is None:
            raise InputError(
                "--pretrained: name the zoo model with --arch NAME --quality Q "
                "(e.g. --arch bmshj2018-hyperprior --quality 3)"
            )
        return load_model("", arch=arch, pretrained=True)
    if source is None:
        raise InputError(f"{flag}: give a checkpoint (file or run directory)")
    if source in MODEL_NAMES and not Path(source).exists():
        raise InputError(
            f"{flag} {source}: a name, not a checkpoint; train one with `kdic finetune "
            f"--arch {source}`, or use --arch {source} --quality Q --pretrained when online"
        )
    try:
        return load_model(source, arch=arch)
    except InputError as exc:
        raise InputError(f"{flag} {exc}") from None


def _profile(model: Any, size: int = 256) -> dict[str, float]:
    import torch

    from shared.profiling import count_macs, count_params

    x = torch.rand(1, 3, size, size)
    return {
        "params": count_params(model),
        "kmac_per_px": count_macs(model, x) / (size * size) / 1e3,
    }


def _calibration(data: str, crop: int, n: int, seed: int) -> list[Any]:
    from kdic_cli.training import train_dataset

    ds = train_dataset(data, crop, seed)
    import torch

    return [torch.stack([ds[i] for i in range(k, min(n, k + 4))]) for k in range(0, n, 4)]


@app.command("build-student")
def build_student_cmd(
    ctx: typer.Context,
    out: OutOpt,
    teacher: Annotated[
        str | None, typer.Option("--teacher", help="Teacher checkpoint (file or run dir).")
    ] = None,
    width: Annotated[
        float, typer.Option("--width", min=0.01, max=1.0, help="Channel width factor.")
    ] = 0.5,
    blocks: Annotated[
        str | None, typer.Option("--blocks", help="s2c-conv: blocks per stage, e.g. 1,1,1.")
    ] = None,
    ffn_ratio: Annotated[
        float | None, typer.Option("--ffn-ratio", min=0.01, help="s2c-conv: FFN expansion.")
    ] = None,
    calib: Annotated[
        str, typer.Option("--calib", help="Calibration images: builtin:photos or a folder.")
    ] = "builtin:photos",
    calib_images: Annotated[int, typer.Option("--calib-images", min=1)] = 16,
    crop: CropOpt = 128,
    arch: ArchOpt = None,
    n: NOpt = None,
    m: MOpt = None,
    quality: QualityOpt = None,
    pretrained: PretrainedOpt = False,
    config: ConfigOpt = None,
    seed: SeedOpt = 0,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Teacher-guided student: same classes and stages, fewer channels (and blocks / FFN
    expansion for s2c-conv), initialised with the teacher's highest-energy channels."""
    with command(ctx, "kdic", out) as run:
        from shared.deps import require

        require("kdic")
        import torch

        from kdic_cli.models import fingerprint, save_model
        from kdic_cli.student import build_student

        _check_crop(crop)
        torch.manual_seed(seed)
        t_model, t_meta = _load(teacher, "--teacher", _arch_spec(arch, n, m, quality),
                                pretrained)  # fmt: skip
        images = _calibration(calib, crop, calib_images, seed)
        try:
            student, info = build_student(t_model, images, width, _ints(blocks, "--blocks"),
                                          ffn_ratio)  # fmt: skip
        except ValueError as exc:
            raise InputError(f"--width/--blocks/--ffn-ratio: {exc}") from None
        student.update(force=True)
        info["teacher"] = t_meta.get("path", "compressai zoo")
        info["teacher_fingerprint"] = fingerprint(t_model).hex()
        save_model(run.path("model.safetensors"), student, extra={"kdic_student": info})
        tp, sp = _profile(t_model), _profile(student)
        metrics = run.save_metrics({
            "teacher_params": tp["params"], "student_params": sp["params"],
            "teacher_kmac_per_px": tp["kmac_per_px"], "student_kmac_per_px": sp["kmac_per_px"],
            "params_ratio": sp["params"] / tp["params"],
            "kmac_ratio": sp["kmac_per_px"] / tp["kmac_per_px"],
            "student": str(run.path("model.safetensors")),
        })  # fmt: skip
        run.console.summary(metrics)


def _init_distributed(device_flag: str) -> Any:
    from shared import distributed

    env = distributed.detect_env()
    dev = pick_device(device_flag)
    distributed.init(dev)
    return dev, env


@app.command("distill")
def distill_cmd(
    ctx: typer.Context,
    out: OutOpt,
    teacher: Annotated[str, typer.Option("--teacher", help="Teacher checkpoint.")],
    student: Annotated[str, typer.Option("--student", help="Student from build-student.")],
    lmbda: LmbdaOpt = 0.013,
    data: DataOpt = "builtin:photos",
    supervision: Annotated[
        str, typer.Option("--supervision", help="implicit (RD loss) or explicit (feature MSE).")
    ] = "implicit",
    steps: StepsOpt = 2000,
    batch_size: BatchOpt = 8,
    crop: CropOpt = 128,
    lr: LrOpt = 1e-4,
    aux_lr: AuxLrOpt = 1e-3,
    arch: ArchOpt = None,
    n: NOpt = None,
    m: MOpt = None,
    quality: QualityOpt = None,
    workers: WorkersOpt = 0,
    config: ConfigOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    resume: ResumeOpt = False,
    checkpoint_every: CheckpointEveryOpt = 200,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Stage-wise distillation: each student stage trained inside the frozen teacher
    (implicit: RD loss of the hybrid codec; explicit: feature MSE), then saved."""
    if supervision not in ("implicit", "explicit"):
        raise InputError(f"--supervision {supervision}: expected implicit or explicit")
    with command(ctx, "kdic", out, resume=resume, checkpoint_every=checkpoint_every) as run:
        from shared.deps import require

        require("kdic")
        import torch

        from kdic_cli.distill import explicit_loss, make_hybrid, rd_loss
        from kdic_cli.models import fingerprint, save_model
        from kdic_cli.stages import check_partition, partition
        from kdic_cli.training import Batches, Phase, run_phases, train_dataset
        from shared import distributed

        _check_crop(crop)
        dev, _env = _init_distributed(device)
        torch.manual_seed(seed)
        t_model, _ = _load(teacher, "--teacher", _arch_spec(arch, n, m, quality))
        s_model, s_meta = _load(student, "--student", None)
        info = s_meta.get("kdic_student")
        if not info:
            raise InputError(f"--student {student}: not a kdic build-student checkpoint")
        if info.get("teacher_fingerprint") != fingerprint(t_model).hex():
            raise InputError(
                f"--student {student}: built from another teacher than --teacher {teacher}"
            )
        t_model.to(dev).train()
        s_model.to(dev).train()
        stages = partition(s_model)
        check_partition(s_model, stages)
        per = max(1, steps // len(stages))
        phases = []
        current: dict[str, Any] = {}  # one hybrid (one teacher copy) alive at a time
        for k, st in enumerate(stages):
            n_steps = per if k < len(stages) - 1 else max(1, steps - per * (len(stages) - 1))
            params = [p for name, p in s_model.named_parameters() if name in st.params]
            synced = True
            if supervision == "explicit" and st.transform is not None:
                loss = _explicit(t_model, s_model, st, info, explicit_loss)
                synced = False
            else:

                def build(st: Any = st) -> Any:
                    hybrid = make_hybrid(t_model, s_model, st, info).to(dev)
                    return distributed.wrap_ddp(hybrid, dev, find_unused_parameters=True)

                loss = _implicit_lazy(build, st.name, current, lmbda, rd_loss)
            phases.append(Phase(st.name, n_steps, params, loss, ddp_synced=synced))
        batches = Batches(train_dataset(data, crop, seed), batch_size, seed, workers)
        summary = run_phases(run, phases, batches, s_model, lr=lr, aux_lr=aux_lr, device=dev)
        s_model.eval().update(force=True)
        save_model(run.path("model.safetensors"), s_model,
                   extra={"kdic_student": info, "distilled": {"lmbda": lmbda,
                          "supervision": supervision, "steps": steps}})  # fmt: skip
        metrics = run.save_metrics({
            "supervision": supervision, "lmbda": lmbda, "steps": steps,
            "stages": [s.name for s in stages], "phases": summary,
            "model": str(run.path("model.safetensors")),
        })  # fmt: skip
        run.console.summary(metrics)
        distributed.cleanup()


def _implicit(hybrid: Any, lmbda: float, rd_loss: Any) -> Any:
    def loss(x: Any) -> Any:
        return rd_loss(hybrid(x), x, lmbda)

    return loss


def _implicit_lazy(build: Any, name: str, current: dict, lmbda: float, rd_loss: Any) -> Any:
    """Build the stage's hybrid on its first step, dropping the previous stage's."""

    def loss(x: Any) -> Any:
        if current.get("name") != name:
            current.clear()
            current.update(name=name, model=build())
        return rd_loss(current["model"](x), x, lmbda)

    return loss


def _explicit(teacher: Any, student: Any, stage: Any, info: Any, explicit_loss: Any) -> Any:
    def loss(x: Any) -> Any:
        return {"loss": explicit_loss(teacher, student, stage, info, x)}

    return loss


@app.command("finetune")
def finetune_cmd(
    ctx: typer.Context,
    out: OutOpt,
    model: Annotated[
        str | None, typer.Option("--model", help="Checkpoint to fine-tune (file or run dir).")
    ] = None,
    scratch: Annotated[
        bool,
        typer.Option(
            "--scratch",
            help="Re-initialise: train the architecture from scratch (the no-KD baseline).",
        ),  # fmt: skip
    ] = False,
    lmbda: LmbdaOpt = 0.013,
    data: DataOpt = "builtin:photos",
    steps: StepsOpt = 2000,
    batch_size: BatchOpt = 8,
    crop: CropOpt = 128,
    lr: LrOpt = 1e-4,
    aux_lr: AuxLrOpt = 1e-3,
    arch: ArchOpt = None,
    n: NOpt = None,
    m: MOpt = None,
    quality: QualityOpt = None,
    s2c_widths: S2CWidthsOpt = None,
    s2c_blocks: S2CBlocksOpt = None,
    workers: WorkersOpt = 0,
    config: ConfigOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    resume: ResumeOpt = False,
    checkpoint_every: CheckpointEveryOpt = 200,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """End-to-end RD training of a codec: fine-tune a (distilled) student, or with --arch
    (no --model) / --scratch train a codec from scratch."""
    with command(ctx, "kdic", out, resume=resume, checkpoint_every=checkpoint_every) as run:
        from shared.deps import require

        require("kdic")
        import torch

        from kdic_cli.distill import rd_loss
        from kdic_cli.models import new_model, save_model
        from kdic_cli.training import Batches, Phase, run_phases, train_dataset
        from shared import distributed

        _check_crop(crop)
        dev, _env = _init_distributed(device)
        torch.manual_seed(seed)
        spec = _arch_spec(arch, n, m, quality, s2c_widths, s2c_blocks)
        extra: dict[str, Any] = {}
        if model is None:
            if spec is None:
                raise InputError("--model or --arch: say what to train")
            net = new_model(spec)
        else:
            net, meta = _load(model, "--model", spec)
            if scratch:
                net = new_model(net.kdic_spec)
            elif meta.get("kdic_student"):
                extra["kdic_student"] = meta["kdic_student"]
        net.to(dev).train()
        wrapped = distributed.wrap_ddp(net, dev, find_unused_parameters=True)
        params = [p for name, p in net.named_parameters() if not name.endswith(".quantiles")]
        phases = [Phase("end-to-end", steps, params, _implicit(wrapped, lmbda, rd_loss))]
        batches = Batches(train_dataset(data, crop, seed), batch_size, seed, workers)
        summary = run_phases(run, phases, batches, net, lr=lr, aux_lr=aux_lr, device=dev)
        net.eval().update(force=True)
        extra["trained"] = {"lmbda": lmbda, "steps": steps, "scratch": scratch or model is None}
        save_model(run.path("model.safetensors"), net, extra=extra)
        metrics = run.save_metrics({
            "lmbda": lmbda, "steps": steps, **summary[-1],
            "model": str(run.path("model.safetensors")),
        })  # fmt: skip
        run.console.summary(metrics)
        distributed.cleanup()


@app.command("evaluate")
def evaluate_cmd(
    ctx: typer.Context,
    model: Annotated[
        list[str],
        typer.Option(
            "--model",
            help="One RD curve: comma-separated checkpoints (one per "
            "lambda). Repeat for more curves; BD-rate is against the first.",
        ),
    ],  # fmt: skip
    label: Annotated[
        list[str] | None, typer.Option("--label", help="Curve names, in --model order.")
    ] = None,
    data: DataOpt = "builtin:photos",
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the RD plot (PNG).")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Also write metrics.json there.")
    ] = None,  # fmt: skip
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="First N images.")] = None,
    arch: ArchOpt = None,
    n: NOpt = None,
    m: MOpt = None,
    quality: QualityOpt = None,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Real compress/decompress per image: bpp from the bytes, PSNR and MS-SSIM on 8-bit
    reconstructions, encode/decode time, params, kMAC/px, BD-rate against the first curve."""
    with command(ctx, "kdic", out) as ctx_run:
        from shared.deps import require

        require("kdic")
        from kdic_cli.evaluate import evaluate_curves, plot_rd

        console = ctx_run.console
        curves = [[s for s in spec.split(",") if s] for spec in model]
        names = list(label or [])
        if names and len(names) != len(curves):
            raise InputError(f"--label: {len(names)} labels for {len(curves)} curves")
        arch_spec = _arch_spec(arch, n, m, quality)
        loaded = []
        for i, curve in enumerate(curves):
            loaded.append([_load(src, "--model", arch_spec)[0] for src in curve])
            if not names or len(names) <= i:
                names.append(Path(curve[0]).name if len(curves) > 1 else "model")
        images = eval_images_checked(data, limit)
        result = evaluate_curves(loaded, names, curves, images, console=console)
        if plot is not None:
            plot_rd(result, plot)
            result["plot"] = str(plot)
        rows = [
            (c["label"], p["source"], p["bpp"], p["psnr"], p["ms_ssim"], p["enc_s"], p["dec_s"],
             c["kmac_per_px"], c["params"], c.get("bd_rate_psnr"))
            for c in result["curves"] for p in c["points"]
        ]  # fmt: skip
        result = ctx_run.save_metrics(result)
        console.table("RD points", ["curve", "model", "bpp", "PSNR", "MS-SSIM", "enc s",
                                    "dec s", "kMAC/px", "params", "BD-rate %"], rows)  # fmt: skip
        if console.json_mode:
            console.summary(result)


def eval_images_checked(data: str, limit: int | None) -> list[Any]:
    from kdic_cli.training import eval_images

    images = eval_images(data)
    return images[:limit] if limit else images


@app.command("compress")
def compress_cmd(
    ctx: typer.Context,
    image: Annotated[Path, typer.Argument(help="Image to compress (PNG, JPEG, ...).")],
    model: Annotated[str, typer.Option("--model", help="Codec checkpoint.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .kdic file.")],
    arch: ArchOpt = None,
    n: NOpt = None,
    m: MOpt = None,
    quality: QualityOpt = None,
    pretrained: PretrainedOpt = False,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compress one image into a .kdic file (real entropy-coded bitstream)."""
    with command(ctx, "kdic") as nothing:
        console = nothing.console
        from shared.deps import require

        require("kdic")
        import time

        from kdic_cli.codec_io import compress_image
        from kdic_cli.metrics import bpp
        from shared.images import load_image
        from shared.io import write_bytes

        x = load_image(image)
        net, _ = _load(model, "--model", _arch_spec(arch, n, m, quality), pretrained)
        start = time.perf_counter()
        data = compress_image(net, x)
        seconds = time.perf_counter() - start
        write_bytes(output, data)
        h, w = x.shape[-2:]
        console.summary({"image": str(image), "output": str(output), "bytes": len(data),
                         "bpp": bpp(len(data), h, w), "width": w, "height": h,
                         "encode_s": seconds})  # fmt: skip


@app.command("decompress")
def decompress_cmd(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A .kdic file.")],
    model: Annotated[str, typer.Option("--model", help="The codec that wrote the file.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output PNG.")],
    reference: Annotated[
        Path | None, typer.Option("--reference", help="Original image: also print PSNR.")
    ] = None,
    arch: ArchOpt = None,
    n: NOpt = None,
    m: MOpt = None,
    quality: QualityOpt = None,
    pretrained: PretrainedOpt = False,
    config: ConfigOpt = None,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Decode a .kdic file to a PNG; refuses files written by another model."""
    with command(ctx, "kdic") as nothing:
        console = nothing.console
        from shared.deps import require

        require("kdic")
        import time

        from kdic_cli.codec_io import ContainerError, decompress_bytes
        from kdic_cli.metrics import bpp, psnr
        from shared.images import load_image, save_image

        if not file.is_file():
            raise InputError(f"{file}: no such file")
        data = file.read_bytes()
        net, _ = _load(model, "--model", _arch_spec(arch, n, m, quality), pretrained)
        start = time.perf_counter()
        try:
            x_hat = decompress_bytes(net, data)
        except ContainerError as exc:
            raise InputError(f"{file}: {exc}") from None
        seconds = time.perf_counter() - start
        save_image(x_hat, output)
        h, w = x_hat.shape[-2:]
        res: dict[str, Any] = {"file": str(file), "output": str(output),
                               "bpp": bpp(len(data), h, w), "decode_s": seconds}  # fmt: skip
        if reference is not None:
            ref = load_image(reference)
            if ref.shape != x_hat.shape:
                raise InputError(f"--reference {reference}: size differs from the decoded image")
            res["psnr"] = psnr(ref, x_hat)
        console.summary(res)


def main() -> None:
    import warnings

    # compressai's import triggers torch.jit deprecation noise that users cannot act on
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
    warnings.filterwarnings("ignore", message="Curves do not overlap", category=UserWarning)
    run_app(app)


if __name__ == "__main__":
    main()
