"""The `kdic` command line: in-process on tiny untrained codecs (fast), end to end with a
trained codec, preemption and torchrun in real processes (slow)."""

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


def _one_line_error(res, *words: str) -> None:
    assert res.code == 2, (res.code, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    for w in words:
        assert w in lines[0], lines[0]


# -- fast: tiny untrained codecs, in-process ----------------------------------------------
def test_build_student_reports_costs(tiny_codecs, tmp_path) -> None:
    teacher, _ = tiny_codecs
    res = kdic("build-student", "--teacher", teacher, "--width", "0.5", "--crop", "64",
               "--calib-images", "4", "--json", "--out", str(tmp_path / "s"))  # fmt: skip
    metrics = json.loads(res.stdout)
    assert metrics["status"] == "ok"
    assert metrics["kmac_ratio"] <= 0.45
    # the default student is mbt2018-mean itself at N/2 (compressai's loaders read it)
    assert metrics["architecture"] == "mbt2018-mean N=8 M=24" and metrics["stagewise"]
    assert metrics["student_params"] < metrics["teacher_params"]
    assert Path(metrics["student"]).is_file()


def test_compress_decompress_round_trip(tiny_codecs, tmp_path) -> None:
    from shared.builtin_data import PhotoImages
    from shared.images import save_image

    teacher, student = tiny_codecs
    img = tmp_path / "photo.png"
    save_image(PhotoImages("val")[0][:, :100, :150], img)
    f1, f2 = tmp_path / "a.kdic", tmp_path / "b.kdic"
    res = kdic("compress", str(img), "--model", teacher, "-o", str(f1), "--json")
    kdic("compress", str(img), "--model", teacher, "-o", str(f2), "--quiet")
    assert f1.read_bytes() == f2.read_bytes()  # bit-exact across runs
    enc = json.loads(res.stdout)
    assert enc["bytes"] == f1.stat().st_size and (enc["width"], enc["height"]) == (150, 100)
    res = kdic("decompress", str(f1), "--model", teacher, "-o", str(tmp_path / "r.png"),
               "--reference", str(img), "--json")  # fmt: skip
    dec = json.loads(res.stdout)
    assert dec["bpp"] == pytest.approx(enc["bpp"]) and dec["psnr"] > 0
    assert Image.open(tmp_path / "r.png").size == (150, 100)

    # the wrong model, then a truncated file: exit 2, one line, no output left
    for model, data, words in ((student, f1.read_bytes(), "another model"),
                               (teacher, f1.read_bytes()[:-10], "truncated")):  # fmt: skip
        bad = tmp_path / "bad.kdic"
        bad.write_bytes(data)
        res = kdic("decompress", str(bad), "--model", model, "-o", str(tmp_path / "x.png"),
                   check=False)  # fmt: skip
        _one_line_error(res, words)
        assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("kind", ["missing", "text", "1x1"])
def test_bad_images_are_refused_with_one_line(kind: str, tiny_codecs, tmp_path) -> None:
    img = tmp_path / "img.png"
    if kind == "text":
        img.write_text("not an image")
    elif kind == "1x1":
        Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(img)
    out = tmp_path / "o.kdic"
    res = kdic("compress", str(img), "--model", tiny_codecs[0], "-o", str(out), check=False)
    _one_line_error(res, str(img))
    assert not out.exists()


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grayscale_and_rgba_are_converted(mode: str, tiny_codecs, tmp_path) -> None:
    arr = np.random.default_rng(0).integers(0, 255, (70, 90, 4 if mode == "RGBA" else 1))
    Image.fromarray(arr.squeeze().astype(np.uint8), mode).save(tmp_path / "img.png")
    kdic("compress", str(tmp_path / "img.png"), "--model", tiny_codecs[0], "-o",
         str(tmp_path / "o.kdic"), "--json")  # fmt: skip
    kdic("decompress", str(tmp_path / "o.kdic"), "--model", tiny_codecs[0], "-o",
         str(tmp_path / "r.png"), "--quiet")  # fmt: skip
    assert Image.open(tmp_path / "r.png").size == (90, 70)


def test_distill_refuses_a_non_student_and_leaves_no_output_dir(tiny_codecs, tmp_path) -> None:
    teacher, _ = tiny_codecs
    out = tmp_path / "d"
    res = kdic("distill", "--teacher", teacher, "--student", teacher, "--steps", "2", *TRAIN,
               "--out", str(out), check=False)  # fmt: skip
    _one_line_error(res, "--student", "build-student")
    assert not out.exists()


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--lmbda", "0", "must be > 0"),
        ("--lmbda", "nan", "finite"),
        ("--lr", "0", "must be > 0"),
        ("--aux-lr", "-1", "must be > 0"),
        ("--steps", "-1", "must be >= 0"),
        ("--batch-size", "0", "must be >= 1"),
        ("--crop", "100", "multiple of 64"),
        ("--supervision", "both", "implicit, explicit"),
        ("--quality", "9", "must be <= 8"),
    ],
)
def test_distill_option_bounds(flag, value, words, tiny_codecs, tmp_path) -> None:
    teacher, student = tiny_codecs
    out = tmp_path / "d"
    res = kdic("distill", "--teacher", teacher, "--student", student, *TRAIN, flag, value,
               "--out", str(out), check=False)  # fmt: skip
    _one_line_error(res, flag, words)
    assert not out.exists()


@pytest.mark.parametrize(("value", "words"), [("0", "must be > 0"), ("1.5", "must be <= 1")])
def test_build_student_width_bounds(value, words, tiny_codecs, tmp_path) -> None:
    res = kdic("build-student", "--teacher", tiny_codecs[0], "--width", value,
               "--out", str(tmp_path / "s"), check=False)  # fmt: skip
    _one_line_error(res, "--width", words)


def test_distill_zero_steps_saves_the_student_unchanged(tiny_codecs, tmp_path) -> None:
    from kdic_cli.models import load_model

    teacher, student = tiny_codecs
    res = kdic("distill", "--teacher", teacher, "--student", student, "--steps", "0", *TRAIN,
               "--json", "--out", str(tmp_path / "d"))  # fmt: skip
    metrics = json.loads(res.stdout)
    assert metrics["steps"] == 0 and "h_a" in metrics["stages"]
    a, b = load_model(student)[0].state_dict(), load_model(tmp_path / "d")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _zoo(monkeypatch, error: str | None = None) -> dict[str, torch.Tensor]:
    """compressai's zoo entry for mbt2018-mean with the download replaced: seeded random
    weights of the zoo architecture (no network here), or the error a failed download
    raises. Returns the weights a `pretrained=True` call gives."""
    from compressai.zoo import image_models

    build = image_models["mbt2018-mean"]

    def download(
        quality: int, metric: str = "mse", pretrained: bool = False, progress: bool = True
    ):
        if error is not None:
            raise OSError(error)
        torch.manual_seed(quality)
        return build(quality=quality, metric=metric, pretrained=False, progress=progress)

    monkeypatch.setitem(image_models, "mbt2018-mean", download)
    return download(1).state_dict() if error is None else {}


def test_a_zoo_teacher_becomes_a_checkpoint_that_distills(monkeypatch, tmp_path) -> None:
    """finetune --pretrained --steps 0 saves compressai's zoo weights unchanged as a kdic
    checkpoint, from which build-student and distill work (the paper's pretrained teacher)."""
    from kdic_cli.models import load_model

    zoo = _zoo(monkeypatch)
    teacher = tmp_path / "teacher"
    res = kdic("finetune", "--arch", "mbt2018-mean", "--quality", "1", "--pretrained",
               "--steps", "0", *TRAIN, "--json", "--out", str(teacher))  # fmt: skip
    assert json.loads(res.stdout)["status"] == "ok"
    net, meta = load_model(teacher)
    assert meta["architecture"] == {"name": "mbt2018-mean", "N": 128, "M": 192}
    learned = dict(net.named_parameters())  # the entropy coder's tables are derived
    assert learned and all(torch.equal(learned[k], zoo[k]) for k in learned)
    kdic("build-student", "--teacher", str(teacher), "--width", "0.5", "--crop", "64",
         "--calib-images", "2", "--out", str(tmp_path / "s"))  # fmt: skip
    res = kdic("distill", "--teacher", str(teacher), "--student", str(tmp_path / "s"),
               "--steps", "1", *TRAIN, "--json", "--out", str(tmp_path / "d"))  # fmt: skip
    assert json.loads(res.stdout)["steps"] == 1


def test_compress_and_decompress_with_zoo_weights_need_no_checkpoint(monkeypatch, tmp_path) -> None:
    from shared.builtin_data import PhotoImages
    from shared.images import save_image

    _zoo(monkeypatch)
    img = tmp_path / "photo.png"
    save_image(PhotoImages("val")[0][:, :64, :64], img)
    zoo = ["--arch", "mbt2018-mean", "--quality", "1", "--pretrained"]
    kdic("compress", str(img), *zoo, "-o", str(tmp_path / "a.kdic"), "--quiet")
    res = kdic("decompress", str(tmp_path / "a.kdic"), *zoo, "-o", str(tmp_path / "r.png"),
               "--reference", str(img), "--json")  # fmt: skip
    assert json.loads(res.stdout)["psnr"] > 0
    res = kdic("compress", str(img), "-o", str(tmp_path / "b.kdic"), check=False)
    _one_line_error(res, "--model", "checkpoint")
    assert not (tmp_path / "b.kdic").exists()


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ([], ["--pretrained", "could not download", "offline"]),
        (["--scratch"], ["--pretrained", "no --model or --scratch"]),
    ],
)
def test_finetune_pretrained_refusals_leave_nothing(monkeypatch, tmp_path, extra, words) -> None:
    _zoo(monkeypatch, error="<urlopen error [Errno -3] Temporary failure in name resolution>")
    out = tmp_path / "t"
    res = kdic("finetune", "--arch", "mbt2018-mean", "--quality", "1", "--pretrained",
               "--steps", "0", *extra, *TRAIN, "--out", str(out), check=False)  # fmt: skip
    _one_line_error(res, *words)
    assert not out.exists()


# -- slow: training and real processes ----------------------------------------------------
@pytest.fixture(scope="module")
def student(trained_codec, tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("kdic") / "student"
    kdic("build-student", "--teacher", trained_codec, "--width", "0.5", "--crop", "64",
         "--calib-images", "4", "--quiet", "--out", str(out))  # fmt: skip
    return str(out)


def _state(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.slow
def test_distill_killed_and_resumed_equals_uninterrupted(trained_codec, student, tmp_path) -> None:
    args = ["distill", "--teacher", trained_codec, "--student", student, "--steps", "11",
            "--checkpoint-every", "1", *TRAIN]  # fmt: skip
    # all three runs in child processes: the same thread count, so the same float rounding
    kdic(*args, "--out", str(tmp_path / "full"), subprocess=True)
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
    kdic(*args, "--out", str(cut), "--resume", subprocess=True)
    a, b = _state(tmp_path / "full"), _state(cut)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((cut / "metrics.json").read_text())["status"] == "ok"


@pytest.mark.slow
def test_evaluate_trained_codec_matches_decompress(trained_codec, student, tmp_path) -> None:
    res = kdic("evaluate", "--model", trained_codec, "--model", student, "--label", "teacher",
               "--label", "student", "--limit", "1", "--json", "--plot",
               str(tmp_path / "rd.png"))  # fmt: skip
    result = json.loads(res.stdout)
    assert [c["label"] for c in result["curves"]] == ["teacher", "student"]
    point = result["curves"][0]["points"][0]
    assert 0 < point["payload_bpp"] < point["file_bpp"]
    assert point["psnr"] > 10 and point["ms_ssim"] is not None
    assert (tmp_path / "rd.png").stat().st_size > 1000

    from shared.builtin_data import PhotoImages
    from shared.images import save_image

    img = tmp_path / "photo.png"
    save_image(PhotoImages("val")[0], img)
    f1 = tmp_path / "a.kdic"
    kdic("compress", str(img), "--model", trained_codec, "-o", str(f1), "--quiet")
    res = kdic("decompress", str(f1), "--model", trained_codec, "-o", str(tmp_path / "r.png"),
               "--reference", str(img), "--json")  # fmt: skip
    dec = json.loads(res.stdout)
    assert dec["psnr"] == pytest.approx(point["psnr"], abs=1e-6)
    assert dec["bpp"] == pytest.approx(point["file_bpp"])  # the file, header included
    assert dec["payload_bpp"] == pytest.approx(point["payload_bpp"])


@pytest.mark.slow
@pytest.mark.parametrize("supervision", ["implicit", "explicit"])
def test_two_process_distill_keeps_replicas_identical(
    supervision: str, trained_codec, student, tmp_path
) -> None:
    """torchrun with 2 CPU ranks (Gloo): each rank trains on its own crops; gradients must be
    averaged in every stage (explicit stages do not go through DDP), else the run's
    end-of-training replica check fails."""
    from tests.helpers import BIN

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [str(BIN / "torchrun"), "--nproc-per-node", "2", "--master-port",
         str(29700 + os.getpid() % 1000 + (supervision == "explicit")), tool_path("kdic"),
         "distill", "--teacher", trained_codec, "--student", student, "--supervision",
         supervision, "--steps", "8", *TRAIN, "--out", str(tmp_path / "ddp")],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "ddp" / "model.safetensors").exists()
