"""The sbatch scripts in examples/slurm, run for real by bash under a faked Slurm: a fake
`srun` first on PATH starts the command once per task with the variables srun sets, a fake
`scontrol` records what it was asked. The slow tests run each script's own srun line on the
real tool with a tiny job (sizes come from the scripts' environment variables)."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from shared.registry import tools
from tests.helpers import BIN, REPO, run_cli

SLURM_DIR = REPO / "examples" / "slurm"
TOOLS = tuple(tools())
JOB_ID = "4242"
# The tiny jobs run on the CPU; tests/gpu sets this to "0" to run them on the first GPU.
JOB_CUDA_VISIBLE_DEVICES = ""

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")

FAKE_SRUN = r"""#!/bin/bash
# Fake srun: log the command line, then run it once per task (FAKE_SRUN_NTASKS, default 1)
# with the variables srun gives each task. FAKE_SRUN_EXIT=N: exit N without running anything.
printf 'srun %s\n' "$*" >> "$FAKE_SLURM_LOG"
if [[ -n "${FAKE_SRUN_EXIT:-}" ]]; then exit "$FAKE_SRUN_EXIT"; fi
while [[ $# -gt 0 && $1 == -* ]]; do shift; done  # srun's own --opt=value options
n=${FAKE_SRUN_NTASKS:-1}
pids=()
for ((i = 0; i < n; i++)); do
    SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_NTASKS=$n SLURM_STEP_NUM_TASKS=$n \
        SLURM_STEP_NODELIST=localhost "$@" &
    pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do
    wait "$pid" || { s=$?; [[ $rc -eq 0 ]] && rc=$s; }
done
exit "$rc"
"""

FAKE_SCONTROL = r"""#!/bin/bash
printf 'scontrol %s\n' "$*" >> "$FAKE_SLURM_LOG"
"""


def script(tool: str) -> Path:
    return SLURM_DIR / f"{tool}.sbatch"


def srun_command(tool: str) -> list[str]:
    """The words of the script's `srun ...` line (continuations joined, `|| status=$?` cut)."""
    text = script(tool).read_text().replace("\\\n", " ")
    lines = [line for line in text.splitlines() if line.lstrip().startswith("srun ")]
    assert len(lines) == 1, lines
    return shlex.split(lines[0].split("||")[0])


def sbatch(
    tool: str, cwd: Path, ntasks: int = 1, **overrides: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """`bash <tool>.sbatch` as Slurm would start the batch shell, submitted from `cwd`.
    Returns the process and the fake Slurm log (srun/scontrol calls)."""
    fake = cwd / "fake-slurm"
    fake.mkdir(exist_ok=True)
    for name, body in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (fake / name).write_text(body)
        (fake / name).chmod(0o755)
    log = fake / "calls.log"
    log.unlink(missing_ok=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLURM_", "TORCHELASTIC_"))
        and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(
        PATH=f"{fake}{os.pathsep}{BIN}{os.pathsep}{env.get('PATH', '')}",
        FAKE_SLURM_LOG=str(log),
        FAKE_SRUN_NTASKS=str(ntasks),
        SLURM_JOB_ID=JOB_ID,
        SLURM_JOB_NODELIST="localhost",
        SLURM_SUBMIT_DIR=str(cwd),
        SLURM_NTASKS=str(ntasks),
        SLURM_PROCID="0",  # the batch shell has it too
        SLURM_CPUS_PER_TASK="1",
        CUDA_VISIBLE_DEVICES=JOB_CUDA_VISIBLE_DEVICES,
    )
    env.update(overrides)
    proc = subprocess.run(
        ["bash", str(script(tool))], cwd=cwd, env=env, capture_output=True, text=True
    )
    calls = log.read_text().splitlines() if log.exists() else []
    return proc, calls


def has_option(help_text: str, flag: str) -> bool:
    """`flag` starts an option line of click's --help (`  -x, --flag`, `  --a / --flag`)."""
    pattern = rf"^ +(?:-\w, )?(?:--[\w-]+ / )?{re.escape(flag)}(?![\w-])"
    return re.search(pattern, help_text, re.MULTILINE) is not None


def metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


# --- the scripts themselves (fast) ---------------------------------------------------------


def test_every_tool_has_a_script() -> None:
    assert {p.stem for p in SLURM_DIR.glob("*.sbatch")} >= set(TOOLS)
    assert (SLURM_DIR / "README.md").is_file()


@pytest.mark.parametrize("tool", TOOLS)
def test_script_header(tool: str) -> None:
    text = script(tool).read_text()
    proc = subprocess.run(["bash", "-n", str(script(tool))], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # sbatch reads #SBATCH lines only up to the first command.
    header = text.split("set -euo pipefail")[0]
    assert all(line == "" or line.startswith("#") for line in header.splitlines())
    sbatch_opts = dict(
        re.match(r"#SBATCH --([\w-]+)(?:=(.*))?$", line).groups()  # type: ignore[union-attr]
        for line in header.splitlines()
        if line.startswith("#SBATCH ")
    )
    for key, value in {
        "nodes": "1",
        "signal": "USR1@120",
        "requeue": None,
        "open-mode": "append",  # a requeued job must not truncate its log
    }.items():
        assert key in sbatch_opts and sbatch_opts[key] == value, key
    # All of the node's GPUs visible to every task (NCCL peer-to-peer), one per task.
    assert "gpus-per-task" not in sbatch_opts
    assert sbatch_opts["gres"] == f"gpu:{sbatch_opts['ntasks-per-node']}"
    assert f'OUT="runs/{tool}-$SLURM_JOB_ID"' in text
    assert "scontrol requeue" in text


@pytest.mark.parametrize("tool", TOOLS)
def test_srun_line_uses_only_real_flags_and_no_hub_weights(tool: str) -> None:
    words = srun_command(tool)
    assert words[1] == tool
    res = run_cli(tool, words[2], "--help")
    assert res.code == 0, res.stderr
    flags = [w.split("=")[0] for w in words[3:] if w.startswith("-")]
    for flag in flags:
        assert has_option(res.stdout, flag), flag
    # Compute nodes have no network: weights come from local files.
    assert not any("pretrained" in f for f in flags)
    # Resumable training resumes; inference replaces the partial folder a requeue finds.
    assert ("--resume" in flags) != ("--overwrite" in flags)
    assert ("--resume" in flags) == has_option(res.stdout, "--resume")


@pytest.mark.parametrize("tool", TOOLS)
def test_exit_75_requeues_the_job_and_other_codes_end_it(tool: str, tmp_path: Path) -> None:
    proc, calls = sbatch(tool, tmp_path, FAKE_SRUN_EXIT="75")
    assert proc.returncode == 0, proc.stderr
    assert calls[0].startswith(f"srun {tool} ")
    assert calls[1:] == [f"scontrol requeue {JOB_ID}"]
    assert "requeueing" in proc.stderr
    proc, calls = sbatch(tool, tmp_path, FAKE_SRUN_EXIT="3")
    assert proc.returncode == 3
    assert len(calls) == 1 and calls[0].startswith("srun ")


def test_scripts_read_sizes_from_the_environment(tmp_path: Path) -> None:
    _, calls = sbatch("kdic", tmp_path, FAKE_SRUN_EXIT="1", STEPS="7", DATA="my data")
    words = shlex.split(calls[0])  # the fake srun logs "$*": words lose their quoting
    assert words[words.index("--steps") + 1] == "7"
    assert "my" in words and "data" in words
    _, calls = sbatch("kdic", tmp_path, FAKE_SRUN_EXIT="1")
    assert "--steps 2000 " in calls[0]


def test_scorelidar_trains_on_the_official_split_by_default(tmp_path: Path) -> None:
    _, calls = sbatch("scorelidar", tmp_path, FAKE_SRUN_EXIT="1")
    assert "--sequences train " in calls[0]
    from scorelidar_cli.dataset import parse_sequences

    assert parse_sequences("train") == [f"{i:02d}" for i in (0, 1, 2, 3, 4, 5, 6, 7, 9, 10)]


# --- each script's srun line on the real tool, a tiny job (slow) ----------------------------


def _out(cwd: Path, tool: str) -> Path:
    return cwd / "runs" / f"{tool}-{JOB_ID}"


def _ok(proc: subprocess.CompletedProcess[str], calls: list[str], tool: str) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [c.split()[:2] for c in calls] == [["srun", tool]]  # ran once, no requeue


@pytest.mark.slow
def test_vbp_job_finetunes_from_a_local_teacher_checkpoint(tmp_path: Path) -> None:
    import timm
    import torch

    kwargs = {"img_size": 32, "patch_size": 8, "num_classes": 10, "depth": 2, "num_heads": 2}
    kwargs["embed_dim"] = 32
    torch.manual_seed(0)
    torch.save(timm.create_model("vit_tiny_patch16_224", **kwargs).state_dict(), tmp_path / "w.pth")
    model = ["--model", "vit_tiny_patch16_224", "--model-kwargs", json.dumps(kwargs)]
    model += ["--checkpoint", "w.pth", "--quiet"]
    res = run_cli("vbp", "collect-stats", *model, "--data", "builtin:digits", "--batches", "2",
                  "--batch-size", "16", "--out", "stats", cwd=tmp_path)  # fmt: skip
    assert res.code == 0, res.stderr
    res = run_cli("vbp", "prune", *model, "--stats", "stats", "--ratio", "0.5", "--out", "pruned",
                  cwd=tmp_path)  # fmt: skip
    assert res.code == 0, res.stderr
    env = dict(MODEL="pruned", TEACHER="vit_tiny_patch16_224", TEACHER_CKPT="w.pth")
    env |= dict(DATA="builtin:digits", EPOCHS="0.02", BATCH_SIZE="16", HF_HUB_OFFLINE="1")
    proc, calls = sbatch("vbp", tmp_path, **env)
    _ok(proc, calls, "vbp")
    out = _out(tmp_path, "vbp")
    assert metrics(out)["status"] == "ok"
    assert (out / "model.safetensors").is_file()
    # The teacher is the local file, not timm's random init: a missing one is refused.
    proc, _ = sbatch("vbp", tmp_path, **env | dict(TEACHER_CKPT="missing.pth", SLURM_JOB_ID="7"))
    assert proc.returncode == 2 and "missing.pth" in proc.stderr


@pytest.mark.slow
def test_kdic_job_distils_a_tiny_student(tmp_path: Path) -> None:
    pytest.importorskip("compressai")
    from kdic_cli.models import save_model
    from tests.kdic.conftest import tiny

    teacher = tiny("mbt2018-mean")
    teacher.update(force=True)
    save_model(tmp_path / "teacher.safetensors", teacher)
    res = run_cli("kdic", "build-student", "--teacher", "teacher.safetensors", "--crop", "64",
                  "--calib-images", "2", "--out", "student", "--quiet", cwd=tmp_path)  # fmt: skip
    assert res.code == 0, res.stderr
    env = dict(TEACHER="teacher.safetensors", STUDENT="student", DATA="builtin:photos")
    proc, calls = sbatch("kdic", tmp_path, STEPS="2", BATCH_SIZE="2", CROP="64", **env)
    _ok(proc, calls, "kdic")
    assert metrics(_out(tmp_path, "kdic"))["status"] == "ok"


@pytest.mark.slow
def test_scorelidar_job_distils_on_the_folder_holding_sequences(tmp_path: Path) -> None:
    import torch

    from scorelidar_cli.model import build_model
    from scorelidar_cli.pipeline import MODEL_FILE, save_model

    # Sequences 00 and 01: the default split (train) takes the part of it that is present.
    res = run_cli("scorelidar", "simulate", "--scenes", "2", "--frames", "2", "--azimuths",
                  "128", "--out", "kitti", "--quiet", cwd=tmp_path)  # fmt: skip
    assert res.code == 0, res.stderr
    assert (tmp_path / "kitti" / "sequences" / "01").is_dir()
    torch.manual_seed(0)
    (tmp_path / "teacher").mkdir()
    save_model(tmp_path / "teacher" / MODEL_FILE, build_model("tiny"), "teacher")
    proc, calls = sbatch("scorelidar", tmp_path, TEACHER="teacher", DATA="kitti", STEPS="2")
    _ok(proc, calls, "scorelidar")
    out = _out(tmp_path, "scorelidar")
    assert metrics(out)["status"] == "ok"
    assert (out / "model.safetensors").is_file()


@pytest.mark.slow
def test_hello_job_distils_the_projector(tmp_path: Path) -> None:
    from tests.hello.conftest import save_teacher

    res = run_cli("hello", "build-projector", "--encoder", "openclip:TinyCLIP-RN", "--classes",
                  "builtin:digits", "--out", "projector", "--quiet", cwd=tmp_path)  # fmt: skip
    assert res.code == 0, res.stderr
    teacher = save_teacher(tmp_path / "teacher.safetensors")
    env = dict(PROJECTOR="projector", TEACHER=str(teacher), DATA="builtin:digits")
    proc, calls = sbatch("hello", tmp_path, EPOCHS="1", BATCH_SIZE="256", **env)
    _ok(proc, calls, "hello")
    assert metrics(_out(tmp_path, "hello"))["status"] == "ok"


@pytest.mark.slow
def test_tomerge_job_generates_and_a_requeued_job_starts_over(tmp_path: Path) -> None:
    from tomerge_cli import tiny

    tiny.tiny_sd(tokenizer_dir=tmp_path / "tok").save_pretrained(tmp_path / "pipe")
    (tmp_path / "prompts.txt").write_text("a red cube\na dog\n")
    env = dict(PIPELINE="pipe", PROMPTS="prompts.txt", STEPS="2")
    proc, calls = sbatch("tomerge", tmp_path, **env)
    _ok(proc, calls, "tomerge")
    out = _out(tmp_path, "tomerge")
    assert json.loads((out / "generate.json").read_text())["images"] == 2
    first = (out / "images" / "001.png").read_bytes()
    # The requeued job (same id, same folder, a partial run left in it) regenerates it all.
    (out / "generate.json").unlink()
    (out / "images" / "001.png").unlink()
    proc, calls = sbatch("tomerge", tmp_path, **env)
    _ok(proc, calls, "tomerge")
    assert json.loads((out / "generate.json").read_text())["images"] == 2
    assert (out / "images" / "001.png").read_bytes() == first  # prompt i: seed + i
    assert metrics(out)["status"] == "ok"
