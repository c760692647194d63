"""`make demo` for hello: distil real digits to 10 images per class and train a student on
them with projector labels (HeLlO) and with hard labels; print accuracy and label storage.

Uses the cached digits teacher (trained once, a few minutes) and the real ImageNet
EfficientNet-Lite0 shipped on PyPI as the projector's encoder, through the real commands:
build-projector -> distill -> synthesize -> train-student (projector | hard).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from hello_cli import recipes

IPC = 10
STUDENT_EPOCHS = 40  # the benchmark uses 60; fewer keep the demo at a few minutes
DISTILL_EPOCHS = 3  # the benchmark uses 20 (91% teacher agreement); 3 keep the demo short


def _hello(*args: str) -> dict:
    exe = str(Path(sys.executable).parent / "hello")
    res = subprocess.run(
        [exe, *args, "--json", "--quiet"], stdout=subprocess.PIPE, text=True, check=True
    )
    return json.loads(res.stdout)


def main() -> int:
    from shared.console import get_console

    console = get_console()
    ckpt, meta = recipes.teacher_checkpoint()
    console.info(f"teacher: {ckpt} (val top-1 {meta['val_top1']:.1f}%)")
    enc = recipes.ENCODERS["efficientnet-lite0"]
    with tempfile.TemporaryDirectory(prefix="hello-demo-") as tmp:
        out = Path(tmp)
        _hello(
            "build-projector",
            "--encoder",
            enc["encoder"],
            "--encoder-weights",
            enc["weights"],
            "--encoder-image-size",
            str(enc["image_size"]),
            "--classes",
            "builtin:digits",
            "--out",
            str(out / "zero-shot"),
        )
        proj = _hello(
            "distill",
            "--projector",
            str(out / "zero-shot"),
            "--teacher",
            str(ckpt),
            "--data",
            "builtin:digits",
            "--rank",
            str(enc["rank"]),
            "--head-rank",
            str(enc["head_rank"]),
            "--epochs",
            str(DISTILL_EPOCHS),
            "--lr",
            str(enc["lr"]),
            "--out",
            str(out / "projector"),
        )
        _hello(
            "synthesize",
            "--teacher",
            str(ckpt),
            "--data",
            "builtin:digits",
            "--ipc",
            str(IPC),
            "--out",
            str(out / "synthetic"),
        )
        students = {
            labels: _hello(
                "train-student",
                "--synthetic",
                str(out / "synthetic" / "images"),
                "--labels",
                labels,
                "--projector",
                str(out / "projector"),
                "--student",
                recipes.STUDENT,
                "--epochs",
                str(STUDENT_EPOCHS),
                "--val-data",
                "builtin:digits",
                "--out",
                str(out / labels),
            )
            for labels in ("projector", "hard")
        }
    rows = [
        (f"{name} labels", r["student_val_top1"], r["label_storage_bytes"])
        for name, r in students.items()
    ]
    console.table(
        f"hello: digits, IPC {IPC} ({IPC * 10} synthetic images), {recipes.STUDENT} student, "
        f"{STUDENT_EPOCHS} epochs; projector agrees with the teacher on "
        f"{proj['agreement']:.1f}% of val digits",
        ["", "student val top-1 (%)", "label storage (bytes)"],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
