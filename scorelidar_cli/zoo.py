"""Reference teacher and students on simulated scenes, trained once through the real
commands and cached under $TOOLKIT_CACHE/scorelidar/<recipe> (for the demo and benchmark)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

RECIPES: dict[str, dict[str, list[str]]] = {
    # a few minutes on 2 CPU cores the first time
    "demo-v1": {
        "data": ["simulate", "--scenes", "3", "--frames", "6", "--seed", "100"],
        "heldout": ["simulate", "--scenes", "1", "--frames", "2", "--seed", "101"],
        "teacher": ["train-teacher", "--preset", "small", "--steps", "250", "--batch-size", "1"],
        "student": ["distill", "--steps", "40"],
    },
    # about 12 minutes at one thread
    "bench-v1": {
        "data": ["simulate", "--scenes", "6", "--frames", "8", "--seed", "0"],
        "heldout": ["simulate", "--scenes", "2", "--frames", "4", "--seed", "1"],
        "teacher": ["train-teacher", "--preset", "small", "--steps", "600", "--batch-size", "1"],
        "student": ["distill", "--steps", "80"],
        "student-no-structural": ["distill", "--steps", "80", "--no-structural"],
    },
    # the same data and teacher as bench-v1 (same commands and seeds), longer distillation
    "bench-v2": {
        "data": ["simulate", "--scenes", "6", "--frames", "8", "--seed", "0"],
        "heldout": ["simulate", "--scenes", "2", "--frames", "4", "--seed", "1"],
        "teacher": ["train-teacher", "--preset", "small", "--steps", "600", "--batch-size", "1"],
        "student": ["distill", "--steps", "250"],
        "student-no-structural": ["distill", "--steps", "250", "--no-structural"],
    },
    # bench-v1's data and teacher; the student trained along its own 8-step sampler with a
    # stronger scene term (chosen on separate validation scenes, seed 2), beside the paper's
    # one-step training and two ablations; scored on 16 frames of scenes never used (seed 3)
    "bench-v3": {
        "data": ["simulate", "--scenes", "6", "--frames", "8", "--seed", "0"],
        "heldout": ["simulate", "--scenes", "4", "--frames", "4", "--seed", "3"],
        "teacher": ["train-teacher", "--preset", "small", "--steps", "600", "--batch-size", "1"],
        "student": ["distill", "--steps", "160", "--sampler-steps", "8", "--scene-weight", "2"],
        "student-paper": ["distill", "--steps", "160"],
        "student-no-structural": [
            "distill",
            "--steps",
            "160",
            "--sampler-steps",
            "8",
            "--no-structural",
        ],
        "student-no-vsd": [
            "distill",
            "--steps",
            "160",
            "--sampler-steps",
            "8",
            "--scene-weight",
            "2",
            "--vsd-weight",
            "0",
        ],
    },
}


def cache_root() -> Path:
    from shared.cache import cache_dir

    return cache_dir("scorelidar")


def run_tool(*args: str) -> dict[str, Any]:
    """One scorelidar command in a child process; its --json result."""
    exe = str(Path(sys.executable).parent / "scorelidar")
    res = subprocess.run([exe, *args, "--json", "--quiet"], stdout=subprocess.PIPE, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"scorelidar {' '.join(args)} failed with exit code {res.returncode}")
    return json.loads(res.stdout)


def reference_models(recipe: str, log=print) -> tuple[Path, dict[str, Any]]:
    """The recipe's directory (data/, heldout/, teacher/, student*/), training what is missing;
    also returns the wall-clock seconds of each stage (from the run that made it)."""
    from shared.io import write_json

    root = cache_root() / recipe
    root.mkdir(parents=True, exist_ok=True)
    record_file = root / "stages.json"
    record = json.loads(record_file.read_text()) if record_file.exists() else {}
    for stage, args in RECIPES[recipe].items():
        out = root / stage
        done = out / ("metrics.json" if stage in ("data", "heldout") else "model.safetensors")
        if done.exists():
            if stage not in record and (out / "metrics.json").exists():
                made = json.loads((out / "metrics.json").read_text())
                record[stage] = {"seconds": made.get("seconds"), "result": made}
            continue
        extra = ["--data", str(root / "data")] if stage not in ("data", "heldout") else []
        if args[0] == "distill":
            extra += ["--teacher", str(root / "teacher")]
        log(f"scorelidar reference ({recipe}): {stage} ...")
        start = time.perf_counter()
        # a folder without the stage's artefact is a killed earlier attempt: start it again
        result = run_tool(*args, *extra, "--out", str(out), "--overwrite")
        record[stage] = {"seconds": round(time.perf_counter() - start, 1), "result": result}
        write_json(record_file, record)
    return root, record
