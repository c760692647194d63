"""Builder of vbp's shipped reference model (references/vbp/, see shared.references).

    python -m vbp_cli.references digits-vit

`digits-vit`: the small ViT the demo prunes (6 blocks, width 96, 3 heads, 16 px images in
patches of 4: 17 tokens; 0.67 M parameters, 2.7 MB), trained on builtin:digits with the
recipe of benchmarks/vbp_ablation.py's `vit-small-16` (30 epochs, AdamW 2e-3, cosine, batch
64, weight decay 0.05, seed 0). It is the reference classifier `shared.reference` trains
for that recipe, so every tool that asks for it (vbp's demo and benchmark, tomerge's digit
checker) gets this file. Training runs on one CPU thread with seeded data order and
augmentation, so a rebuild on the same CPU type is bit-identical.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from shared.references import DIGITS_VIT as DEMO_MODEL
from shared.references import DIGITS_VIT_KWARGS as DEMO_KWARGS
from shared.references import DIGITS_VIT_RECIPE as DEMO_RECIPE

REFERENCES = {"digits-vit": (DEMO_MODEL, DEMO_KWARGS, DEMO_RECIPE)}


def recipe(name: str) -> dict[str, Any]:
    from shared.reference import recipe_of

    timm_name, kwargs, args = REFERENCES[name]
    return recipe_of(timm_name, kwargs, **args)


def build(name: str, folder: Path, *, record: bool = True) -> Path:
    """Train reference `name` into `folder` and (by default) record it in the manifest."""
    from shared import references
    from shared.reference import build_reference, file_name

    full = recipe(name)
    path = Path(folder) / file_name(full)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = build_reference(full, path, threads=1)
    if record:
        command = ["python", "-m", "vbp_cli.references", name]
        note = f"digits ViT, val top-1 {meta['val_top1']:.1f}%, recipe {full}"
        references.record(f"vbp/{name}", path, command, note)
    return path


def main(argv: list[str] | None = None) -> int:
    from shared.references import ROOT

    ap = argparse.ArgumentParser(prog="python -m vbp_cli.references", description=__doc__)
    ap.add_argument("name", choices=sorted(REFERENCES))
    ap.add_argument(
        "--dir", type=Path, default=ROOT / "vbp", help="where to write (default references/vbp)"
    )
    ap.add_argument("--no-record", action="store_true", help="do not touch the manifest")
    args = ap.parse_args(argv)
    path = build(args.name, args.dir, record=not args.no_record)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
