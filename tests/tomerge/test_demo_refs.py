"""tomerge's shipped reference models and its first-run demo (issue #15)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shared.references import REPO, find, manifest, sha256
from tomerge_cli import demo
from tomerge_cli.references import DEMO_MODEL, RECIPES, load


def _shipped(name: str) -> Path:
    path = find(f"tomerge/{name}")
    if path is None:
        pytest.fail(
            f"references/tomerge/{name} is not shipped intact (see references/MANIFEST.json)"
        )
    return path


def test_every_recipe_is_shipped_with_its_rebuild_command() -> None:
    entries = manifest()
    for name in RECIPES:
        entry = entries[f"tomerge/{name}"]
        assert entry["command"] == f"python -m tomerge_cli.references {name}"
        assert entry["file"] == f"tomerge/{name}.safetensors"
        _shipped(name)
    total = sum(e["bytes"] for k, e in entries.items() if k.startswith("tomerge/"))
    assert total < 6e6


def test_shipped_unet_loads_safely_and_denoises() -> None:
    model = load(_shipped(DEMO_MODEL))
    assert model.size == 32
    x = torch.randn(2, 1, 32, 32)
    with torch.inference_mode():
        out = model(x, torch.tensor(500), torch.tensor([3, 10]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    # trained, not random: the class token changes the prediction
    with torch.inference_mode():
        other = model(x, torch.tensor(500), torch.tensor([7, 10]))
    assert not torch.allclose(out[0], other[0])


def _figures(**over: object) -> dict[str, object]:
    fig = {
        "psnr_importance": 46.0,
        "psnr_tome": 44.0,
        "psnr_tomesd": 43.0,
        "psnr_importance_vs_tome": ("higher", 0.5, 3.5),
        "psnr_importance_vs_tomesd": ("higher", 1.5, 4.5),
        "accuracy_importance": 80.0,
        "accuracy_unmerged": 80.0,
        "samples": 20,
        "speedup_importance": 1.5,
        "speedup_tomesd": 1.4,
        "speed_vs_tomesd": "ahead of",
    }
    return {**fig, **over}


def test_claim_says_where_the_method_does_not_win() -> None:
    good = demo.claim(_figures())
    assert "closer than tome" in good and "closer than tomesd" in good
    assert "ahead of tomesd" in good and "[+0.50, +3.50] dB" in good
    assert "SLOWER" not in good and "FARTHER" not in good
    tie = demo.claim(_figures(psnr_importance_vs_tome=("on par", -0.4, 0.9)))
    assert "on par with tome (44.0 dB" in tie and "closer than tomesd" in tie
    bad = demo.claim(
        _figures(psnr_importance_vs_tome=("lower", -2.0, -1.0), speedup_importance=0.9)
    )
    assert "FARTHER than tome" in bad and bad.count("SLOWER") == 1


def test_paired_verdict_needs_the_interval_to_exclude_zero() -> None:
    base = [40.0 + i for i in range(10)]
    assert demo.paired_verdict([b + 1.0 for b in base], base)[0] == "higher"
    assert demo.paired_verdict([b - 1.0 for b in base], base)[0] == "lower"
    noisy = [b + (1.0 if i % 2 else -1.0) for i, b in enumerate(base)]
    verdict, low, high = demo.paired_verdict(noisy, base)
    assert verdict == "on par" and low < 0 < high


def test_speed_verdict_takes_a_side_only_without_overlap() -> None:
    def t(lo: float, hi: float) -> dict[str, float]:
        return {"min_s": lo, "max_s": hi}

    assert demo.speed_verdict(t(1.0, 1.1), t(1.2, 1.3)) == "ahead of"
    assert demo.speed_verdict(t(1.2, 1.3), t(1.0, 1.1)) == "behind"
    assert demo.speed_verdict(t(1.0, 1.25), t(1.2, 1.3)) == "on par with"


def test_speed_check_really_merges_and_reports_ratios(monkeypatch) -> None:
    """Every merged method's self-attention sees fewer tokens than the unmerged one, and each
    speed-up is the unmerged median over the method's own."""
    side, seen = 8, {}
    patch = demo.patch

    def counting_patch(model, method, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        remove = patch(model, method, *args, **kwargs)
        attn = next(m for n, m in model.named_modules() if n.endswith("attn1"))
        attn.register_forward_pre_hook(
            lambda m, a, k: seen.__setitem__(method, (a[0] if a else k["hidden_states"]).shape[1]),
            with_kwargs=True,
        )
        return remove

    monkeypatch.setattr(demo, "patch", counting_patch)
    speed = demo.speed_run(rounds=2, side=side)
    assert list(speed) == list(demo.METHODS)
    assert seen["unmerged"] == side * side
    assert all(seen[m] < side * side for m in demo.METHODS if m != "unmerged"), seen
    for row in speed.values():
        assert row["min_s"] <= row["median_s"] <= row["max_s"]
        assert row["speedup"] == pytest.approx(speed["unmerged"]["median_s"] / row["median_s"])


def test_patch_changes_the_samples_and_is_removed_cleanly() -> None:
    model = load(_shipped(DEMO_MODEL))
    labels = torch.tensor([4])
    base = demo.sample(model, labels, seed=0, steps=3, guidance=3.0)
    for method in ("tomesd", "tome", "importance"):
        remove = demo.patch(model.unet, method)
        merged = demo.sample(model, labels, seed=0, steps=3, guidance=3.0)
        remove()
        assert not torch.equal(merged, base), method  # merging acted
        assert (merged - base).abs().mean() < 0.1, method  # and stayed close
    assert torch.equal(demo.sample(model, labels, seed=0, steps=3, guidance=3.0), base)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # ~3 min on an idle 2-core machine, 17 on a crowded one
@pytest.mark.rebuild
def test_smallest_reference_rebuilds_bit_identical(tmp_path: Path) -> None:
    """The 16 px UNet trains on one CPU thread with every draw from (seed, step): a rebuild
    on this machine gives the same bytes as the shipped file."""
    name = min(RECIPES, key=lambda n: RECIPES[n].size * RECIPES[n].steps)  # the cheapest
    res = subprocess.run(
        [sys.executable, "-m", "tomerge_cli.references", name, "--out-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    rebuilt = tmp_path / f"{name}.safetensors"
    assert sha256(rebuilt) == manifest()[f"tomerge/{name}"]["sha256"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_demo_prints_one_json_object_and_writes_its_picture(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "tomerge_cli.demo", "--out", str(tmp_path), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(report) == {"figures", "picture", "claim"}
    assert Path(report["picture"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fig = report["figures"]
    for m in ("tomesd", "tome", "importance"):
        assert 20 < fig[f"psnr_{m}"] < 80 and 0.5 < fig[f"ssim_{m}"] <= 1
    assert fig["accuracy_unmerged"] >= 20  # above chance (10%): it draws the requested digits
    assert "warning" not in res.stderr.lower()
