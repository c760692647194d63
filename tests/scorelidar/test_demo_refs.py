"""The shipped scorelidar reference models (references/scorelidar/), the zoo's use of them,
and the first-run demo (issue #15)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from shared.references import REPO, find, manifest, sha256

NAMES = ("scorelidar/teacher", "scorelidar/student")


@pytest.mark.parametrize("name", NAMES)
def test_shipped_reference_is_recorded_intact_and_small(name: str) -> None:
    entry = manifest()[name]
    assert entry["command"].startswith("python -m scorelidar_cli.references ")
    path = find(name)
    assert path is not None, f"{name}: missing or its hash differs from the manifest"
    assert path.suffix == ".safetensors" and path.stat().st_size < 3_000_000


def test_shipped_models_are_the_bench_recipe_teacher_and_student() -> None:
    from scorelidar_cli.pipeline import load_model
    from scorelidar_cli.zoo import RECIPES

    teacher, t_meta = load_model(find("scorelidar/teacher"))
    student, s_meta = load_model(find("scorelidar/student"))
    assert t_meta["role"] == "teacher" and s_meta["role"] == "student"
    assert t_meta["recipe"] == s_meta["recipe"] == "bench-v3"
    # the student trained along its own 8-step sampler (the recipe the benchmark measured)
    assert "--sampler-steps 8" in s_meta["command"] and s_meta["sampler_steps"] == 8
    assert s_meta["command"] == "scorelidar " + " ".join(RECIPES["bench-v3"]["student"])
    assert t_meta["training"]["steps"] == 600 and s_meta["training"]["steps"] == 160
    assert teacher.config == student.config
    # distillation changed the weights (a copied teacher would pass everything else)
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    assert any(not (t_sd[k] == s_sd[k]).all() for k in t_sd)
    # no machine-specific paths in what ships
    assert "/" not in json.dumps({k: v for k, v in s_meta.items() if k != "command"}).replace(
        "scorelidar/teacher", ""
    )


def test_zoo_uses_the_shipped_files_without_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scorelidar_cli import zoo

    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path))

    def no_training(*args: str) -> dict:
        raise AssertionError(f"trained or simulated: {args}")

    monkeypatch.setattr(zoo, "run_tool", no_training)
    root, record = zoo.reference_models("bench-v3", log=lambda _: None,
                                        stages=["teacher", "student"])  # fmt: skip
    for stage in ("teacher", "student"):
        assert sha256(root / stage / "model.safetensors") == sha256(find(f"scorelidar/{stage}"))
        assert record[stage]["result"]["shipped"]
    assert not (root / "data").exists()  # nothing simulated for shipped stages
    assert zoo.shipped_models(log=lambda _: None) == {
        "teacher": find("scorelidar/teacher"),
        "student": find("scorelidar/student"),
    }


def test_claim_says_where_the_student_loses() -> None:
    from scorelidar_cli.demo import _claim

    figures = {
        "sim_frames": 2, "cd_ratio_student8_vs_teacher50": 1.2, "student8_speedup": 6.0,
        "student8_s_per_frame": 0.7, "teacher50_s_per_frame": 4.2, "input_scan_cd": 0.1,
        "student8_kitti_kept_5cm": 0.01, "teacher50_kitti_kept_5cm": 0.02,
    }  # fmt: skip
    t50 = {"cd": 0.40, "jsd": 0.52, "iou_0.5m": 0.22}
    s8 = {"cd": 0.48, "jsd": 0.52, "iou_0.5m": 0.20}
    t8 = {"cd": 0.43, "jsd": 0.52, "iou_0.5m": 0.20}
    claim = _claim(figures, t50, s8, t8)
    assert "0.480 m, worse than the teacher at 50 steps" in claim
    assert "worse than the teacher run for 8 steps" in claim
    assert "6.0x faster" in claim and "neither completion reaches" in claim
    better = _claim(figures | {"input_scan_cd": 0.5}, t50, {**s8, "cd": 0.37}, t8)
    assert "better than the teacher at 50 steps" in better
    assert "better than the teacher run for 8 steps" in better and "neither" not in better


@pytest.mark.slow
def test_demo_prints_one_json_object_and_writes_its_picture(tmp_path: Path) -> None:
    res = subprocess.run(
        [sys.executable, "-m", "scorelidar_cli.demo", "--out", str(tmp_path), "--json",
         "--repeats", "1", "--frames", "1"],
        capture_output=True, text=True, cwd=REPO, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    picture = Path(report["picture"])
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(picture) in res.stderr
    f = report["figures"]
    keys = ("teacher50_cd", "student8_cd", "teacher8_cd", "student8_jsd", "student8_iou_0.5m",
            "student8_speedup", "teacher50_s_per_frame", "student8_kitti_kept_5cm")  # fmt: skip
    assert set(keys) <= set(f)
    assert f["cd_ratio_student8_vs_teacher50"] == pytest.approx(
        f["student8_cd"] / f["teacher50_cd"], abs=2e-3
    )
    assert f["student8_speedup"] > 2  # 8 solver steps against 50 of the same network size
    assert f"{f['student8_cd']:.3f} m" in report["claim"]


@pytest.mark.slow
@pytest.mark.rebuild
def test_rebuilding_the_teacher_gives_the_shipped_file(tmp_path: Path) -> None:
    """The smallest-to-build artefact (teacher and student are the same size; the student
    needs the teacher): training is deterministic on CPU (one thread, seeded per step), and
    the file holds no paths or times, so the rebuild is bit-identical."""
    res = subprocess.run(
        [sys.executable, "-m", "scorelidar_cli.references", "teacher", "--out", str(tmp_path)],
        cwd=REPO, check=False, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-2000:]
    assert sha256(tmp_path / "teacher.safetensors") == manifest()["scorelidar/teacher"]["sha256"]
