"""Named tests of issue #14's causes that need more than the table's one-line check: outputs
that must all survive (cause 2), metric weights read without running code (cause 1), and
runs stopped by SIGTERM / Ctrl-C then resumed (subprocesses, slow)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.faults import world as W
from tests.helpers import run_cli, tool_path


@pytest.fixture(scope="module")
def tiny_scorelidar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from scorelidar_cli.api import SimulateOptions, simulate_scenes
    from scorelidar_cli.model import build_model
    from scorelidar_cli.pipeline import MODEL_FILE, save_model

    root = tmp_path_factory.mktemp("causes")
    simulate_scenes(SimulateOptions(scenes=2, frames=1, azimuths=64), root / "sim")
    torch.manual_seed(0)
    (root / "model").mkdir()
    save_model(root / "model" / MODEL_FILE, build_model("tiny"), "teacher")
    return root


def test_cause2_complete_keeps_same_named_scans_of_two_folders(tiny_scorelidar: Path) -> None:
    """Every SemanticKITTI sequence starts at 000000.bin: two of them completed together keep
    both outputs, each under its path below the scans' common folder."""
    root = tiny_scorelidar
    a, b = (root / "sim" / "sequences" / s / "velodyne" / "000000.bin" for s in ("00", "01"))
    res = run_cli("scorelidar", "complete", a, b, "--model", root / "model", "-k", "1",
                  "--out", root / "out", "--device", "cpu", "--quiet")  # fmt: skip
    assert res.code == 0, res.stderr
    outs = [root / "out" / s / "velodyne" / "000000.ply" for s in ("00", "01")]
    assert all(p.is_file() for p in outs), sorted(map(str, (root / "out").rglob("*")))
    assert outs[0].read_bytes() != outs[1].read_bytes()  # two scenes, two completions


def test_cause2_scans_that_would_share_an_output_are_refused_before_any_work(
    tmp_path: Path,
) -> None:
    from scorelidar_cli.api import output_names
    from shared.errors import InputError

    assert output_names([Path("x/a/0.bin"), Path("x/b/0.bin")]) == [
        Path("a/0.ply"), Path("b/0.ply")
    ]  # fmt: skip
    with pytest.raises(InputError, match="would overwrite"):
        output_names([Path("x/0.bin"), Path("x/0.npy")])
    with pytest.raises(InputError, match="would overwrite"):
        output_names([Path("x/0.bin"), Path("./x/0.bin")])


def test_cause1_inception_weights_are_read_safely(tmp_path: Path) -> None:
    """The booby-trapped file runs nothing; a plain state_dict gives its tensors."""
    from shared.errors import InputError
    from tomerge_cli.quality import fid_metric, inception_weights

    marker = tmp_path / "RAN"
    trap = W.booby(tmp_path / "weights.pth", marker)
    with pytest.raises(InputError, match="--inception-weights .*run code"):
        fid_metric(trap)
    assert not marker.exists()
    plain = {"Conv2d_1a_3x3.conv.weight": torch.randn(32, 3, 3, 3), "fc.weight": torch.ones(2)}
    torch.save({"state_dict": plain}, tmp_path / "plain.pth")
    with pytest.raises(InputError, match="--inception-weights .*fc.weight of shape \\(2,\\)"):
        inception_weights(tmp_path / "plain.pth")  # the right format, not the network
    plain["fc.weight"] = torch.ones(1008, 2048)
    torch.save({"state_dict": plain}, tmp_path / "plain.pth")
    got = inception_weights(tmp_path / "plain.pth")
    assert torch.equal(got["Conv2d_1a_3x3.conv.weight"], plain["Conv2d_1a_3x3.conv.weight"])


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([tool_path("scorelidar"), *args], cwd=cwd, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip


def _wait_for_state(run: Path, timeout: float = 180) -> None:
    """Until the run has saved its first state (--checkpoint-every 1): it is mid-training."""
    deadline = time.time() + timeout
    while not (run / "resume.pt").exists() and time.time() < deadline:
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 75)])
def test_stopped_run_resumes_and_a_second_run_cannot_touch_it(
    tiny_scorelidar: Path, sig: signal.Signals, code: int
) -> None:
    """Ctrl-C (130) and SIGTERM (75) save the state; a rerun without --resume is refused with
    every byte kept; --resume with the same options finishes the run (exit 0)."""
    root = tiny_scorelidar
    out = f"stop-{sig.name}"
    args = ["train-teacher", "--data", "sim", "--sequences", "all", "--preset", "tiny",
            "--batch-size", "1", "--checkpoint-every", "1", "--steps", "120", "--out", out,
            "--device", "cpu"]  # fmt: skip
    proc = _start(args, root)
    _wait_for_state(root / out)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err and "--resume" in err.strip().splitlines()[-1]
    state = root / out / "resume.pt"
    saved = torch.load(state, weights_only=True)
    assert 1 <= saved["step"] < 120
    before = W.snapshot(root / out)
    again = run_cli("scorelidar", *args, cwd=root)
    assert again.code == 2 and "--out" in again.stderr.strip().splitlines()[-1]
    assert W.snapshot(root / out) == before
    done = run_cli("scorelidar", *args, "--resume", "--json", cwd=root)
    assert done.code == 0, done.stderr[-2000:]
    import json

    assert json.loads(done.stdout)["steps"] == 120
    assert (root / out / "model.safetensors").is_file() and not np.isnan(
        json.loads(done.stdout)["final_loss"]
    )
