"""End to end through the installed `kdic` console script, plus bad input in-process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import tool_path
from tests.kdic.conftest import TRAIN, kdic


@pytest.fixture(scope="module")
def student(trained_codec, tmp_path_factory) -> tuple[str, dict]:
    out = tmp_path_factory.mktemp("kdic") / "student"
    res = kdic("build-student", "--teacher", trained_codec, "--width", "0.5", "--crop", "64",
               "--calib-images", "4", "--json", "--out", str(out))  # fmt: skip
    return str(out), json.loads(res.stdout)


def test_build_student_reports_costs(student) -> None:
    _, metrics = student
    assert metrics["status"] == "ok"
    assert metrics["kmac_ratio"] <= 0.45
    assert metrics["student_params"] < metrics["teacher_params"]


def _state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def test_distill_killed_and_resumed_equals_uninterrupted(trained_codec, student, tmp_path) -> None:
    s_dir, _ = student
    args = ["distill", "--teacher", trained_codec, "--student", s_dir, "--steps", "11",
            "--checkpoint-every", "1", *TRAIN]  # fmt: skip
    kdic(*args, "--out", str(tmp_path / "full"))
    cut = tmp_path / "cut"
    proc = subprocess.Popen([tool_path("kdic"), *args, "--out", str(cut)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.time() + 120
    while not (cut / "resume.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if proc.returncode == 0:
        pytest.skip("distill finished before the signal arrived")
    assert proc.returncode == 75, err
    assert not (cut / "model.safetensors").exists()
    kdic(*args, "--out", str(cut), "--resume")
    a, b = _state(tmp_path / "full"), _state(cut)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((cut / "metrics.json").read_text())["status"] == "ok"


def test_evaluate_compress_decompress(trained_codec, student, tmp_path) -> None:
    s_dir, _ = student
    res = kdic("evaluate", "--model", trained_codec, "--model", s_dir, "--label", "teacher",
               "--label", "student", "--limit", "1", "--json", "--plot",
               str(tmp_path / "rd.png"))  # fmt: skip
    result = json.loads(res.stdout)
    assert [c["label"] for c in result["curves"]] == ["teacher", "student"]
    point = result["curves"][0]["points"][0]
    assert point["bpp"] > 0 and point["psnr"] > 10 and point["ms_ssim"] is not None
    assert (tmp_path / "rd.png").stat().st_size > 1000

    from shared.builtin_data import PhotoImages
    from shared.images import save_image

    img = tmp_path / "photo.png"
    save_image(PhotoImages("val")[0], img)
    f1, f2 = tmp_path / "a.kdic", tmp_path / "b.kdic"
    kdic("compress", str(img), "--model", trained_codec, "-o", str(f1), "--quiet")
    kdic("compress", str(img), "--model", trained_codec, "-o", str(f2), "--quiet")
    assert f1.read_bytes() == f2.read_bytes()  # bit-exact across runs
    res = kdic("decompress", str(f1), "--model", trained_codec, "-o", str(tmp_path / "r.png"),
               "--reference", str(img), "--json")  # fmt: skip
    dec = json.loads(res.stdout)
    assert dec["psnr"] == pytest.approx(point["psnr"], abs=1e-6)
    assert dec["bpp"] == pytest.approx(point["bpp"])

    # the wrong model, then a truncated file: exit 2, one line, no output left
    for model, data, words in ((s_dir, f1.read_bytes(), "another model"),
                               (trained_codec, f1.read_bytes()[:-10], "truncated")):  # fmt: skip
        bad = tmp_path / "bad.kdic"
        bad.write_bytes(data)
        res = kdic("decompress", str(bad), "--model", model, "-o", str(tmp_path / "x.png"),
                   check=False)  # fmt: skip
        assert res.returncode == 2
        assert words in res.stderr and len(res.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "x.png").exists()


def test_bad_input_exits_2_and_leaves_no_output_dir(trained_codec, tmp_path) -> None:
    out = tmp_path / "d"
    res = kdic("distill", "--teacher", trained_codec, "--student", trained_codec, "--steps",
               "2", *TRAIN, "--out", str(out), check=False)  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        line for line in res.stderr.strip().splitlines() if "--student" in line
    ]
    assert len(res.stderr.strip().splitlines()) == 1
    assert not out.exists()


def _invoke(*args: str):
    from typer.testing import CliRunner

    from kdic_cli.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("kind", ["missing", "text", "1x1"])
def test_bad_images_are_refused_with_one_line(kind: str, trained_codec, tmp_path) -> None:
    from shared.errors import InputError

    img = tmp_path / "img.png"
    if kind == "text":
        img.write_text("not an image")
    elif kind == "1x1":
        Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(img)
    out = tmp_path / "o.kdic"
    res = _invoke("compress", str(img), "--model", trained_codec, "-o", str(out))
    assert isinstance(res.exception, InputError)
    assert str(img) in str(res.exception) and "\n" not in str(res.exception)
    assert not out.exists()


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grayscale_and_rgba_are_converted(mode: str, trained_codec, tmp_path) -> None:
    arr = np.random.default_rng(0).integers(0, 255, (70, 90, 4 if mode == "RGBA" else 1))
    Image.fromarray(arr.squeeze().astype(np.uint8), mode).save(tmp_path / "img.png")
    res = _invoke("compress", str(tmp_path / "img.png"), "--model", trained_codec, "-o",
                  str(tmp_path / "o.kdic"), "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    res = _invoke("decompress", str(tmp_path / "o.kdic"), "--model", trained_codec, "-o",
                  str(tmp_path / "r.png"), "--quiet")  # fmt: skip
    assert res.exit_code == 0
    assert Image.open(tmp_path / "r.png").size == (90, 70)
    os.remove(tmp_path / "r.png")


@pytest.mark.parametrize("supervision", ["implicit", "explicit"])
def test_two_process_distill_keeps_replicas_identical(
    supervision: str, trained_codec, student, tmp_path
) -> None:
    """torchrun with 2 CPU ranks (Gloo): each rank trains on its own crops; gradients must be
    averaged in every stage (explicit stages do not go through DDP), else the run's
    end-of-training replica check fails."""
    from tests.helpers import BIN

    s_dir, _ = student
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-port",
         str(29700 + os.getpid() % 1000 + (supervision == "explicit")), tool_path("kdic"),
         "distill", "--teacher", trained_codec, "--student", s_dir, "--supervision",
         supervision, "--steps", "8", *TRAIN, "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "ddp" / "model.safetensors").exists()
