"""What a notebook user calls: the commands of `kdic` as functions of their config
dataclasses (kdic_cli.options), returning models and metrics. No Run object is needed
(`run=None`); with `out` a function also writes its checkpoint there.

    from kdic_cli import api
    from kdic_cli.options import DistillOptions

    student, metrics = api.distill(DistillOptions(teacher="t/", student="s/", steps=200))
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdic_cli.metrics import codec_cost
from kdic_cli.options import (
    BuildStudentOptions,
    CompressOptions,
    DecompressOptions,
    DistillOptions,
    EvaluateOptions,
    FinetuneOptions,
)
from shared.errors import InputError

__all__ = [
    "arch_spec",
    "build_student",
    "compress",
    "decompress",
    "distill",
    "evaluate",
    "finetune",
    "load_codec",
    "loading_arch",
    "stage_schedule",
]
MODEL_FILE = "model.safetensors"


# -- models from options ------------------------------------------------------------------
def _ints(text: str | None, flag: str) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise InputError(f"{flag} {text!r}: expected comma-separated integers") from None


def arch_spec(cfg: Any, widths: str | None = None, blocks: str | None = None) -> dict | None:
    """The architecture spec from a config's --arch/--N/--M/--quality (None without --arch)."""
    from kdic_cli.models import make_spec

    if cfg.arch is None:
        return None
    s2c = {}
    if widths:
        s2c["widths"] = _ints(widths, "--s2c-widths")
    if blocks:
        s2c["blocks"] = _ints(blocks, "--s2c-blocks")
    try:
        spec = make_spec(cfg.arch, N=cfg.n, M=cfg.m, quality=cfg.quality, s2c=s2c or None)
    except (ValueError, TypeError) as exc:
        raise InputError(f"--arch {cfg.arch}: {exc}") from None
    if cfg.quality is not None:
        spec["quality"] = cfg.quality
    return spec


def loading_arch(cfg: Any, widths: str | None = None, blocks: str | None = None) -> dict | None:
    """--arch for reading a checkpoint: N and M only where --N/--M/--quality give them (a
    foreign checkpoint's widths are otherwise read off its weights)."""
    spec = arch_spec(cfg, widths, blocks)
    if spec is None or spec["name"] == "s2c-conv" or cfg.quality is not None:
        return spec
    given = {"N": cfg.n, "M": cfg.m}
    return {"name": spec["name"], **{k: v for k, v in given.items() if v is not None}}


def load_codec(
    source: str | None, flag: str, arch: dict[str, Any] | None, pretrained: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """A model from a checkpoint file or run directory, a foreign compressai checkpoint with
    `arch` (see `loading_arch`), or compressai's zoo weights (`pretrained`). `flag` names
    the option in errors."""
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


def _check_crop(crop: int) -> None:
    # the hyperprior halves the latent's size twice more: crops must divide by 64
    if crop % 64:
        raise InputError(f"--crop {crop}: must be a multiple of 64")


def _calibration(data: str, crop: int, n: int, seed: int) -> list[Tensor]:
    from kdic_cli.data import train_dataset

    ds = train_dataset(data, crop, seed)
    return [torch.stack([ds[i] for i in range(k, min(n, k + 4))]) for k in range(0, n, 4)]


def _save(model: nn.Module, out: Path | None, extra: dict[str, Any]) -> dict[str, str]:
    """Write the checkpoint into `out` (main process only); its path for the metrics."""
    from kdic_cli.models import save_model
    from shared import distributed

    if out is None:
        return {}
    path = Path(out) / MODEL_FILE
    if distributed.is_main():
        save_model(path, model, extra=extra)
    return {"model": str(path)}


def _batches(data: str, crop: int, seed: int, batch_size: int, workers: int) -> Any:
    """Training crops by global step (resume sees the same data)."""
    from kdic_cli.data import train_dataset
    from shared.loaders import make_loader
    from shared.train import StepBatches

    loader = make_loader(train_dataset(data, crop, seed), batch_size, shuffle=True, seed=seed,
                         num_workers=workers, drop_last=True)  # fmt: skip
    if len(loader) < 1:
        raise InputError(f"--batch-size {batch_size}: larger than the dataset")
    return StepBatches(loader)


# -- build-student --------------------------------------------------------------------
def build_student(
    cfg: BuildStudentOptions, out: Path | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Teacher-guided student: fewer channels (blocks, FFN expansion for s2c-conv), the
    teacher's highest-energy channels kept; by default (`widths="class"`) an instance of the
    teacher's compressai class at N * width. Returns the student and its costs."""
    from kdic_cli.models import describe, fingerprint
    from kdic_cli.student import build_student as build

    _check_crop(cfg.crop)
    torch.manual_seed(cfg.seed)
    t_model, t_meta = load_codec(cfg.teacher, "--teacher", loading_arch(cfg), cfg.pretrained)
    # as distill sees the teacher: before any forward (masked convolutions zero their
    # masked weights in place on the first one)
    t_fingerprint = fingerprint(t_model).hex()
    images = _calibration(cfg.calib, cfg.crop, cfg.calib_images, cfg.seed)
    try:
        student, info = build(t_model, images, cfg.width, _ints(cfg.blocks, "--blocks"),
                              cfg.ffn_ratio, cfg.widths)  # fmt: skip
    except ValueError as exc:
        raise InputError(f"--width/--widths/--blocks/--ffn-ratio: {exc}") from None
    student.update(force=True)
    info["teacher"] = t_meta.get("path", "compressai zoo")
    info["teacher_fingerprint"] = t_fingerprint
    saved = _save(student, out, {"kdic_student": info})
    tp, sp = codec_cost(t_model), codec_cost(student)
    metrics = {
        "teacher_params": tp["params"], "student_params": sp["params"],
        "teacher_kmac_per_px": tp["kmac_per_px"], "student_kmac_per_px": sp["kmac_per_px"],
        "params_ratio": sp["params"] / tp["params"],
        "kmac_ratio": sp["kmac_per_px"] / tp["kmac_per_px"],
        "architecture": describe(student.kdic_spec), "stagewise": info["stagewise"],
        **({"student": saved["model"]} if saved else {}),
    }  # fmt: skip
    return student, metrics


# -- distill --------------------------------------------------------------------------
def stage_schedule(n_stages: int, steps: int) -> list[int]:
    """Steps of each stage: an equal share, the last stage taking the remainder; at least
    one step per stage (so a short run still visits every stage), none when steps is 0."""
    if n_stages < 1 or steps == 0:
        return [0] * n_stages
    per = max(1, steps // n_stages)
    return [per] * (n_stages - 1) + [max(1, steps - per * (n_stages - 1))]


def _implicit(model: Callable[[Tensor], Any], lmbda: float) -> Callable[[Tensor], dict]:
    from kdic_cli.distill import rd_loss

    return lambda x: rd_loss(model(x), x, lmbda)


def _implicit_lazy(
    build: Callable[[], nn.Module], name: str, current: dict[str, Any], lmbda: float
) -> Callable[[Tensor], dict]:
    """RD loss of a stage's hybrid, built on the stage's first step; the previous stage's
    hybrid (a teacher copy) is dropped then, so one is alive at a time."""
    from kdic_cli.distill import rd_loss

    def loss(x: Tensor) -> dict[str, Tensor]:
        if current.get("name") != name:
            current.clear()
            current.update(name=name, model=build())
        return rd_loss(current["model"](x), x, lmbda)

    return loss


def _explicit(teacher: nn.Module, student: nn.Module, stage: Any, info: dict) -> Callable:
    from kdic_cli.distill import explicit_loss

    return lambda x: {"loss": explicit_loss(teacher, student, stage, info, x)}


def distill(
    cfg: DistillOptions,
    *,
    device: torch.device | str = "cpu",
    run: Any | None = None,
    out: Path | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Stage-wise distillation: each student stage trained inside the frozen teacher
    (implicit: RD loss of the hybrid codec; explicit: feature MSE), stage after stage."""
    from kdic_cli.distill import make_hybrid
    from kdic_cli.models import fingerprint
    from kdic_cli.stages import check_partition, partition
    from kdic_cli.training import Phase, run_phases
    from shared import distributed

    _check_crop(cfg.crop)
    dev = torch.device(device)
    torch.manual_seed(cfg.seed)
    t_model, _ = load_codec(cfg.teacher, "--teacher", loading_arch(cfg))
    s_model, s_meta = load_codec(cfg.student, "--student", None)
    info = s_meta.get("kdic_student")
    if not info:
        raise InputError(f"--student {cfg.student}: not a kdic build-student checkpoint")
    if info.get("teacher_fingerprint") != fingerprint(t_model).hex():
        raise InputError(
            f"--student {cfg.student}: built from another teacher than --teacher {cfg.teacher}"
        )
    if info.get("stagewise") is False:
        raise InputError(
            f"--student {cfg.student}: {info['not_stagewise']}; for stage-wise distillation "
            "build it with `kdic build-student --widths free`, or train this one end to end "
            "(`kdic finetune --model`)"
        )
    t_model.to(dev).train()
    s_model.to(dev).train()
    stages = partition(s_model)
    check_partition(s_model, stages)
    phases = []
    current: dict[str, Any] = {}  # the one hybrid alive
    for st, n_steps in zip(stages, stage_schedule(len(stages), cfg.steps), strict=True):
        params = [p for name, p in s_model.named_parameters() if name in st.params]
        if cfg.supervision == "explicit" and st.transform is not None:
            # the feature loss runs outside DDP: its gradients are averaged by hand
            loss = _explicit(t_model, s_model, st, info)
            phases.append(Phase(st.name, n_steps, params, loss, ddp_synced=False))
            continue

        def build(st: Any = st) -> nn.Module:
            hybrid = make_hybrid(t_model, s_model, st, info).to(dev)
            return distributed.wrap_ddp(hybrid, dev, find_unused_parameters=True)

        loss = _implicit_lazy(build, st.name, current, cfg.lmbda)
        phases.append(Phase(st.name, n_steps, params, loss))
    batches = _batches(cfg.data, cfg.crop, cfg.seed, cfg.batch_size, cfg.workers)
    summary, _ = run_phases(phases, batches, s_model, lr=cfg.lr, aux_lr=cfg.aux_lr,
                            device=dev, run=run)  # fmt: skip
    current.clear()
    s_model.eval().update(force=True)
    distilled = {"lmbda": cfg.lmbda, "supervision": cfg.supervision, "steps": cfg.steps}
    saved = _save(s_model, out, {"kdic_student": info, "distilled": distilled})
    metrics = {
        "supervision": cfg.supervision, "lmbda": cfg.lmbda, "steps": cfg.steps,
        "stages": [s.name for s in stages], "phases": summary, **saved,
    }  # fmt: skip
    return s_model, metrics


# -- finetune -------------------------------------------------------------------------
def finetune(
    cfg: FinetuneOptions,
    *,
    device: torch.device | str = "cpu",
    run: Any | None = None,
    out: Path | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """End-to-end RD training of a codec: fine-tune a (distilled) student, or with
    `arch` (no `model`) / `scratch` train a codec from scratch, or with `pretrained` start
    from compressai's zoo weights (with steps=0: save them as a checkpoint to distill from,
    the paper's setting of a pretrained teacher)."""
    from kdic_cli.models import new_model
    from kdic_cli.training import Phase, run_phases
    from shared import distributed

    _check_crop(cfg.crop)
    dev = torch.device(device)
    torch.manual_seed(cfg.seed)
    spec = arch_spec(cfg, cfg.s2c_widths, cfg.s2c_blocks)
    extra: dict[str, Any] = {}
    if cfg.pretrained and (cfg.model is not None or cfg.scratch):
        raise InputError(
            "--pretrained starts from compressai's zoo weights: no --model or --scratch"
        )
    if cfg.pretrained:
        net, meta = load_codec(None, "--arch", loading_arch(cfg), pretrained=True)
        extra["source"] = f"{meta['source']} {cfg.arch} quality {cfg.quality}"
    elif cfg.model is None:
        if spec is None:
            raise InputError("--model or --arch: say what to train")
        net = new_model(spec)
    else:
        arch = loading_arch(cfg, cfg.s2c_widths, cfg.s2c_blocks)
        net, meta = load_codec(cfg.model, "--model", arch)
        if cfg.scratch:
            net = new_model(net.kdic_spec)
        elif meta.get("kdic_student"):
            extra["kdic_student"] = meta["kdic_student"]
    net.to(dev).train()
    wrapped = distributed.wrap_ddp(net, dev, find_unused_parameters=True)
    params = [p for name, p in net.named_parameters() if not name.endswith(".quantiles")]
    phases = [Phase("end-to-end", cfg.steps, params, _implicit(wrapped, cfg.lmbda))]
    batches = _batches(cfg.data, cfg.crop, cfg.seed, cfg.batch_size, cfg.workers)
    summary, final = run_phases(phases, batches, net, lr=cfg.lr, aux_lr=cfg.aux_lr,
                                device=dev, run=run)  # fmt: skip
    net.eval().update(force=True)
    scratch = cfg.scratch or (cfg.model is None and not cfg.pretrained)
    extra["trained"] = {"lmbda": cfg.lmbda, "steps": cfg.steps, "scratch": scratch}
    saved = _save(net, out, extra)
    finals = {k: v for k, v in final.items() if k != "steps"}
    return net, {"lmbda": cfg.lmbda, "steps": cfg.steps, **summary[-1], **finals, **saved}


# -- evaluate, compress, decompress -------------------------------------------------------
def evaluate(cfg: EvaluateOptions, console: Any = None) -> dict[str, Any]:
    """Real compress/decompress per image: payload bpp (compressai's strings, comparable
    with compressai's eval_model and the papers; the RD curves and BD-rates use it) and file
    bpp (the .kdic file with its header), PSNR and MS-SSIM on 8-bit reconstructions, times,
    params, kMAC/px, BD-rate against the first curve; the RD plot when `cfg.plot` is set."""
    from kdic_cli.data import eval_images
    from kdic_cli.evaluate import evaluate_curves, plot_rd

    curves = [[s for s in spec.split(",") if s] for spec in cfg.model]
    names = list(cfg.label or [])
    if names and len(names) != len(curves):
        raise InputError(f"--label: {len(names)} labels for {len(curves)} curves")
    spec = loading_arch(cfg)
    loaded = []
    for i, curve in enumerate(curves):
        loaded.append([load_codec(src, "--model", spec)[0] for src in curve])
        if len(names) <= i:
            names.append(Path(curve[0]).name if len(curves) > 1 else "model")
    images = eval_images(cfg.data)
    if cfg.limit:
        images = images[: cfg.limit]
    result = evaluate_curves(loaded, names, curves, images, console=console)
    if cfg.plot is not None:
        plot_rd(result, cfg.plot)
        result["plot"] = str(cfg.plot)
    return result


def compress(cfg: CompressOptions) -> dict[str, Any]:
    """Compress one image into a .kdic file (a real entropy-coded bitstream)."""
    from kdic_cli.codec_io import compress_image
    from shared.images import load_image
    from shared.io import write_bytes

    _refuse_overwriting_inputs(cfg.output, [cfg.image, cfg.model])
    x = load_image(cfg.image)
    net, _ = load_codec(cfg.model, "--model", loading_arch(cfg), cfg.pretrained)
    start = time.perf_counter()
    data = compress_image(net, x)
    seconds = time.perf_counter() - start
    write_bytes(cfg.output, data)
    h, w = x.shape[-2:]
    return {"image": str(cfg.image), "output": str(cfg.output), "bytes": len(data),
            **_rates(data, h, w), "width": w, "height": h, "encode_s": seconds}  # fmt: skip


def decompress(cfg: DecompressOptions) -> dict[str, Any]:
    """Decode a .kdic file to a PNG; refuses files written by another model."""
    from kdic_cli.codec_io import ContainerError, decompress_bytes
    from kdic_cli.metrics import psnr
    from shared.images import load_image, save_image

    if not cfg.file.is_file():
        raise InputError(f"{cfg.file}: no such file")
    _refuse_overwriting_inputs(cfg.output, [cfg.file, cfg.model, cfg.reference])
    # the reference is read before anything is written: a bad one leaves no output behind
    ref = load_image(cfg.reference) if cfg.reference is not None else None
    data = cfg.file.read_bytes()
    net, _ = load_codec(cfg.model, "--model", loading_arch(cfg), cfg.pretrained)
    start = time.perf_counter()
    try:
        x_hat = decompress_bytes(net, data)
    except ContainerError as exc:
        raise InputError(f"{cfg.file}: {exc}") from None
    seconds = time.perf_counter() - start
    if ref is not None and ref.shape != x_hat.shape:
        raise InputError(
            f"--reference {cfg.reference}: {tuple(ref.shape[-2:])} pixels, the decoded image "
            f"is {tuple(x_hat.shape[-2:])}"
        )
    save_image(x_hat, cfg.output)
    h, w = x_hat.shape[-2:]
    res: dict[str, Any] = {"file": str(cfg.file), "output": str(cfg.output),
                           **_rates(data, h, w), "decode_s": seconds}  # fmt: skip
    if ref is not None:
        res["psnr"] = psnr(ref, x_hat)
    return res


def _rates(data: bytes, h: int, w: int) -> dict[str, float]:
    """bpp of the .kdic file (header included) and payload_bpp of compressai's strings."""
    from kdic_cli.codec_io import payload_bytes
    from kdic_cli.metrics import bpp

    return {"bpp": bpp(len(data), h, w), "payload_bpp": bpp(payload_bytes(data), h, w)}


def _refuse_overwriting_inputs(output: Path, inputs: list[Path | str | None]) -> None:
    """-o must not name one of the command's own inputs (it would be replaced)."""
    target = Path(output).resolve()
    for given in inputs:
        if given is not None and Path(given).exists() and Path(given).resolve() == target:
            raise InputError(f"-o {output}: is one of this command's inputs; choose another name")
