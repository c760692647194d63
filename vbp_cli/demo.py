"""`make demo` for vbp: prune a small ViT trained on real digits by 50% and show the cost.

Trains the model once (cached under $TOOLKIT_CACHE), then runs the real commands:
collect-stats -> prune --ratio 0.5 -> evaluate (before and after) -> a before/after table.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

# A small ViT so that the first run (training included) takes a few minutes on 2 cores:
# 16 px with patch 4 gives 17 tokens, a quarter of the cost of 32 px.
DEMO_MODEL = "vit_tiny_patch16_224"
DEMO_KWARGS = {
    "img_size": 16,
    "patch_size": 4,
    "num_classes": 10,
    "embed_dim": 96,
    "depth": 6,
    "num_heads": 3,
}
DEMO_RECIPE = {"epochs": 30, "lr": 2e-3}


def _vbp(*args: str) -> dict:
    exe = str(Path(sys.executable).parent / "vbp")
    res = subprocess.run([exe, *args, "--json"], stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(res.stdout)


def main() -> int:
    from shared.console import get_console
    from shared.reference import reference_classifier

    console = get_console()
    ckpt, meta = reference_classifier(DEMO_MODEL, DEMO_KWARGS, **DEMO_RECIPE)
    console.info(f"reference ViT: {ckpt} (val top-1 {meta['val_top1']:.1f}%)")
    model = [
        "--model",
        DEMO_MODEL,
        "--model-kwargs",
        json.dumps(DEMO_KWARGS),
        "--checkpoint",
        str(ckpt),
    ]
    with tempfile.TemporaryDirectory(prefix="vbp-demo-") as tmp:
        out = Path(tmp)
        _vbp(
            "collect-stats",
            *model,
            "--data",
            "builtin:digits",
            "--out",
            str(out / "stats"),
            "--quiet",
        )
        pruned = _vbp(
            "prune",
            *model,
            "--stats",
            str(out / "stats"),
            "--ratio",
            "0.5",
            "--out",
            str(out / "pruned"),
            "--quiet",
        )
        before = _vbp("evaluate", *model, "--data", "builtin:digits", "--no-speed", "--quiet")
        after = _vbp(
            "evaluate",
            "--model",
            str(out / "pruned"),
            "--data",
            "builtin:digits",
            "--teacher",
            DEMO_MODEL,
            "--teacher-checkpoint",
            str(ckpt),
            "--no-speed",
            "--quiet",
        )
        # speed: both models timed interleaved in one run (separate runs are not comparable)
        speed = _vbp(
            "benchmark", *model, "--pruned", str(out / "pruned"), "-b", "1", "-b", "32", "--quiet"
        )["rows"]
    ms = {(r["model"], r["batch_size"]): r for r in speed}
    rows = [
        ("val top-1 (%)", before["top1"], after["top1"]),
        ("MACs (M)", before["macs"] / 1e6, after["macs"] / 1e6),
        ("params (M)", before["params"] / 1e6, after["params"] / 1e6),
        ("latency, batch 1 (ms)", ms["dense", 1]["ms_per_batch"], ms["pruned", 1]["ms_per_batch"]),
        (
            "throughput, batch 32 (img/s)",
            ms["dense", 32]["images_per_s"],
            ms["pruned", 32]["images_per_s"],
        ),
    ]
    console.table(
        f"vbp: 50% of MLP neurons removed (ratio {pruned['ratio']}), no fine-tuning; "
        f"agreement with the unpruned model {after['teacher_agreement']:.1f}%",
        ["", "unpruned", "VBP 50%"],
        rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
