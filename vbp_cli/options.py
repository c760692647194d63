"""The options of every `vbp` command, declared once (help, bounds, flag) next to their field.

These dataclasses are also the configs of `vbp_cli.api`. The timm kwargs are a JSON string
on the command line (`--model-kwargs`); from Python give the dict instead (`model_kw=`), or
both: the JSON is parsed into `model_kw` when the config is made.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config import parse_json_object
from shared.options import opt

MODEL_HELP = (
    "timm model name (e.g. deit_base_patch16_224), a Hugging Face transformers folder with "
    "config.json (LLaMA, Qwen2, Mistral, GPT-2, BERT, ViT), or the path of a model vbp wrote "
    "(a directory or its model.safetensors)."
)
CHECKPOINT_HELP = (
    "Weights for a timm model name: .pth/.pt (read with weights_only) or .safetensors."
)
PRETRAINED_HELP = "timm's hub weights (needs network or a hub cache)."
KWARGS_HELP = (
    "JSON overrides for timm.create_model, e.g. "
    '\'{"img_size": 32, "patch_size": 4, "num_classes": 10}\'.'
)
DATA_HELP = (
    "Image folder (ImageNet layout, optionally with train/ and val/), builtin:digits, or "
    "text:PATH (a text file or folder, tokenised with the model folder's tokenizer)."
)
AMP_HELP = "Mixed precision on CUDA (bf16 where supported); ignored on CPU."
WORKERS_HELP = "Data loader workers (-1: auto)."
TEACHER_CKPT_HELP = "Weights for a timm-name teacher."
EMA_HELP = (
    "A timm train.py checkpoint given here that holds EMA weights: use them (timm's "
    "default); --no-ema: its raw weights."
)
EXPORT_FORMATS = ("onnx", "torchscript", "pt2", "timm")
TEACHER_PRETRAINED_HELP = "Teacher from timm's hub weights."
TEXT_SEQ_LEN = 128  # tokens per window of --data text:PATH
SEQ_LEN_HELP = "Tokens per window with --data text:PATH."
TEACHER_KWARGS_HELP = (
    "JSON kwargs for a timm-name teacher (default: the ones the pruned model records)."
)


class _ParsesKwargs:
    """Parse the JSON flags into dicts once, when the config is made."""

    def __post_init__(self) -> None:
        for flag, text, target in (
            ("--model-kwargs", "model_kwargs", "model_kw"),
            ("--teacher-kwargs", "teacher_kwargs", "teacher_kw"),
        ):
            if hasattr(self, text) and getattr(self, text):
                parsed = parse_json_object(getattr(self, text), flag)
                setattr(self, target, {**parsed, **getattr(self, target)})


@dataclass
class _ModelOnData(_ParsesKwargs):
    """The leading options of the commands that run a model over --data."""

    model: str = opt(help=MODEL_HELP, short="-m")
    data: str = opt(help=DATA_HELP, short="-d")
    checkpoint: Path | None = opt(None, CHECKPOINT_HELP)
    ema: bool = opt(True, EMA_HELP)
    pretrained: bool = opt(False, PRETRAINED_HELP)
    model_kwargs: str | None = opt(None, KWARGS_HELP)


@dataclass
class CollectStatsOptions(_ModelOnData):
    split: str = opt("train", "Split of --data to use.")
    batches: int = opt(0, "Batches to use (0: the whole split).", min=0)
    batch_size: int = opt(64, "Images per batch.", short="-b", min=1)
    num_workers: int = opt(-1, WORKERS_HELP, min=-1)
    amp: bool = opt(True, AMP_HELP)
    seed: int = opt(0, "Random seed (the order of the images with --batches).", min=0)
    seq_len: int = opt(TEXT_SEQ_LEN, SEQ_LEN_HELP, min=2)
    model_kw: dict[str, Any] = field(default_factory=dict)


@dataclass
class PruneOptions(_ParsesKwargs):
    model: str = opt(help=MODEL_HELP, short="-m")
    stats: Path = opt(help="Output of collect-stats (its directory or stats.safetensors).")
    ratio: float | None = opt(
        None, "Fraction of all MLP neurons to remove, in [0, 1).", min=0, max=1, max_open=True
    )
    target_macs_reduction: float | None = opt(
        None,
        "Find the ratio that removes this fraction of the model's MACs, e.g. 0.35.",
        min=0,
        max=1,
        min_open=True,
        max_open=True,
    )
    criterion: str = opt(
        "variance",
        "Neuron ranking (flap: variance x |down column|^2; wanda: |down column| x input norm).",
        choices=("variance", "magnitude", "random", "flap", "wanda"),
    )
    uniform: bool = opt(
        False,
        "Remove the same share of every MLP (ranked within it): a transformers folder then "
        "also loads with from_pretrained.",
    )
    compensation: bool = opt(True, "Mean-shift compensation into fc2's bias.")
    round_to: int = opt(
        1, "Keep every hidden width a multiple of N (GEMM-friendly); 1 = exact ranking.", min=1
    )
    min_keep: int = opt(1, "Neurons kept at least per MLP.", min=1)
    checkpoint: Path | None = opt(None, CHECKPOINT_HELP)
    ema: bool = opt(True, EMA_HELP)
    pretrained: bool = opt(False, PRETRAINED_HELP)
    model_kwargs: str | None = opt(None, KWARGS_HELP)
    seed: int = opt(0, "Random seed (the random criterion).", min=0)
    model_kw: dict[str, Any] = field(default_factory=dict)


@dataclass
class FinetuneOptions(_ParsesKwargs):
    model: str = opt(
        help="The pruned model (a path vbp wrote: a timm model file or a transformers folder).",
        short="-m",
    )
    data: str = opt(
        help="Image folder or builtin:digits for an image model; text:PATH (a text file or "
        "folder, tokenised with the model folder's tokenizer) for a language model.",
        short="-d",
    )
    teacher: str | None = opt(
        None,
        "The unpruned model: timm name, vbp path or transformers folder. Default: the model "
        "prune started from.",
    )
    teacher_checkpoint: Path | None = opt(None, TEACHER_CKPT_HELP)
    teacher_pretrained: bool = opt(False, TEACHER_PRETRAINED_HELP)
    teacher_kwargs: str | None = opt(None, TEACHER_KWARGS_HELP)
    ema: bool = opt(True, EMA_HELP)
    epochs: float = opt(10.0, "Epochs over --data's train split.", min=0)
    batch_size: int = opt(64, "Images (or text windows) per batch.", short="-b", min=1)
    lr: float = opt(1e-4, "Peak AdamW learning rate (cosine, warm-up).", min=0, min_open=True)
    weight_decay: float = opt(0.05, "AdamW weight decay.", min=0)
    kd_alpha: float = opt(
        0.5, "Weight of the KD term: (1-a)*CE + a*T^2*KL (CE: labels or next tokens).", min=0, max=1
    )
    kd_temperature: float = opt(2.0, "KD temperature T.", min=0.01)
    # None rather than the default: the resume states of image runs stay valid
    seq_len: int | None = opt(
        None, f"Tokens per window with --data text:PATH (default {TEXT_SEQ_LEN}).", min=2
    )
    amp: bool = opt(True, AMP_HELP)
    num_workers: int = opt(-1, WORKERS_HELP, min=-1)
    seed: int = opt(0, "Random seed.", min=0)
    checkpoint_every: int = opt(
        500,
        "Save resume state every N steps (0: only on SIGTERM/SIGUSR1/Ctrl-C).",
        min=0,
    )
    teacher_kw: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvaluateOptions(_ModelOnData):
    teacher: str | None = opt(
        None, "Also report top-1 agreement with this model (timm name or vbp path)."
    )
    teacher_checkpoint: Path | None = opt(None, TEACHER_CKPT_HELP)
    teacher_pretrained: bool = opt(False, TEACHER_PRETRAINED_HELP)
    teacher_kwargs: str | None = opt(None, TEACHER_KWARGS_HELP)
    split: str = opt("val", "Split of --data.")
    batch_size: int = opt(128, "Images per batch.", short="-b", min=1)
    throughput_batch: int = opt(32, "Batch for throughput.", min=1)
    speed: bool = opt(True, "Measure latency and throughput.")
    amp: bool = opt(True, AMP_HELP)
    num_workers: int = opt(-1, WORKERS_HELP, min=-1)
    seq_len: int = opt(TEXT_SEQ_LEN, SEQ_LEN_HELP, min=2)
    model_kw: dict[str, Any] = field(default_factory=dict)
    teacher_kw: dict[str, Any] = field(default_factory=dict)


@dataclass
class BenchmarkOptions(_ParsesKwargs):
    model: str = opt(help="The dense model (timm name or path).", short="-m")
    pruned: str = opt(help="The pruned model (path vbp wrote).")
    checkpoint: Path | None = opt(None, CHECKPOINT_HELP)
    ema: bool = opt(True, EMA_HELP)
    pretrained: bool = opt(False, PRETRAINED_HELP)
    model_kwargs: str | None = opt(None, KWARGS_HELP)
    batch_size: list[int] = opt(
        help="Batch sizes (repeat the flag).", short="-b", min=1, default_factory=lambda: [1, 32]
    )
    repeats: int = opt(5, "Interleaved timing rounds.", min=1)
    amp: bool = opt(True, AMP_HELP)
    model_kw: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportOptions(_ParsesKwargs):
    model: str = opt(help=MODEL_HELP, short="-m")
    format: str = opt(
        "onnx",
        "onnx (onnxruntime), torchscript (torch.jit.load), pt2 (torch.export.load): each runs "
        "without vbp or timm; timm: a folder of config.json + model.safetensors for timm's "
        "own loader (see the README for uneven MLP widths).",
        choices=EXPORT_FORMATS,
    )
    output: Path | None = opt(
        None,
        "Output file, a folder for timm (default: beside a saved model, model.onnx / model.ts "
        "/ model.pt2 / timm/).",
    )
    onnx: Path | None = opt(None, "Output .onnx file (the same as --format onnx --output PATH).")
    opset: int = opt(18, "ONNX opset.", min=7)
    tolerance: float = opt(1e-3, "Largest allowed |exported - torch| on the logits.", min=0)
    model_kwargs: str | None = opt(None, KWARGS_HELP)
    checkpoint: Path | None = opt(None, CHECKPOINT_HELP)
    ema: bool = opt(True, EMA_HELP)
    model_kw: dict[str, Any] = field(default_factory=dict)
