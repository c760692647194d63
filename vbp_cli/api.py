"""What the `vbp` commands do, as functions a notebook calls: config dataclasses in
(`vbp_cli.options`), models and metrics out. The command line is a thin layer over these.

    from vbp_cli import api
    from vbp_cli.options import PruneOptions
    report = api.prune_to_file(PruneOptions(model="deit_tiny_patch16_224", stats=Path("s"),
                                            ratio=0.5), out=Path("pruned.safetensors"))
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from shared.console import get_console
from shared.errors import InputError
from shared.profiling import count_macs, count_params
from vbp_cli import options, text_data
from vbp_cli.mlps import VBPError, find_mlps
from vbp_cli.models import (
    MODEL_FILE,
    Architecture,
    build_model,
    example_input,
    save_model,
    saved_model_path,
)
from vbp_cli.prune import (
    check_stats_match,
    make_importance,
    mlp_mac_costs,
    mlp_scores,
    prune_model,
    ratio_for_mac_reduction,
)
from vbp_cli.stats import NeuronStats
from vbp_cli.statsfile import STATS_FILE, load_stats, save_stats

if TYPE_CHECKING:
    from shared.classify import FitConfig


@contextmanager
def bad_input(prefix: str = "") -> Iterator[None]:
    """The algorithm's ValueErrors (VBPError) are the user's bad input: exit 2, one line."""
    try:
        yield
    except VBPError as exc:
        raise InputError(f"{prefix}{exc}") from None


def read_checkpoint(path: Path, ema: bool = True) -> tuple[dict[str, torch.Tensor], str]:
    """The weights of a foreign checkpoint (.pth/.safetensors, read once) and which of its
    sets they are: "ema" (a timm train.py checkpoint's state_dict_ema), "raw" (its
    state_dict while it also holds EMA weights: --no-ema) or "plain" (the file holds one set
    of weights)."""
    from shared.checkpoints import (
        EMA_KEYS,
        RAW_KEYS,
        load_state_dict,
        safe_torch_load,
        unwrap_state_dict,
    )

    if Path(path).suffix == ".safetensors":
        return load_state_dict(path), "plain"
    obj = safe_torch_load(path)
    state = unwrap_state_dict(obj, path, ema=ema)
    held = obj if isinstance(obj, dict) else {}

    def holds(*keys: str) -> bool:
        return any(isinstance(held.get(k), dict) for k in keys)

    has_ema, has_raw = holds(*EMA_KEYS), holds(*RAW_KEYS)
    if has_ema and (ema or not has_raw):
        return state, "ema"
    return state, "raw" if has_ema else "plain"


def load_checkpoint_weights(
    model: nn.Module, path: Path, *, ema: bool = True, flag: str = "--checkpoint"
) -> str:
    """Load a foreign checkpoint (.pth/.safetensors; timm train.py files with their EMA
    weights unless `ema` is false) strictly into `model`; returns which weights were used
    (see `read_checkpoint`). A mismatch is one line naming the first bad key."""
    state, which = read_checkpoint(path, ema)
    own = model.state_dict()
    shapes = [k for k in own if k in state and state[k].shape != own[k].shape]
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if shapes or missing or unexpected:
        parts = [
            f"{k} is {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
            for k in shapes[:1]
        ]
        parts += [f"{len(missing)} missing keys (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})"] if unexpected else []
        raise InputError(f"{flag} {path} does not match the model: {'; '.join(parts)}")
    model.load_state_dict(state)
    return which


def build_with_weights(
    spec: str,
    *,
    checkpoint: Path | None = None,
    pretrained: bool = False,
    model_kwargs: dict[str, Any] | None = None,
    ema: bool = True,
    flag: str = "--checkpoint",
) -> tuple[nn.Module, Architecture, str | None]:
    """`build_model` whose foreign checkpoint honours `ema`; also returns which weights of
    the checkpoint were used ("ema" / "raw" / "plain"; None without a checkpoint)."""
    if checkpoint is None or saved_model_path(spec) is not None:
        net, arch = build_model(
            spec, checkpoint=checkpoint, pretrained=pretrained, model_kwargs=model_kwargs
        )
        return net, arch, None
    net, arch = build_model(spec, model_kwargs=model_kwargs)
    which = load_checkpoint_weights(net, Path(checkpoint), ema=ema, flag=flag)
    if which != "plain":  # a timm train.py checkpoint: say which of its weights were taken
        get_console().info(f"{flag} {checkpoint}: {WEIGHTS_USED[which]}")
    return net.eval(), arch, which


WEIGHTS_USED = {
    "ema": "its EMA weights (state_dict_ema; --no-ema for the raw ones)",
    "raw": "its raw weights (--no-ema; it also holds EMA weights)",
    "plain": "its weights",
}


def _build(cfg: Any) -> tuple[nn.Module, Architecture, str | None]:
    return build_with_weights(
        cfg.model,
        checkpoint=cfg.checkpoint,
        pretrained=getattr(cfg, "pretrained", False),
        model_kwargs=getattr(cfg, "model_kw", None) or None,
        ema=getattr(cfg, "ema", True),
    )


def _check_data_exists(data: str) -> None:
    """A --data folder or text file that is not there: refused before any work."""
    if data.startswith("builtin:"):
        return
    path = Path(data[len("text:") :] if text_data.is_text_spec(data) else data).expanduser()
    if not path.exists():
        raise InputError(f"--data {data}: no such file or folder")


def _check_data_kind(model: str, data: str, *, causal: bool) -> None:
    """Text data goes with a transformers text model (a causal LM where `causal`), image data
    with an image model: a mismatch is refused before any model is loaded."""
    from vbp_cli import hf

    path = Path(model).expanduser()
    folder = path.parent if path.name == MODEL_FILE else path
    model_type = hf.read_config(folder)["model_type"] if hf.is_hf_folder(folder) else None
    if text_data.is_text_spec(data):
        wanted = hf.CAUSAL_LM if causal else tuple(t for t in hf.FAMILIES if t != "vit")
        if model_type not in wanted:
            kind = "a causal language model" if causal else "a transformers text model"
            raise InputError(
                f"--data {data}: text data needs {kind} folder ({', '.join(wanted)}); "
                f"{model} is not one"
            )
    elif model_type is not None and model_type != "vit":
        raise InputError(
            f"--data {data}: {model} is a {model_type} text model: give it text (--data text:PATH)"
        )


def _workers(requested: int, data: str) -> int:
    from shared.loaders import resolve_workers

    return resolve_workers(requested, data)


# -- collect-stats ---------------------------------------------------------------------------
def collect_stats_from_options(
    cfg: options.CollectStatsOptions, *, out: Path | None = None, device: torch.device | str = "cpu"
) -> tuple[dict[str, NeuronStats], dict[str, Any]]:
    """VBP statistics of the model over `cfg.data` (under torchrun each rank takes a share of
    the images; the result is merged exactly); saved to `out`/stats.safetensors when given.
    Returns the statistics and the metrics."""
    from shared import distributed
    from shared.loaders import make_loader, shard
    from shared.timm_data import classification_data
    from vbp_cli.stats import collect_stats

    dev = torch.device(device)
    _check_data_exists(cfg.data)  # before the model is loaded
    _check_data_kind(cfg.model, cfg.data, causal=False)
    net, arch, weights = _build(cfg)
    net.to(dev)
    if text_data.is_text_spec(cfg.data):  # token windows from the model folder's tokenizer
        text = text_data.TextWindows(cfg.data, cfg.model, cfg.seq_len, cfg.split)
        token_batches, _ = text_data.stats_batches(
            text, net, batch_size=cfg.batch_size, batches=cfg.batches, seed=cfg.seed
        )
        n, images = len(token_batches), iter(token_batches)
    else:
        ds = classification_data(cfg.data, net, cfg.split)
        loader = make_loader(
            shard(ds.dataset),
            cfg.batch_size,
            shuffle=cfg.batches > 0,
            seed=cfg.seed,
            num_workers=_workers(cfg.num_workers, cfg.data),
            distribute=False,
        )
        n = min(cfg.batches, len(loader)) if cfg.batches else len(loader)
        images = (x for x, _ in itertools.islice(loader, n))
    start = time.perf_counter()
    with bad_input("--model: "):
        stats = collect_stats(
            net, get_console().progress(images, "collect-stats", total=n), device=dev, amp=cfg.amp
        )
    seconds = time.perf_counter() - start
    path = Path(out) / STATS_FILE if out is not None else None
    if path is not None and distributed.is_main():  # every rank holds the merged result
        save_stats(stats, path, arch)
    metrics = {
        "mlps": len(stats),
        "neurons": sum(s.mean.numel() for s in stats.values()),
        "samples_per_neuron": next(iter(stats.values())).count,
        "seconds": round(seconds, 3),
        "world_size": distributed.world_size(),
        "stats": str(path) if path else None,
        "weights": weights,
    }
    return stats, metrics


# -- prune -----------------------------------------------------------------------------------
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
        """Before/after table: GMACs, parameters, MLP neurons."""

        def change(a: int, b: int) -> str:
            return f"{(b - a) / a:+.2%}"

        hid_b, hid_a = sum(self.widths_before.values()), sum(self.widths_after.values())
        mb, ma, pb, pa = self.macs_before, self.macs_after, self.params_before, self.params_after
        return [
            ("GMACs", mb / 1e9, ma / 1e9, change(mb, ma)),
            ("params (M)", pb / 1e6, pa / 1e6, change(pb, pa)),
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
    stats: Mapping[str, NeuronStats] | str | Path,
    *,
    ratio: float | None = None,
    target_macs_reduction: float | None = None,
    criterion: str = "variance",
    compensation: bool = True,
    round_to: int = 1,
    min_keep: int = 1,
    seed: int = 0,
    uniform: bool = False,
) -> PruneReport:
    """Prune `model` in place, to a ratio or to a MAC-reduction target (exactly one), and
    measure it before and after."""
    if (ratio is None) == (target_macs_reduction is None):
        raise InputError("give exactly one of --ratio and --target-macs-reduction")
    if not isinstance(stats, Mapping):
        stats = load_stats(stats)
    with bad_input():
        mlps = find_mlps(model)
    with bad_input("--stats: "):
        check_stats_match(mlps, stats)
    example = example_input(model)
    macs_before, params_before = count_macs(model, example), count_params(model)
    widths_before = {ref.name: ref.hidden for ref in mlps}
    with bad_input():
        if target_macs_reduction is not None:
            scores = mlp_scores(mlps, make_importance(criterion, stats, seed=seed))
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
            uniform=uniform,
        )
    return PruneReport(
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
        extra={"round_to": round_to, "uniform": uniform},
    )


# the options of `prune` that are `prune_with_report`'s keywords of the same names
PRUNE_SETTINGS = (
    "ratio",
    "target_macs_reduction",
    "criterion",
    "compensation",
    "round_to",
    "min_keep",
    "seed",
    "uniform",
)


def prune_to_file(
    cfg: options.PruneOptions, *, out: Path | None = None
) -> tuple[nn.Module, PruneReport]:
    """Build the model, prune it as `cfg` says and, with `out`, save it (safetensors with
    its architecture and where it came from, loadable by `load_model`)."""
    net, arch, weights = _build(cfg)
    settings = {name: getattr(cfg, name) for name in PRUNE_SETTINGS}
    report = prune_with_report(net, cfg.stats, **settings)
    if out is not None:
        source = {
            # a transformers folder absolute, as the checkpoint: finetune may run elsewhere
            "model": str(Path(cfg.model).expanduser().resolve()) if arch.hf else cfg.model,
            "checkpoint": str(Path(cfg.checkpoint).resolve()) if cfg.checkpoint else None,
            "pretrained": cfg.pretrained,
            "model_kwargs": arch.model_kwargs,
            "ema": cfg.ema,
        }
        save_model(net, arch, out, extra={"source": source, "prune": report.metrics()})
        if arch.hf:  # a transformers folder: what from_pretrained makes of it
            from vbp_cli import hf

            report.extra |= hf.loadability(net)
    report.extra["weights"] = weights
    return net, report


# -- teacher ---------------------------------------------------------------------------------
def _recorded_source(model_path: str) -> dict[str, Any]:
    """What `prune` recorded about the unpruned model in the pruned model's file."""
    from shared.checkpoints import read_metadata

    path = Path(model_path)
    meta = read_metadata(path / MODEL_FILE if path.is_dir() else path)
    return meta.get("source") or {}


def build_teacher(
    student_path: str | None,
    teacher: str | None,
    checkpoint: Path | None = None,
    pretrained: bool = False,
    kwargs: dict[str, Any] | None = None,
    ema: bool | None = None,
) -> tuple[nn.Module, str | None]:
    """The unpruned model: as given, or as recorded by `prune` in the student's file (with
    the EMA choice prune made, unless `ema` says otherwise). A timm name without kwargs takes
    the recorded kwargs (img_size, num_classes...). Also returns which weights of its
    checkpoint were used ("ema" / "raw" / "plain", None without one)."""
    source = _recorded_source(student_path) if student_path else {}
    if teacher is None:
        if not source.get("model"):
            raise InputError(
                f"--model {student_path} does not record its unpruned model: pass --teacher"
            )
        ckpt = source.get("checkpoint")
        net, _, which = build_with_weights(
            source["model"],
            checkpoint=Path(ckpt) if ckpt else None,
            pretrained=bool(source.get("pretrained")),
            model_kwargs=source.get("model_kwargs") or None,
            ema=source.get("ema", True) if ema is None else ema,
            flag="teacher checkpoint",
        )
        return net, which
    from vbp_cli import hf

    parsed = dict(kwargs or {})
    if not parsed and not hf.is_hf_folder(teacher) and saved_model_path(teacher) is None:
        parsed = source.get("model_kwargs") or {}
    net, _, which = build_with_weights(
        teacher,
        checkpoint=checkpoint,
        pretrained=pretrained,
        model_kwargs=parsed,
        ema=True if ema is None else ema,
        flag="--teacher-checkpoint",
    )
    return net, which


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


def check_lm_compatible(student: nn.Module, teacher: nn.Module) -> None:
    """Teacher and student language models must predict the same vocabulary."""
    from vbp_cli import hf

    if not hf.is_causal_lm(teacher):
        raise InputError(f"--teacher is a {type(teacher).__name__}, not a causal language model")
    vocab = [m.get_output_embeddings().weight.shape[0] for m in (student, teacher)]
    if vocab[0] != vocab[1]:
        raise InputError(f"--teacher predicts {vocab[1]} tokens, the model {vocab[0]}")


# -- finetune --------------------------------------------------------------------------------
def finetune(
    cfg: options.FinetuneOptions,
    *,
    device: torch.device | str = "cpu",
    run: Any | None = None,
    out: Path | None = None,
) -> dict[str, Any]:
    """Knowledge-distillation fine-tuning of a pruned model from its unpruned teacher on the
    shared training loop: an image model on --data images (top-1 on the val split after), a
    causal language model on --data text:PATH windows (held-out perplexity before and after).
    `run` (the command's Run) gives checkpoints and --resume; the model is written to the run
    folder, or to `out`/model.safetensors from Python (a transformers model as a folder, as
    the pruned one was)."""
    from shared import distributed
    from shared.classify import FitConfig
    from vbp_cli.models import load_model_with_arch

    dev = torch.device(device)
    torch.manual_seed(cfg.seed)
    _check_data_exists(cfg.data)
    text = text_data.is_text_spec(cfg.data)
    _check_data_kind(cfg.model, cfg.data, causal=True)
    student, arch = load_model_with_arch(cfg.model)
    teacher_net, teacher_weights = build_teacher(
        cfg.model,
        cfg.teacher,
        cfg.teacher_checkpoint,
        cfg.teacher_pretrained,
        cfg.teacher_kw,
        ema=cfg.ema if cfg.teacher_checkpoint or not cfg.ema else None,
    )
    (check_lm_compatible if text else check_compatible)(student, teacher_net)
    student.to(dev)
    teacher_net.to(dev).eval().requires_grad_(False)
    # the training settings finetune has options for (epochs, lr, KD...); the rest default
    fit_cfg = FitConfig(
        **{f.name: getattr(cfg, f.name) for f in fields(FitConfig) if hasattr(cfg, f.name)}
    )
    job = _Distillation(cfg, fit_cfg, student, teacher_net, arch, dev, run)
    fit, score = _finetune_text(job) if text else _finetune_images(job)
    path = run.path(MODEL_FILE) if run is not None else (Path(out) / MODEL_FILE if out else None)
    if path is not None and distributed.is_main():
        recipe = {"epochs": cfg.epochs, "data": cfg.data}
        # the pruned model's record of its unpruned one stays: it is the teacher of a rerun
        extra = {"source": _recorded_source(cfg.model), "finetune": recipe}
        save_model(student, arch, path, extra=extra)
    written = {"model": str(path.parent if arch.hf else path) if path else None}
    return {**fit, **score(), **written, "teacher_weights": teacher_weights}


@dataclass
class _Distillation:
    """What a finetune distils, with what settings, where: the same for both kinds of data."""

    cfg: options.FinetuneOptions
    fit_cfg: FitConfig
    student: nn.Module
    teacher: nn.Module
    arch: Architecture
    device: torch.device
    run: Any | None


# the training summary, and the scores of the trained model (called once it is saved)
Fitted = tuple[dict[str, Any], Callable[[], dict[str, Any]]]


def _finetune_images(job: _Distillation) -> Fitted:
    """Distil on the train split (timm augmentation); scores: top-1/top-5 on the val split."""
    from shared import distributed
    from shared.classify import evaluate_classifier, fit_classifier
    from shared.loaders import make_loader, shard
    from shared.timm_data import classification_data

    cfg, dev = job.cfg, job.device
    train = classification_data(cfg.data, job.student, "train", augment=True)
    val = classification_data(cfg.data, job.student, "val")
    workers = _workers(cfg.num_workers, cfg.data)
    loader = make_loader(
        train.dataset,
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        num_workers=workers,
        drop_last=True,
        pin_memory=dev.type == "cuda",
    )
    if len(loader) == 0:
        raise InputError(
            f"--data {cfg.data}: fewer training images than --batch-size {cfg.batch_size}"
        )
    fit = fit_classifier(
        distributed.wrap_ddp(job.student, dev),
        loader,
        job.fit_cfg,
        device=dev,
        teacher=job.teacher,
        run=job.run,
        description="finetune",
    )

    def score() -> dict[str, Any]:
        val_loader = make_loader(
            shard(val.dataset), 256, shuffle=False, num_workers=workers, distribute=False
        )
        return evaluate_classifier(
            job.student, val_loader, device=dev, teacher=job.teacher, amp=cfg.amp
        )

    return fit, score


def _finetune_text(job: _Distillation) -> Fitted:
    """Distil the next-token distributions on the train windows of the text, as a classifier
    of tokens (`vbp_cli.lm_distill`); scores: perplexity on the held-out windows (before
    fine-tuning, after, and the teacher's) and the mean per-token KL from the teacher before
    and after."""
    from torch.utils.data import TensorDataset

    from shared import distributed
    from shared.classify import fit_classifier
    from shared.loaders import make_loader
    from vbp_cli import hf
    from vbp_cli.lm_distill import NextTokenLogits, heldout_scores, next_token_batch

    cfg, dev, student = job.cfg, job.device, job.student
    assert job.arch.hf is not None  # a causal LM folder (see _check_data_kind)
    seq_len = cfg.seq_len or options.TEXT_SEQ_LEN
    windows = {
        split: text_data.TextWindows(cfg.data, job.arch.hf["path"], seq_len, split).of(student)
        for split in ("train", "test")
    }
    loader = make_loader(
        TensorDataset(windows["train"]),
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        drop_last=True,
        pin_memory=dev.type == "cuda",
    )
    loader.collate_fn = next_token_batch  # (windows, their next tokens as labels)
    if len(loader) == 0:
        raise InputError(
            f"--data {cfg.data}: {windows['train'].shape[0]} training windows of "
            f"{windows['train'].shape[1]} tokens, fewer than --batch-size {cfg.batch_size}"
        )

    def heldout() -> dict[str, torch.Tensor]:
        test = windows["test"]
        return heldout_scores(student, job.teacher, test, batch_size=cfg.batch_size, device=dev)

    before = heldout()
    fit = fit_classifier(
        distributed.wrap_ddp(NextTokenLogits(student), dev),
        loader,
        job.fit_cfg,
        device=dev,
        teacher=NextTokenLogits(job.teacher),
        run=job.run,
        description="finetune",
    )

    def score() -> dict[str, Any]:
        after = heldout()
        ppl = text_data.perplexity_from_nll
        return {
            **ppl(after["nll"]),
            "perplexity_before": ppl(before["nll"])["perplexity"],
            "teacher_perplexity": ppl(before["teacher_nll"])["perplexity"],
            "kl": float(after["kl"].mean()),
            "kl_before": float(before["kl"].mean()),
            "train_windows": int(windows["train"].shape[0]),
            "seq_len": int(windows["test"].shape[1]),
            **hf.loadability(student),
        }

    return fit, score


# -- evaluate, benchmark, export -------------------------------------------------------------
def evaluate(cfg: options.EvaluateOptions, *, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Top-1/top-5 (and agreement with a teacher), params, MACs, batch-1 latency and
    throughput."""
    from shared.classify import evaluate_classifier
    from shared.loaders import make_loader
    from shared.profiling import measure_latency, measure_throughput
    from shared.timm_data import classification_data

    dev = torch.device(device)
    _check_data_exists(cfg.data)
    _check_data_kind(cfg.model, cfg.data, causal=True)
    net, _, weights = _build(cfg)
    teacher_net, teacher_weights = None, None
    if cfg.teacher:
        student_path = cfg.model if saved_model_path(cfg.model) is not None else None
        teacher_net, teacher_weights = build_teacher(
            student_path, cfg.teacher, cfg.teacher_checkpoint, cfg.teacher_pretrained,
            cfg.teacher_kw, ema=cfg.ema,
        )  # fmt: skip
        check_compatible(net, teacher_net)
        teacher_net.to(dev)
    example = example_input(net)
    out: dict[str, Any] = {"params": count_params(net), "macs": count_macs(net, example)}
    net.to(dev)
    if text_data.is_text_spec(cfg.data):  # language models: perplexity on held-out text
        split = "test" if cfg.split == "val" else cfg.split
        text = text_data.TextWindows(cfg.data, cfg.model, cfg.seq_len, split)
        lm = text_data.evaluate_lm(text, net, batch_size=cfg.batch_size, device=dev)
        return out | lm | {"device": str(dev), "weights": weights}
    ds = classification_data(cfg.data, net, cfg.split)
    workers = _workers(cfg.num_workers, cfg.data)
    loader = make_loader(ds.dataset, cfg.batch_size, shuffle=False, num_workers=workers)
    out |= evaluate_classifier(net, loader, device=dev, teacher=teacher_net, amp=cfg.amp)
    if cfg.speed:
        lat = measure_latency(net, example.to(dev), device=dev, amp=cfg.amp)
        batch = example_input(net, cfg.throughput_batch).to(dev)
        thr = measure_throughput(net, batch, device=dev, amp=cfg.amp)
        out |= {
            "latency_ms": lat["median_ms"],
            "throughput": thr["images_per_s"],
            "throughput_batch": cfg.throughput_batch,
        }
    out |= {"device": str(dev), "weights": weights, "teacher_weights": teacher_weights}
    return out


def benchmark(
    cfg: options.BenchmarkOptions, *, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Dense and pruned models timed interleaved in one run (shared.profiling.compare_speed):
    one row per (batch size, model) with ms/batch, images/s and the speed-up over dense,
    plus both models' parameter and MAC counts."""
    from shared.profiling import compare_speed

    dev = torch.device(device)
    dense_net, _, weights = _build(cfg)
    pruned_net, _ = build_model(cfg.pruned)
    models = {"dense": dense_net.eval(), "pruned": pruned_net.eval()}
    example = example_input(dense_net)
    counts = {
        name: {"params": count_params(m), "macs": count_macs(m, example)}
        for name, m in models.items()
    }
    for m in models.values():
        m.to(dev)
    rows = compare_speed(
        models,
        lambda b: example_input(dense_net, b),
        cfg.batch_size,
        repeats=cfg.repeats,
        device=dev,
        amp=cfg.amp,
    )
    return {"rows": rows, "counts": counts, "device": str(dev), "weights": weights}


def export_path(cfg: options.ExportOptions) -> tuple[str, Path]:
    """(format, output file or folder): `--onnx PATH` is `--format onnx --output PATH`;
    without an output it goes beside a saved model (model.onnx / .ts / .pt2, the folder timm/)
    or into the current folder, named after the timm model."""
    from vbp_cli.export import SUFFIX

    if cfg.onnx is not None:
        if cfg.output is not None or cfg.format != "onnx":
            raise InputError("--onnx PATH is --format onnx --output PATH: give one of them")
        return "onnx", Path(cfg.onnx)
    if cfg.output is not None:
        return cfg.format, Path(cfg.output)
    saved = saved_model_path(cfg.model)
    if cfg.format == "timm":
        return "timm", saved.parent / "timm" if saved is not None else Path(f"{cfg.model}-timm")
    stem = saved.with_suffix("") if saved is not None else Path(cfg.model)
    return cfg.format, stem.with_name(stem.name + SUFFIX[cfg.format])


def export(cfg: options.ExportOptions) -> dict[str, Any]:
    """Export to ONNX, TorchScript or torch.export (.pt2) with a dynamic batch axis, or to a
    folder timm loads; load it back the way a user without vbp does and compare its logits
    with PyTorch's on another batch size. A file is kept only when they differ by at most
    `cfg.tolerance` (an earlier one stays otherwise); a timm folder's files are removed again."""
    from shared.errors import ToolkitError
    from shared.io import atomic_path
    from vbp_cli.export import check_export, export_model

    fmt, path = export_path(cfg)
    out_flag = "--onnx" if cfg.onnx is not None else "--output"
    for given, flag in ((cfg.checkpoint, "--checkpoint"), (cfg.model, "--model")):
        if given is not None and Path(given).exists() and Path(given).resolve() == path.resolve():
            raise InputError(f"{out_flag} {path}: is the {flag} being exported; choose another")
    with ExitStack() as staged:
        # A file format is written to a temporary file beside `path` and renamed onto it once
        # it passed the check below; making that file checks the destination (writable, not
        # a folder) before the model is loaded. A timm folder is written in place.
        try:
            target = path if fmt == "timm" else staged.enter_context(atomic_path(path))
        except InputError as exc:
            raise InputError(f"{out_flag} {exc}") from None
        net, arch, weights = _build(cfg)
        net.eval()
        if fmt == "timm" and not arch.timm_name:
            raise InputError(f"--format timm: {cfg.model} is not a timm model")
        try:
            export_model(
                net, example_input(net, 2), target, fmt, opset=cfg.opset,
                timm_name=arch.timm_name, model_kwargs=arch.model_kwargs,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 (the exporters raise many types; name the cause)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ToolkitError(f"{fmt} export of {cfg.model} failed: {first}") from exc
        diff = check_export(net, target, fmt, example_input(net, 3))
        if diff > cfg.tolerance:
            if fmt == "timm":
                for written in (path / "config.json", path / "model.safetensors"):
                    written.unlink(missing_ok=True)
            raise ToolkitError(f"{fmt} output differs from PyTorch by {diff:.2e} > {cfg.tolerance}")
    files = [p for p in path.iterdir() if p.is_file()] if path.is_dir() else [path]
    out = {"format": fmt, "path": str(path), "max_abs_diff": diff}
    out["bytes"] = sum(p.stat().st_size for p in files)
    if fmt == "timm":
        out["loads_with_timm"] = json.loads((path / "config.json").read_text())["vbp"][
            "loads_with_timm"
        ]
    if fmt == "onnx":
        out["onnx"] = str(path)  # the key before --format existed
    return {**out, "weights": weights}
