"""The shared command-line plumbing, run as a real subprocess through a toy tool."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, run_cli, tool_path

TOY = [sys.executable, "-m", "tests.shared.toy_app"]


def run_toy(*args: str, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [*TOY, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=120, **kw
    )


@pytest.mark.slow
def test_train_writes_config_metrics_log_and_json(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = run_toy("train", "--out", str(out), "--steps", "10", "--json", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    metrics = json.loads(res.stdout)  # stdout is exactly one JSON object
    assert metrics["status"] == "ok" and metrics["steps"] == 10
    assert json.loads((out / "metrics.json").read_text())["final_loss"] == metrics["final_loss"]
    log = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 10 and all("loss" in row for row in log)
    cfg = (out / "config.yaml").read_text()
    assert "steps: 10" in cfg and "device: cpu" in cfg
    assert "device: cpu" in (out / "log.txt").read_text()
    assert not list(out.glob(".*.tmp")), "atomic writes must leave no temp files"


@pytest.mark.slow
def test_config_file_supplies_options_and_flags_win(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("steps: 3\nlr: 0.01\ncheckpoint-every: 0\n")
    out = tmp_path / "run"
    res = run_toy("train", "--config", str(cfg), "--out", str(out), "--lr", "0.02", "--json")
    assert res.returncode == 0, res.stderr
    resolved = (out / "config.yaml").read_text()
    assert "steps: 3" in resolved and "lr: 0.02" in resolved and "checkpoint_every: 0" in resolved


@pytest.mark.slow
def test_config_file_with_unknown_key_exits_2(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("stepz: 3\n")
    res = run_toy("train", "--config", str(cfg), "--out", str(tmp_path / "run"))
    assert res.returncode == 2
    assert "stepz" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = run_toy("train", "--out", str(out), "--data", str(tmp_path / "missing.npy"))
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert lines[-1] == f"toy: error: --data {tmp_path / 'missing.npy'}: no such file"
    assert "Traceback" not in res.stderr
    assert not out.exists(), "a run stopped by bad input must not leave its output directory"


@pytest.mark.slow
def test_bad_input_in_existing_empty_dir_leaves_it_empty(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    res = run_toy("train", "--out", str(out), "--data", str(tmp_path / "nope"))
    assert res.returncode == 2
    assert list(out.iterdir()) == []


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_second_run_into_a_used_folder_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run_toy("train", "--out", str(out), "--steps", "3").returncode == 0
    before = _snapshot(out)
    res = run_toy("train", "--out", str(out), "--steps", "4", "--lr", "0.01")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith(f"toy: error: --out {out}: not empty")
    assert _snapshot(out) == before, "a refused run must not touch the earlier run's files"


@pytest.mark.slow
def test_overwrite_replaces_the_earlier_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert run_toy("train", "--out", str(out), "--steps", "3").returncode == 0
    (out / "stale.txt").write_text("from before")
    res = run_toy("train", "--out", str(out), "--steps", "4", "--overwrite", "--json")
    assert res.returncode == 0, res.stderr
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "metrics.json").read_text())["steps"] == 4


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--lr", "nan"], "--lr: must be a finite number"),
        (["--lr", "-1"], "--lr: must be > 0"),
        (["--lr", "0"], "--lr: must be > 0"),
        (["--steps", "-3"], "--steps: must be >= 0"),
        (["--bogus"], "No such option: --bogus"),
        (["--steps", "many"], "Invalid value for '--steps'"),
    ],
)
@pytest.mark.slow
def test_bad_values_exit_2_with_one_line_before_any_work(
    tmp_path: Path, args: list[str], needle: str
) -> None:
    out = tmp_path / "run"
    res = run_toy("train", "--out", str(out), *args)
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert not out.exists()


@pytest.mark.slow
def test_unwritable_out_exits_2(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        target = Path("/proc/toolkit-test/run")  # not creatable even for root
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        target = ro / "run"
    res = run_toy("train", "--out", str(target))
    assert res.returncode == 2 and "cannot create" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_nan_loss_exits_2_with_clear_line(tmp_path: Path) -> None:
    res = run_toy("train", "--out", str(tmp_path / "run"), "--lr", "1e30", "--steps", "50")
    assert res.returncode == 2
    assert "loss is" in res.stderr and "at step" in res.stderr
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_bad_device_flag_exits_2(tmp_path: Path) -> None:
    res = run_toy("train", "--out", str(tmp_path / "run"), "--device", "tpu")
    assert res.returncode == 2 and "--device 'tpu'" in res.stderr


@pytest.mark.slow
def test_sigterm_saves_state_and_resume_reaches_same_result(tmp_path: Path) -> None:
    ref = run_toy("train", "--out", str(tmp_path / "ref"), "--steps", "30", "--json")
    assert ref.returncode == 0, ref.stderr
    expected = json.loads(ref.stdout)["weights"]
    assert ref.returncode == 0

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            *TOY,
            "train",
            "--out",
            str(out),
            "--steps",
            "30",
            "--sleep",
            "0.1",
            "--json",
            "--checkpoint-every",
            "7",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 60
    while not (out / "resume.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 75, err
    assert "SIGTERM received" in err and "--resume" in err
    status = json.loads((out / "metrics.json").read_text())
    assert status["status"] == "preempted"

    # resuming with other options, or as another command, is refused and changes nothing
    before = _snapshot(out)
    res = run_toy("train", "--out", str(out), "--steps", "31", "--sleep", "0.1", "--resume")
    assert res.returncode == 2 and "other options (--steps)" in res.stderr, res.stderr
    assert _snapshot(out) == before

    res = run_toy(
        "train", "--out", str(out), "--steps", "30", "--sleep", "0.1", "--json", "--resume",
        "--checkpoint-every", "7",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    resumed = json.loads(res.stdout)
    assert resumed["weights"] == expected
    # the summary covers the same steps as the uninterrupted run's
    assert resumed["final_loss"] == json.loads(ref.stdout)["final_loss"]


@pytest.mark.slow
def test_ctrl_c_saves_state_exits_130_and_resume_finishes(tmp_path: Path) -> None:
    ref = run_toy("train", "--out", str(tmp_path / "ref"), "--steps", "25", "--json")
    expected = json.loads(ref.stdout)["weights"]
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["train", "--out", str(out), "--steps", "25", "--sleep", "0.1"]
    proc = subprocess.Popen(
        [*TOY, *args], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.time() + 60
    while not (out / "train.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted: state saved" in err and "Traceback" not in err
    res = run_toy(*args, "--resume", "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["weights"] == expected


def test_registry_lists_every_tool_with_its_app_demo_and_benchmarks() -> None:
    from shared.registry import load_app, tools

    found = tools()
    assert set(found) == {"vbp", "tomerge", "kdic", "scorelidar", "hello"}
    for name, spec in found.items():
        assert load_app(name).info.name == name
        assert spec.demo and spec.benchmarks
        for module in spec.benchmarks:
            assert (REPO / (module.replace(".", "/") + ".py")).is_file(), module


def test_doctor_refuses_a_device_name_that_does_not_exist() -> None:
    res = run_cli("vbp", "doctor", "--device", "bogus")
    assert res.code == 2 and "--device 'bogus'" in res.stderr


@pytest.mark.slow
def test_version_and_help_of_every_tool() -> None:
    from shared.registry import tools

    for tool in tools():
        res = subprocess.run([tool_path(tool), "--help"], capture_output=True, text=True)
        assert res.returncode == 0 and "doctor" in res.stdout, tool
        ver = subprocess.run([tool_path(tool), "--version"], capture_output=True, text=True)
        assert ver.stdout.strip() == f"{tool} 0.1.0"


@pytest.mark.parametrize("tool", ["vbp", "tomerge", "kdic", "scorelidar", "hello"])
@pytest.mark.slow
@pytest.mark.slow
def test_doctor_json(tool: str) -> None:
    res = subprocess.run([tool_path(tool), "doctor", "--json"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["tool"] == tool
    assert report["device"].startswith(("cpu", "cuda", "mps"))
    assert report["distributed"]["world_size"] == 1
    assert set(report) >= {"torch", "cuda_available", "nccl_available", "extras"}
    assert report["extras_complete"], report["extras"]


@pytest.mark.slow
def test_doctor_reports_slurm_environment() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env |= {
        "SLURM_PROCID": "0",
        "SLURM_NTASKS": "4",
        "SLURM_LOCALID": "0",
        "SLURM_JOB_NODELIST": "gpu[07-08]",
        "SLURM_JOB_ID": "123",
    }
    res = subprocess.run(
        [tool_path("vbp"), "doctor", "--json"], capture_output=True, text=True, env=env
    )
    dist = json.loads(res.stdout)["distributed"]
    assert dist["launcher"] == "slurm" and dist["world_size"] == 4
    assert dist["master"].startswith("gpu07:")


@pytest.mark.slow
def test_help_is_fast() -> None:
    """`vbp --help` must not import torch or timm (users type it all the time)."""
    code = "import sys; import vbp_cli.cli; print('torch' in sys.modules, 'timm' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.strip() == "False False"


def test_library_warnings_are_one_line_and_quiet_hides_them(capsys: pytest.CaptureFixture) -> None:
    """A library warning is one line (none with --quiet); a deprecation notice about a
    library's internals goes to the log only, so nothing stands before the error line."""
    import warnings

    from shared.cli import create_app, run_app
    from shared.errors import InputError
    from shared.options import tool_command

    app = create_app("warny", "test app")

    @tool_command(app, "go", out="none", device=False)
    def go(inv) -> None:  # noqa: ANN001
        warnings.warn("a library's\nmulti-line\n  advice block", UserWarning, stacklevel=1)
        warnings.warn("torch.jit.script is deprecated", FutureWarning, stacklevel=1)
        raise InputError("--x: bad")

    for quiet in (False, True):
        with pytest.raises(SystemExit) as exit_:
            run_app(app, ["go", *(["--quiet"] if quiet else [])])
        assert exit_.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        expected = ["warny: error: --x: bad"]
        if not quiet:
            expected.insert(0, "warning: UserWarning: a library's multi-line advice block")
        assert err == expected


def test_every_bounded_option_shows_its_bounds_in_help() -> None:
    """The bounds check_value enforces are printed in --help, for every tool and command."""
    import dataclasses

    import typer

    from shared.options import flag_of, option_spec
    from shared.registry import load_app, tools
    from tests.faults.cases import _config_of

    checked = 0
    for tool in tools():
        app = typer.main.get_command(load_app(tool))
        for cmd in app.commands.values():
            config = _config_of(cmd.callback)
            if config is None:
                continue
            helps = {p.name: p.help or "" for p in cmd.params}
            for f in dataclasses.fields(config):
                spec = option_spec(f)
                if spec is None or (spec.min is None and spec.max is None):
                    continue
                text = helps[f.name]
                if spec.min is not None:
                    assert f"{'>' if spec.min_open else '>='} {spec.min:g}" in text, (
                        tool, flag_of(f), text)  # fmt: skip
                if spec.max is not None:
                    assert f"{'<' if spec.max_open else '<='} {spec.max:g}" in text, (
                        tool, flag_of(f), text)  # fmt: skip
                checked += 1
    assert checked > 100
