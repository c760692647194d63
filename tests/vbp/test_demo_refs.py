"""Issue #15 for vbp: the digits ViT ships in references/vbp/ (found through the shared
reference cache, so nothing trains on a fresh clone), its builder rebuilds it bit for bit,
and the demo shows accuracy, MACs, parameters and speed with a picture."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO


def run_module(*args: str, timeout: int) -> str:
    """The output of `python -m args...` run from the repository root, which must succeed."""
    res = subprocess.run(
        [sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


def test_shipped_digits_vit_is_found_without_training(monkeypatch: pytest.MonkeyPatch) -> None:
    from shared import reference
    from shared.references import manifest
    from vbp_cli.references import DEMO_KWARGS, DEMO_MODEL, DEMO_RECIPE

    def no_training(*_: object, **__: object) -> None:
        raise AssertionError("the shipped reference should have been used")

    monkeypatch.setattr(reference, "build_reference", no_training)
    path, meta = reference.reference_classifier(DEMO_MODEL, DEMO_KWARGS, **DEMO_RECIPE)
    entry = manifest()["vbp/digits-vit"]
    assert path == REPO / "references" / entry["file"] and path.parent.name == "vbp"
    assert entry["command"] == "python -m vbp_cli.references digits-vit"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    assert path.stat().st_size <= 6e6
    assert meta["val_top1"] > 90 and meta["recipe"]["epochs"] == DEMO_RECIPE["epochs"]
    model = reference.load_reference(path)  # the safe loader (safetensors + JSON header)
    assert sum(p.numel() for p in model.parameters()) < 1e6


def test_damaged_shipped_file_is_not_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file whose hash differs from the manifest falls back to the cache (and training)."""
    from shared import reference, references
    from vbp_cli.references import recipe

    entry = references.manifest()["vbp/digits-vit"]
    fake_root = tmp_path / "references"
    (fake_root / "vbp").mkdir(parents=True)
    (fake_root / entry["file"]).write_bytes(b"not the model")
    (fake_root / "MANIFEST.json").write_text(json.dumps({"vbp/digits-vit": entry}))
    monkeypatch.setattr(references, "ROOT", fake_root)
    monkeypatch.setattr(references, "MANIFEST", fake_root / "MANIFEST.json")
    assert reference.shipped_reference(recipe("digits-vit")) is None


@pytest.mark.slow
@pytest.mark.rebuild
@pytest.mark.timeout(3600)  # 210 CPU-seconds on one thread; much longer on a busy machine
def test_rebuilt_digits_vit_is_bit_identical(tmp_path: Path) -> None:
    """Training is seeded (data order, augmentation, init) and runs on one thread, so the
    builder reproduces the shipped file exactly on the same CPU type."""
    from shared.references import manifest

    run_module(
        "vbp_cli.references", "digits-vit", "--dir", str(tmp_path), "--no-record", timeout=3000
    )
    entry = manifest()["vbp/digits-vit"]
    rebuilt = tmp_path / Path(entry["file"]).name
    assert hashlib.sha256(rebuilt.read_bytes()).hexdigest() == entry["sha256"]


@pytest.mark.slow
@pytest.mark.timeout(1200)  # about a minute on 2 idle cores
def test_demo_shows_pruning_kd_and_speed(tmp_path: Path) -> None:
    out = run_module(
        "vbp_cli.demo", "--out", str(tmp_path), "--json", "--repeats", "1", timeout=900
    )
    lines = out.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    f = report["figures"]
    assert f["macs_pruned"] < 0.8 * f["macs_unpruned"]
    assert f["params_pruned"] < f["params_unpruned"]
    assert f["top1_unpruned"] > 90 and f["top1_kd"] >= f["top1_pruned"] - 1
    assert 0.2 < f["deit_s_macs_reduction"] < 0.45 and f["kd_steps"] > 0
    picture = Path(report["picture"])
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "top-1" in report["claim"] and "DeiT-S" in report["claim"]
