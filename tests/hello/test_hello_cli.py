"""The `hello` commands end to end, in-process through `run_cli` (the imports of open_clip and
timm would cost ~10 s per subprocess), on real digits with tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.hello.conftest import STUDENT, save_teacher
from tests.helpers import run_cli


def hello(capsys: pytest.CaptureFixture[str] | None, *args: str) -> tuple[int, dict | None, str]:
    """(exit code, the --json object or None, stderr) of `hello args...`, in-process."""
    res = run_cli("hello", *args)
    out = res.stdout.strip()
    obj = json.loads(out.splitlines()[-1]) if res.code == 0 and out.startswith("{") else None
    return res.code, obj, res.stderr


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hello_cli")


@pytest.mark.slow
def test_pipeline_projector_synthesize_students(capsys, workdir: Path, teacher_file: Path) -> None:
    w = workdir
    code, built, err = hello(
        capsys,
        "build-projector",
        "--encoder",
        "openclip:TinyCLIP-RN",
        "--classes",
        "builtin:digits",
        "--out",
        str(w / "p0"),
        "--json",
    )
    assert code == 0, err
    assert built["storage_bytes"] == 0 and built["classes"] == 10
    code, dist, err = hello(
        capsys,
        "distill",
        "--projector",
        str(w / "p0"),
        "--teacher",
        str(teacher_file),
        "--teacher",
        str(teacher_file),
        "--data",
        "builtin:digits",
        "--rank",
        "1",
        "--head-rank",
        "2",
        "--epochs",
        "1",
        "--batch-size",
        "128",
        "--out",
        str(w / "p"),
        "--json",
    )
    assert code == 0, err
    assert dist["storage_bytes"] == 4 * dist["trainable_parameters"] > 0
    assert 0 <= dist["agreement"] <= 100
    assert (w / "p" / "config.yaml").exists() and (w / "p" / "metrics.json").exists()
    code, syn, err = hello(
        capsys,
        "synthesize",
        "--teacher",
        str(teacher_file),
        "--data",
        "builtin:digits",
        "--ipc",
        "1",
        "--crops-per-image",
        "2",
        "--out",
        str(w / "s"),
        "--json",
    )
    assert code == 0, err
    assert syn["images"] == 10 and syn["image_size"] == 32
    assert json.loads((w / "s" / "images" / "classes.json").read_text())["class_names"][0] == "zero"
    # go on distilling the projector, now also on the student's batches of the synthetic set
    again = ["distill", "--projector", str(w / "p"), "--teacher", str(teacher_file)]
    again += ["--data", "builtin:digits", "--epochs", "1", "--batch-size", "128"]
    code, cont, err = hello(
        capsys, *again, "--synthetic", str(w / "s" / "images"), "--out", str(w / "p2"), "--json"
    )
    assert code == 0, err
    assert cont["trainable_parameters"] == dist["trainable_parameters"]
    assert cont["storage_bytes"] == dist["storage_bytes"]
    from hello_cli.projector import load_projector

    before, after = (
        load_projector(w / "p").stored_tensors(),
        load_projector(w / "p2").stored_tensors(),
    )
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    code, _, err = hello(capsys, *again, "--rank", "2", "--out", str(w / "p3"))
    assert code == 2 and "already has factors" in err and not (w / "p3").exists()
    results = {}
    for labels in ("projector", "stored", "hard"):
        code, res, err = hello(
            capsys,
            "train-student",
            "--synthetic",
            str(w / "s" / "images"),
            "--labels",
            labels,
            "--projector",
            str(w / "p"),
            "--teacher",
            str(teacher_file),
            *STUDENT,
            "--epochs",
            "2",
            "--batch-size",
            "5",
            "--val-data",
            "builtin:digits",
            "--out",
            str(w / f"st_{labels}"),
            "--json",
        )
        assert code == 0, err
        results[labels] = res
    assert results["projector"]["label_storage_bytes"] == dist["storage_bytes"]
    assert results["hard"]["label_storage_bytes"] == 0
    stored_file = w / "st_stored" / "soft_labels.safetensors"
    assert stored_file.exists() and results["stored"]["label_storage_bytes"] > 0
    assert results["stored"]["label_storage_bytes"] < stored_file.stat().st_size
    # a trained student is a toolkit checkpoint that can serve as a teacher
    code, ev, err = hello(
        capsys,
        "evaluate",
        "--projector",
        str(w / "p"),
        "--teacher",
        str(w / "st_hard" / "student.safetensors"),
        "--data",
        "builtin:digits",
        "--json",
    )
    assert code == 0, err
    rows = ev["storage"]
    assert rows[1]["stored_soft_labels_bytes"] > rows[0]["stored_soft_labels_bytes"]


@pytest.mark.slow
def test_class_count_mismatch_is_refused_and_nothing_written(
    capsys, workdir: Path, tmp_path: Path
) -> None:
    names = tmp_path / "three.txt"
    names.write_text("cat\ndog\nbird\n")
    code, _, err = hello(
        capsys,
        "build-projector",
        "--encoder",
        "openclip:TinyCLIP-RN",
        "--classes",
        str(names),
        "--out",
        str(tmp_path / "p3"),
        "--json",
    )
    assert code == 0, err
    teacher = save_teacher(tmp_path / "t.safetensors")
    out = tmp_path / "never"
    code, _, err = hello(
        capsys,
        "distill",
        "--projector",
        str(tmp_path / "p3"),
        "--teacher",
        str(teacher),
        "--data",
        "builtin:digits",
        "--out",
        str(out),
    )
    assert code == 2
    assert "projector has 3 classes, the data 10" in err
    assert "Traceback" not in err and not out.exists()


def test_class_name_order_mismatch_is_refused(capsys, tmp_path: Path) -> None:
    from shared.builtin_data import DIGITS_CLASS_NAMES

    teacher = save_teacher(tmp_path / "t.safetensors", class_names=sorted(DIGITS_CLASS_NAMES))
    code, _, err = hello(
        capsys,
        "synthesize",
        "--teacher",
        str(teacher),
        "--data",
        "builtin:digits",
        "--out",
        str(tmp_path / "s"),
    )
    assert code == 2
    assert "order differ" in err and not (tmp_path / "s").exists()


def test_bad_inputs_give_one_line_and_exit_2(capsys, tmp_path: Path) -> None:
    cases = [
        ["build-projector", "--encoder", "clip", "--classes", "builtin:digits"],
        ["build-projector", "--encoder", "openclip:NoSuchNet", "--classes", "builtin:digits"],
        [
            "build-projector",
            "--encoder",
            "openclip:TinyCLIP-RN",
            "--encoder-weights",
            str(tmp_path / "missing.pt"),
            "--classes",
            "builtin:digits",
        ],
        [
            "distill",
            "--projector",
            str(tmp_path / "nothing"),
            "--teacher",
            "x",
            "--data",
            "builtin:digits",
        ],
        [
            "train-student",
            "--synthetic",
            str(tmp_path),
            "--labels",
            "soft",
            "--student",
            "resnet18",
            "--val-data",
            "builtin:digits",
        ],
        [
            "train-student",
            "--synthetic",
            str(tmp_path),
            "--labels",
            "projector",
            "--student",
            "resnet18",
            "--val-data",
            "builtin:digits",
        ],
    ]
    for args in cases:
        code, _, err = hello(capsys, *args, "--out", str(tmp_path / "o"))
        assert code == 2, (args, err)
        errors = [line for line in err.splitlines() if line.startswith("hello: error:")]
        assert len(errors) == 1 and "Traceback" not in err, err
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["distill", "--lr", "0"], "--lr: must be > 0"),
        (["distill", "--ce-weight", "nan"], "--ce-weight: must be a finite number"),
        (["distill", "--synthetic-weight", "-1"], "--synthetic-weight: must be >= 0"),
        (["distill", "--epochs", "0"], "--epochs: must be >= 1"),
        (["synthesize", "--ipc", "0"], "--ipc: must be >= 1"),
        (["synthesize", "--crop-min-scale", "1.5"], "--crop-min-scale: must be <= 1"),
        (["train-student", "--loss", "l1"], "--loss: 'l1' is not one of mse, kl"),
        (["train-student", "--beta", "inf"], "--beta: must be a finite number"),
        (["evaluate", "--batch-size", "0"], "--batch-size: must be >= 1"),
    ],
)
def test_declared_bounds_refuse_bad_numbers_before_any_work(
    tmp_path: Path, args: list[str], message: str
) -> None:
    required = {
        "distill": ["--projector", "p", "--teacher", "t", "--data", "builtin:digits"],
        "synthesize": ["--teacher", "t", "--data", "builtin:digits"],
        "train-student": ["--synthetic", "s", "--labels", "hard", "--student", "resnet18"]
        + ["--val-data", "builtin:digits"],
        "evaluate": ["--projector", "p", "--teacher", "t", "--data", "builtin:digits"],
    }[args[0]]
    out = tmp_path / "o"
    code, _, err = hello(None, *args, *required, "--out", str(out))
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("hello: error:")]
    assert len(errors) == 1 and message in errors[0], err
    assert not out.exists()


def test_every_command_takes_device_and_training_commands_resume() -> None:
    for command in ("build-projector", "distill", "synthesize", "train-student", "evaluate"):
        res = run_cli("hello", command, "--help")
        assert res.code == 0 and "--device" in res.stdout, command
        has_resume = "--resume" in res.stdout and "--checkpoint-every" in res.stdout
        assert has_resume == (command in ("distill", "train-student")), command


@pytest.mark.slow
def test_distill_resume_continues_the_same_run_and_refuses_other_options(
    tmp_path: Path, teacher_file: Path, tiny_projector
) -> None:
    from hello_cli.projector import load_projector, save_projector

    save_projector(tiny_projector, tmp_path / "p0")
    args = ["distill", "--projector", str(tmp_path / "p0"), "--teacher", str(teacher_file)]
    args += ["--data", "builtin:digits", "--rank", "1", "--head-rank", "2", "--epochs", "1"]
    args += ["--batch-size", "512", "--device", "cpu", "--out", str(tmp_path / "p")]
    code, first, err = hello(None, *args, "--checkpoint-every", "1", "--json")
    assert code == 0, err
    state = torch.load(tmp_path / "p" / "resume.pt", weights_only=False)
    assert state["step"] == first["steps"] > 1 and state["command"] == "distill"
    factors = load_projector(tmp_path / "p").stored_tensors()
    # a finished run resumed: no step left, the same factors written again
    code, again, err = hello(None, *args, "--resume", "--json")
    assert code == 0, err
    assert again["agreement"] == first["agreement"]
    after = load_projector(tmp_path / "p").stored_tensors()
    assert all(torch.equal(factors[k], after[k]) for k in factors)
    # other options cannot continue this run
    code, _, err = hello(None, *args, "--resume", "--lr", "0.5")
    assert code == 2 and "other options" in err and "--lr" in err, err
    code, _, err = hello(None, *args)  # a used folder without --resume/--overwrite
    assert code == 2 and "not empty" in err


@pytest.mark.slow
def test_two_ranks_distil_one_projector_on_half_the_steps_each(
    capsys, tmp_path: Path, teacher_file: Path
) -> None:
    """torchrun with 2 CPU ranks (Gloo): each rank takes every other batch and the factors'
    gradients are averaged; the run ends with the check that both ranks hold the same
    projector (it raises if the averaging were skipped, as the ranks see other batches)."""
    import os
    import subprocess

    from tests.helpers import BIN, tool_path

    code, _, err = hello(capsys, "build-projector", "--encoder", "openclip:TinyCLIP-RN",
                         "--classes", "builtin:digits", "--out", str(tmp_path / "p0"))  # fmt: skip
    assert code == 0, err
    args = ["distill", "--projector", str(tmp_path / "p0"), "--teacher", str(teacher_file),
            "--data", "builtin:digits", "--rank", "1", "--head-rank", "2", "--epochs", "1",
            "--batch-size", "128", "--device", "cpu", "--json"]  # fmt: skip
    code, one, err = hello(capsys, *args, "--out", str(tmp_path / "one"))
    assert code == 0, err
    res = subprocess.run(
        [str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-port",
         str(29900 + os.getpid() % 90), tool_path("hello"), *args, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["world_size"] == 2 and two["steps"] == one["steps"] // 2
    assert (tmp_path / "two" / "projector.safetensors").is_file()
