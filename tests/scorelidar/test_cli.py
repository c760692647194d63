"""The `scorelidar` commands end to end on tiny simulated scenes and a tiny model: in this
process through the same entry point as the console script (torch and spconv load once),
and through the installed script where a separate process matters (SIGTERM, exit codes)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from scorelidar_cli.io import read_scan
from tests.helpers import SHARED_DATA, tool_path

KITTI = SHARED_DATA / "kitti_000123.ply"


def scorelidar(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run the CLI in this process (as `main()` would) and capture its exit code and output."""
    from contextlib import chdir, redirect_stderr, redirect_stdout
    from io import StringIO

    from scorelidar_cli.cli import app
    from shared.cli import run_app

    out, err = StringIO(), StringIO()
    code = 0
    with chdir(cwd), redirect_stdout(out), redirect_stderr(err):
        try:
            run_app(app, list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def scorelidar_process(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [tool_path("scorelidar"), *args], capture_output=True, text=True, cwd=cwd, timeout=300,
        env=env,
    )  # fmt: skip


def ok_json(res: subprocess.CompletedProcess) -> dict:
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """simulate -> train-teacher -> distill, tiny everything."""
    root = tmp_path_factory.mktemp("scorelidar")
    sim = ok_json(
        scorelidar(
            "simulate", "--scenes", "2", "--frames", "3", "--azimuths", "128",
            "--out", "sim", "--json", cwd=root,
        )
    )  # fmt: skip
    assert sim["frames"] == 6 and sim["points_per_scan"] > 3000
    teacher = ok_json(
        scorelidar(
            "train-teacher", "--data", "sim", "--out", "teacher", "--preset", "tiny",
            "--steps", "6", "--batch-size", "1", "--json", cwd=root,
        )
    )  # fmt: skip
    assert teacher["steps"] == 6 and teacher["frames"] == 6
    student = ok_json(
        scorelidar(
            "distill", "--teacher", "teacher", "--data", "sim", "--sequences", "00",
            "--out", "student", "--steps", "3", "--json", cwd=root,
        )
    )  # fmt: skip
    assert student["frames"] == 3 and np.isfinite(student["final_scene_cd"])
    return root


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in (".bin", ".label", ".txt") and p.name != "log.txt"
    }


def test_simulate_writes_semantickitti_layout_deterministically(root: Path) -> None:
    seq = root / "sim" / "sequences" / "00"
    assert len(list((seq / "velodyne").glob("*.bin"))) == 3
    assert len(list((seq / "labels").glob("*.label"))) == 3
    assert (seq / "poses.txt").read_text().count("\n") == 3
    args = ["simulate", "--scenes", "1", "--frames", "2", "--azimuths", "64", "--quiet"]
    assert scorelidar(*args, "--out", "a", cwd=root).returncode == 0
    assert scorelidar(*args, "--out", "b", cwd=root).returncode == 0
    assert _digest(root / "a") == _digest(root / "b") and len(_digest(root / "a")) == 6
    assert scorelidar(*args, "--seed", "1", "--out", "c", cwd=root).returncode == 0
    assert _digest(root / "c") != _digest(root / "a")


def test_complete_writes_ply_and_time(root: Path) -> None:
    scan = root / "sim" / "sequences" / "01" / "velodyne" / "000001.bin"
    res = ok_json(
        scorelidar(
            "complete", str(scan), "--model", "student", "--steps", "2", "--out", "done",
            "--json", cwd=root,
        )
    )  # fmt: skip
    (row,) = res["scans"]
    pred = read_scan(root / "done" / "000001.ply")
    assert len(pred) == row["output_points"] == 256 * 2  # tiny preset: 256 points x 2
    assert np.isfinite(pred).all() and row["seconds"] > 0 and res["s_per_frame"] > 0


@pytest.mark.skipif(not KITTI.exists(), reason="../shared/data/kitti_000123.ply is absent")
def test_complete_runs_on_the_real_kitti_scan(root: Path) -> None:
    res = ok_json(
        scorelidar(
            "complete", str(KITTI), "--model", "teacher", "--steps", "2", "--out", "kitti",
            "--json", cwd=root,
        )
    )  # fmt: skip
    (row,) = res["scans"]
    assert row["input_points"] == 125773
    pred = read_scan(root / "kitti" / "kitti_000123.ply")
    assert len(pred) == 512 and np.abs(pred[:, :2]).max() < 60  # metres around the sensor
    assert 0.0 <= row["kept_within_5cm"] <= 1.0


def test_evaluate_compares_models_and_steps(root: Path) -> None:
    res = ok_json(
        scorelidar(
            "evaluate", "--model", "teacher", "--model", "student", "--data", "sim",
            "--sequences", "01", "--steps", "1", "--steps", "2", "--max-frames", "2",
            "--json", cwd=root,
        )
    )  # fmt: skip
    rows = res["rows"]
    assert [(r["role"], r["steps"]) for r in rows] == [
        ("teacher", 1), ("teacher", 2), ("student", 1), ("student", 2),
    ]  # fmt: skip
    for r in rows:
        assert r["frames"] == 2 and r["cd"] > 0 and 0 <= r["jsd"] <= 1
        assert {"precision", "recall", "fscore", "iou_0.5m", "iou_0.2m", "iou_0.1m"} <= set(r)
        assert r["s_per_frame"] > 0


def test_no_structural_ablation_is_recorded(root: Path) -> None:
    res = ok_json(
        scorelidar(
            "distill", "--teacher", "teacher", "--data", "sim", "--sequences", "00",
            "--out", "ablation", "--steps", "1", "--no-structural", "--json", cwd=root,
        )
    )  # fmt: skip
    assert "final_scene_cd" not in res and "final_vsd" in res
    meta = json.loads((root / "ablation" / "metrics.json").read_text())
    assert meta["status"] == "ok"


def test_distill_along_the_students_own_sampler(root: Path) -> None:
    res = ok_json(
        scorelidar(
            "distill", "--teacher", "teacher", "--data", "sim", "--sequences", "00",
            "--out", "k4", "--steps", "3", "--sampler-steps", "4", "--json", cwd=root,
        )
    )  # fmt: skip
    assert np.isfinite(res["final_loss"])
    assert "sampler_steps: 4" in (root / "k4" / "config.yaml").read_text()


@pytest.mark.parametrize(
    ("points", "message"),
    [
        (np.zeros((0, 3), np.float32), "the scan is empty"),
        (np.array([[1.0, 2.0, np.nan], [3.0, 1.0, 0.0]], np.float32), "NaN"),
        (np.full((10, 3), 500.0, np.float32), "no point within 50 m"),
    ],
)
def test_bad_scans_exit_2_with_one_line(root: Path, points: np.ndarray, message: str) -> None:
    np.save(root / "bad.npy", points)
    res = scorelidar(
        "complete", "bad.npy", "--model", "teacher", "--steps", "1", "--out", "bad_out", cwd=root
    )
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr
    assert not (root / "bad_out").exists()  # nothing half-written


def test_bad_inputs_exit_2(root: Path) -> None:
    res = scorelidar_process(
        "complete", "missing.bin", "--model", "teacher", "--out", "x", cwd=root
    )
    assert res.returncode == 2 and "missing.bin: no such file" in res.stderr
    assert res.stderr.count("\n") <= 2 and "Traceback" not in res.stderr
    (root / "notamodel").mkdir(exist_ok=True)
    (root / "notamodel" / "model.safetensors").write_bytes(b"garbage")
    scan = str(root / "sim" / "sequences" / "00" / "velodyne" / "000000.bin")
    res = scorelidar("complete", scan, "--model", "notamodel", "--out", "x", cwd=root)
    assert res.returncode == 2 and "notamodel" in res.stderr and "Traceback" not in res.stderr
    res = scorelidar(
        "train-teacher", "--data", "sim", "--out", "x", "--model-config", '{"chanels": [4]}',
        cwd=root,
    )  # fmt: skip
    assert res.returncode == 2 and "chanels" in res.stderr
    res = scorelidar("train-teacher", "--data", "nowhere", "--out", "x", cwd=root)
    assert res.returncode == 2 and "sequences/" in res.stderr
    assert not (root / "x").exists()


def test_sigterm_saves_state_and_resume_finishes(root: Path) -> None:
    args = [
        "train-teacher", "--data", "sim", "--out", "pre", "--preset", "tiny",
        "--batch-size", "1", "--checkpoint-every", "0",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [tool_path("scorelidar"), *args, "--steps", "100000"],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    log = root / "pre" / "log.txt"
    deadline = time.time() + 120
    while not (log.exists() and "device" in log.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(2.0)  # a few steps
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err[-2000:]
    assert (root / "pre" / "resume.pt").exists() and "--resume" in err
    import torch

    saved = torch.load(root / "pre" / "resume.pt", weights_only=True)["step"]
    # the resumed run continues in this process (same entry point, no second torch start-up)
    res = ok_json(scorelidar(*args, "--steps", str(saved + 2), "--resume", "--json", cwd=root))
    assert res["steps"] == saved + 2 and (root / "pre" / "model.safetensors").exists()


def test_refinement_net_trains_and_multiplies_completion_points(root: Path) -> None:
    res = ok_json(
        scorelidar(
            "train-refine", "--model", "student", "--data", "sim", "--sequences", "00",
            "--steps", "2", "--completion-steps", "1", "--out", "refine", "--json", cwd=root,
        )
    )  # fmt: skip
    assert res["steps"] == 2 and np.isfinite(res["final_chamfer"])
    scan = root / "sim" / "sequences" / "01" / "velodyne" / "000000.bin"
    res = ok_json(
        scorelidar(
            "complete", str(scan), "--model", "student", "--refine", "refine", "--steps", "1",
            "--out", "refined", "--json", cwd=root,
        )
    )  # fmt: skip
    assert res["scans"][0]["output_points"] == 512 * 6
    res = scorelidar(
        "complete", str(scan), "--model", "student", "--refine", "student", "--out", "x", cwd=root
    )
    assert res.returncode == 2 and "refine.safetensors: no such file" in res.stderr


def test_two_ranks_train_teacher_distill_and_refine_keep_replicas_identical(root: Path) -> None:
    """torchrun with 2 CPU ranks (Gloo): each rank draws its own frames, DDP averages the
    gradients; every command ends with a check that the ranks' models are identical (it
    raises if some gradient skipped the averaging), and rank 0 alone writes the outputs."""
    from tests.helpers import BIN

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    port = 29400 + os.getpid() % 500
    commands = [
        ["train-teacher", "--data", "sim", "--out", "ddp-teacher", "--preset", "tiny",
         "--steps", "3", "--batch-size", "1"],
        ["distill", "--teacher", "ddp-teacher", "--data", "sim", "--out", "ddp-student",
         "--steps", "2"],
        ["train-refine", "--model", "ddp-student", "--data", "sim", "--steps", "2",
         "--completion-steps", "1", "--out", "ddp-refine"],
    ]  # fmt: skip
    for i, args in enumerate(commands):
        res = subprocess.run(
            [str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-port", str(port + i),
             tool_path("scorelidar"), *args, "--json"],
            capture_output=True, text=True, cwd=root, env=env, timeout=300,
        )  # fmt: skip
        assert res.returncode == 0, (args[0], res.stderr[-3000:])
        metrics = json.loads((root / args[args.index("--out") + 1] / "metrics.json").read_text())
        assert metrics["world_size"] == 2, metrics
        assert all(np.isfinite(v) for k, v in metrics.items() if k.startswith("final_"))
