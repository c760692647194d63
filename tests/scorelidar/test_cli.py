"""The `scorelidar` commands end to end on tiny simulated scenes and tiny models: in this
process through the tool's typer app (`run_cli`: torch and spconv load once), and through
the installed script where a real process matters (SIGTERM, torchrun)."""

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
from tests.helpers import BIN, KITTI_SCAN, run_cli, tool_path

KITTI = KITTI_SCAN  # shipped in data/ (CC BY-NC-SA 3.0, data/README.md)


def scorelidar(*args: str | Path, cwd: Path) -> tuple[int, str, str]:
    res = run_cli("scorelidar", *args, cwd=cwd)
    return res.code, res.stdout, res.stderr


def ok_json(*args: str | Path, cwd: Path) -> dict:
    code, out, err = scorelidar(*args, "--json", cwd=cwd)
    assert code == 0, err[-2000:]
    return json.loads(out)


# the module's training data: sequence 00 of the simulated scenes
TRAIN_DATA = ("--data", "sim", "--sequences", "00")


def distill(root: Path, out: str, *args: str) -> dict:
    """`scorelidar distill` of the module's teacher into `out`; its --json result."""
    return ok_json("distill", "--teacher", "teacher", *TRAIN_DATA, "--out", out, *args, cwd=root)


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.suffix in (".bin", ".label", ".txt") and p.name != "log.txt"
    }


# -- fast: no training --------------------------------------------------------------------------
def test_simulate_writes_semantickitti_layout_deterministically(tmp_path: Path) -> None:
    args = ["simulate", "--scenes", "1", "--frames", "2", "--azimuths", "64"]
    sim = ok_json(*args, "--out", "a", cwd=tmp_path)
    assert sim["frames"] == 2 and sim["points_per_scan"] > 500 and sim["data"] == "a"
    seq = tmp_path / "a" / "sequences" / "00"
    assert len(list((seq / "velodyne").glob("*.bin"))) == 2
    assert len(list((seq / "labels").glob("*.label"))) == 2
    assert (seq / "poses.txt").read_text().count("\n") == 2
    assert scorelidar(*args, "--quiet", "--out", "b", cwd=tmp_path)[0] == 0
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b") and len(_digest(tmp_path / "a")) == 6
    assert scorelidar(*args, "--seed", "1", "--quiet", "--out", "c", cwd=tmp_path)[0] == 0
    assert _digest(tmp_path / "c") != _digest(tmp_path / "a")
    # a run folder describes its own artefact: writing into it again is refused
    code, _, err = scorelidar(*args, "--out", "a", cwd=tmp_path)
    assert code == 2 and "not empty" in err and _digest(tmp_path / "a") == _digest(tmp_path / "b")


def test_complete_writes_ply_and_time(sim: Path, untrained: Path, tmp_path: Path) -> None:
    scan = sim / "sequences" / "01" / "velodyne" / "000001.bin"
    res = ok_json("complete", scan, "--model", untrained, "-k", "2", "--out", "done", cwd=tmp_path)
    (row,) = res["scans"]
    pred = read_scan(tmp_path / "done" / "000001.ply")
    assert len(pred) == row["output_points"] == 256 * 2  # tiny preset: 256 points x 2
    assert np.isfinite(pred).all() and row["seconds"] > 0 and res["s_per_frame"] > 0
    assert res["steps"] == 2 and row["input_points"] == len(read_scan(scan))


def test_complete_runs_on_the_real_kitti_scan(untrained: Path, tmp_path: Path) -> None:
    res = ok_json(
        "complete", KITTI, "--model", untrained, "--steps", "2", "--solver", "ode",
        "--out", "kitti", cwd=tmp_path,
    )  # fmt: skip
    (row,) = res["scans"]
    assert row["input_points"] == 125773
    pred = read_scan(tmp_path / "kitti" / "kitti_000123.ply")
    assert len(pred) == 512 and np.abs(pred[:, :2]).max() < 60  # metres around the sensor
    assert 0.0 <= row["kept_within_5cm"] <= 1.0


@pytest.mark.parametrize(
    ("points", "message"),
    [
        (np.zeros((0, 3), np.float32), "the scan is empty"),
        (np.array([[1.0, 2.0, np.nan], [3.0, 1.0, 0.0]], np.float32), "NaN"),
        (np.full((10, 3), 500.0, np.float32), "no point within 50 m"),
    ],
)
def test_bad_scans_exit_2_with_one_line(
    untrained: Path, tmp_path: Path, points: np.ndarray, message: str
) -> None:
    np.save(tmp_path / "bad.npy", points)
    code, _, err = scorelidar(
        "complete", "bad.npy", "--model", untrained, "--steps", "1", "--out", "out", cwd=tmp_path
    )
    assert code == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_bad_inputs_exit_2_with_one_line(sim: Path, untrained: Path, tmp_path: Path) -> None:
    scan = sim / "sequences" / "00" / "velodyne" / "000000.bin"
    (tmp_path / "notamodel").mkdir()
    (tmp_path / "notamodel" / "model.safetensors").write_bytes(b"garbage")
    cases = [
        (["complete", "missing.bin", "--model", untrained], "missing.bin: no such file"),
        (["complete", scan, "--model", "notamodel"], "notamodel"),
        (["complete", scan, "--model", untrained, "--refine", untrained],
         "refine.safetensors: no such file"),
        (["train-teacher", "--data", sim, "--model-config", '{"chanels": [4]}'], "chanels"),
        (["train-teacher", "--data", sim, "--model-config", "[4]"], "--model-config"),
        (["train-teacher", "--data", "nowhere"], "sequences/"),
        (["distill", "--teacher", "nowhere", "--data", sim], "nowhere"),
        (["evaluate", "--model", untrained, "--data", "nowhere", "-k", "1"], "sequences/"),
    ]  # fmt: skip
    for args, message in cases:
        code, _, err = scorelidar(*args, "--out", "x", cwd=tmp_path)
        assert code == 2 and message in err, (args, err)
        assert err.strip().count("\n") <= 1 and "Traceback" not in err, err
        assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["train-teacher", "--lr", "0"], "--lr"),
        (["train-teacher", "--cfg-dropout", "1.5"], "--cfg-dropout"),
        (["train-teacher", "--steps", "-1"], "--steps"),
        (["train-teacher", "--batch-size", "0"], "--batch-size"),
        (["train-teacher", "--preset", "huge"], "--preset"),
        (["train-teacher", "--seed", "-3"], "--seed"),
        (["distill", "--teacher", "t", "--fake-lr", "-1e-4"], "--fake-lr"),
        (["distill", "--teacher", "t", "--key-fraction", "0"], "--key-fraction"),
        (["distill", "--teacher", "t", "--real-guidance", "nan"], "--real-guidance"),
        (["distill", "--teacher", "t", "--vsd-weight", "inf"], "--vsd-weight"),
        (["distill", "--teacher", "t", "--sampler-steps", "0"], "--sampler-steps"),
        (["train-refine", "--model", "m", "--up", "0"], "--up"),
        (["complete", "scan.bin", "--model", "m", "--guidance", "-1"], "--guidance"),
        (["complete", "scan.bin", "--model", "m", "--solver", "euler"], "--solver"),
        (["evaluate", "--model", "m", "-k", "0"], "--steps"),
        (["evaluate", "--model", "m", "-k", "1", "--max-frames", "-1"], "--max-frames"),
    ],
)
def test_option_bounds_are_checked_before_any_work(
    tmp_path: Path, args: list[str], flag: str
) -> None:
    data = (
        ["--data", "d"]
        if args[0] in ("train-teacher", "distill", "train-refine", "evaluate")
        else []
    )
    code, _, err = scorelidar(*args, *data, "--out", "x", cwd=tmp_path)
    assert code == 2 and f"{flag}:" in err and err.strip().count("\n") == 0, err
    assert not (tmp_path / "x").exists()


def test_every_command_keeps_its_flags() -> None:
    flags = {
        "simulate": "--scenes --frames --azimuths --seed --out",
        "train-teacher": "--data -d --sequences --preset --model-config --steps --batch-size -b "
        "--lr --cfg-dropout --seed --device --resume --checkpoint-every",
        "distill": "--teacher --data --sequences --steps --batch-size --lr --fake-lr "
        "--vsd-weight --scene-weight --point-weight --key-fraction --structural "
        "--no-structural --real-guidance --sampler-steps --seed --resume --checkpoint-every",
        "train-refine": "--model -m --data --sequences --steps --completion-steps --up --lr "
        "--seed --resume --checkpoint-every",
        "complete": "SCANS --model --steps -k --guidance --solver --refine --seed --out",
        "evaluate": "--model --data --steps -k --sequences --guidance --solver --refine "
        "--max-frames --out --seed",
    }
    for command, names in flags.items():
        code, out, _ = scorelidar(command, "--help", cwd=Path.cwd())
        assert code == 0
        missing = [n for n in names.split() if n not in out.upper() and n not in out]
        assert not missing, (command, missing)
    _, out, _ = scorelidar("train-teacher", "--help", cwd=Path.cwd())
    assert "[default: 200]" in out  # train-teacher's own --checkpoint-every default


# -- slow: trained models -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory, sim: Path) -> Path:
    """train-teacher -> distill on the simulated scenes, tiny everything."""
    root = tmp_path_factory.mktemp("scorelidar")
    (root / "sim").symlink_to(sim)
    teacher = ok_json(
        "train-teacher", "--data", "sim", "--out", "teacher", "--preset", "tiny",
        "--steps", "6", "--batch-size", "1", cwd=root,
    )  # fmt: skip
    assert teacher["steps"] == 6 and teacher["frames"] == 6 and np.isfinite(teacher["final_loss"])
    assert (root / "teacher" / "train.jsonl").exists()
    student = distill(root, "student", "--steps", "3")
    assert student["frames"] == 3 and np.isfinite(student["final_scene_cd"])
    return root


@pytest.mark.slow
def test_evaluate_compares_models_and_steps(root: Path) -> None:
    res = ok_json(
        "evaluate", "--model", "teacher", "--model", "student", "--data", "sim",
        "--sequences", "01", "--steps", "1", "--steps", "2", "--max-frames", "2", cwd=root,
    )  # fmt: skip
    rows = res["rows"]
    assert [(r["role"], r["steps"]) for r in rows] == [
        ("teacher", 1), ("teacher", 2), ("student", 1), ("student", 2),
    ]  # fmt: skip
    for r in rows:
        assert r["frames"] == 2 and r["cd"] > 0 and 0 <= r["jsd"] <= 1
        assert {"precision", "recall", "fscore", "iou_0.5m", "iou_0.2m", "iou_0.1m"} <= set(r)
        assert r["s_per_frame"] > 0


@pytest.mark.slow
def test_no_structural_ablation_is_recorded(root: Path) -> None:
    res = distill(root, "ablation", "--steps", "1", "--no-structural")
    assert "final_scene_cd" not in res and "final_vsd" in res
    meta = json.loads((root / "ablation" / "metrics.json").read_text())
    assert meta["status"] == "ok"
    from scorelidar_cli.pipeline import load_model

    assert load_model(root / "ablation")[1]["role"] == "student-no-structural"


@pytest.mark.slow
def test_distill_records_the_students_own_sampler(root: Path) -> None:
    res = distill(root, "k4", "--steps", "2", "--sampler-steps", "4")
    assert np.isfinite(res["final_loss"])
    assert "sampler_steps: 4" in (root / "k4" / "config.yaml").read_text()
    from scorelidar_cli.pipeline import load_model

    assert load_model(root / "k4")[1]["sampler_steps"] == 4


@pytest.mark.slow
def test_sigterm_saves_state_and_exits_75(root: Path) -> None:
    args = [
        "train-teacher", "--data", "sim", "--out", "pre", "--preset", "tiny",
        "--batch-size", "1", "--checkpoint-every", "0", "--steps", "100000",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [tool_path("scorelidar"), *args], cwd=root, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
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

    saved = torch.load(root / "pre" / "resume.pt", weights_only=True)
    assert saved["step"] >= 1 and saved["command"] == "train-teacher"
    # resuming with other options would mix two runs: refused, the state kept
    changed = [a if a != "100000" else str(saved["step"] + 2) for a in args]
    code, _, err = scorelidar(*changed, "--resume", cwd=root)
    assert code == 2 and "--steps" in err and (root / "pre" / "resume.pt").exists()


@pytest.mark.slow
def test_refinement_net_trains_and_multiplies_completion_points(root: Path) -> None:
    res = ok_json(
        "train-refine", "--model", "student", *TRAIN_DATA,
        "--steps", "2", "--completion-steps", "1", "--out", "refine", cwd=root,
    )  # fmt: skip
    assert res["steps"] == 2 and np.isfinite(res["final_chamfer"])
    scan = root / "sim" / "sequences" / "01" / "velodyne" / "000000.bin"
    res = ok_json(
        "complete", scan, "--model", "student", "--refine", "refine", "--steps", "1",
        "--out", "refined", cwd=root,
    )  # fmt: skip
    assert res["scans"][0]["output_points"] == 512 * 6


@pytest.mark.slow
def test_two_ranks_train_teacher_distill_and_refine_keep_replicas_identical(root: Path) -> None:
    """torchrun with 2 CPU ranks (Gloo): each rank draws its own frames, DDP averages the
    gradients; every command ends with a check that the ranks' models are identical (it
    raises if some gradient skipped the averaging), and rank 0 alone writes the outputs."""
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
