"""Build the shipped scorelidar reference models (references/scorelidar/), with the committed
benchmark recipe (scorelidar_cli.zoo, bench-v3) and the real commands:

    python -m scorelidar_cli.references teacher   # simulate seed 0, train-teacher (600 steps)
    python -m scorelidar_cli.references student   # distill the shipped teacher (160 steps)

Each run simulates the recipe's training scenes into a work folder (a temporary one unless
--work is given; stages already there are reused), runs the recipe's command, and writes
<out>/<name>.safetensors with metadata free of paths (recipe, command, final losses), so
that a rebuild on the same versions gives the same bytes; writing into references/ also
records the file in references/MANIFEST.json. Training runs on one CPU thread (the sparse
convolutions set it), so it is deterministic.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

NAMES = ("teacher", "student")
RECIPE = "bench-v3"


def _recipe_command(stage: str) -> str:
    from scorelidar_cli.zoo import RECIPES

    return "scorelidar " + shlex.join(RECIPES[RECIPE][stage])


def _training_summary(folder: Path) -> dict[str, Any]:
    """The deterministic part of a training run's metrics (no seconds, no paths)."""
    import json

    metrics = json.loads((folder / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if k == "steps" or k.startswith("final_")}


def _stage(work: Path, stage: str, log: Any) -> Path:
    """Run one recipe stage in `work` (zoo layout) unless its artefact is already there."""
    from scorelidar_cli.zoo import RECIPES, run_tool, stage_artefact

    out = work / stage
    if stage_artefact(out, stage).exists():
        return out
    args = RECIPES[RECIPE][stage]
    extra = [] if stage == "data" else ["--data", str(work / "data")]
    if args[0] == "distill":
        extra += ["--teacher", str(work / "teacher")]
    log(f"scorelidar reference: {stage} (scorelidar {shlex.join(args)}) ...")
    run_tool(*args, *extra, "--out", str(out), "--overwrite")
    return out


def build(name: str, out: Path, work: Path, log: Any = print) -> Path:
    """Train reference `name` in `work` and write <out>/<name>.safetensors."""
    import shutil

    from scorelidar_cli.pipeline import load_model, save_model
    from shared.references import find

    if name not in NAMES:
        raise ValueError(f"unknown reference {name!r}; known: {', '.join(NAMES)}")
    work.mkdir(parents=True, exist_ok=True)
    _stage(work, "data", log)
    if name == "student" and not (work / "teacher" / "model.safetensors").exists():
        # distil the teacher that ships (the one the demo compares against)
        teacher = find("scorelidar/teacher") or out / "teacher.safetensors"
        if not teacher.exists():
            teacher = build("teacher", out, work, log)
        (work / "teacher").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(teacher, work / "teacher" / "model.safetensors")
    folder = _stage(work, name, log)
    net, meta = load_model(folder)
    extra = {
        "recipe": RECIPE,
        "command": _recipe_command(name),
        "training": _training_summary(folder),
    }
    if name == "student":
        extra |= {"teacher": "scorelidar/teacher", "sampler_steps": meta.get("sampler_steps")}
    target = out / f"{name}.safetensors"
    out.mkdir(parents=True, exist_ok=True)
    save_model(target, net, meta.get("role", name), extra)
    return target


def note(name: str) -> str:
    """The manifest note: the recipe command behind the file."""
    return f"{RECIPE} recipe: {_recipe_command(name)}"


def main(argv: list[str] | None = None) -> int:
    from shared.references import builder_main

    return builder_main("scorelidar", NAMES, build, note, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
