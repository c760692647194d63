"""Tiny codecs for the kdic tests (CPU, a few seconds)."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

warnings.filterwarnings("ignore", category=FutureWarning, module="torch.jit")
pytest.importorskip("compressai")


def tiny(name: str):
    from kdic_cli.models import make_spec, new_model

    if name == "s2c-conv":
        spec = make_spec(name, s2c={"widths": (8, 12, 16), "blocks": (1, 2, 2), "M": 24,
                                    "N": 16})  # fmt: skip
    elif name == "cheng2020-anchor":
        spec = make_spec(name, N=16)
    elif name == "elic2022-official":
        spec = make_spec(name, N=16, M=192)
    else:
        spec = make_spec(name, N=16, M=24)
    return new_model(spec).eval()


@pytest.fixture
def photo():
    """A real photo crop (3, 128, 192) in [0, 1]."""
    from shared.builtin_data import PhotoImages

    return PhotoImages("val")[0][:, :128, :192].contiguous()


def kdic(*args: str, check: bool = True, subprocess: bool = False):
    """Run `kdic args...` (in-process unless `subprocess`); fails on a non-zero exit when
    `check`."""
    from tests.helpers import run_cli

    res = run_cli("kdic", *args, subprocess=subprocess)
    if check and res.code != 0:
        raise AssertionError(f"kdic {' '.join(args)} -> {res.code}\n{res.stderr[-2000:]}")
    return res


TRAIN = ["--batch-size", "4", "--crop", "64", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="session")
def tiny_codecs(tmp_path_factory) -> tuple[str, str]:
    """An untrained tiny mbt2018-mean and its half-width student, as checkpoints (no
    training: for the command-line tests that need any working codec)."""
    import torch

    from kdic_cli.models import fingerprint, save_model
    from kdic_cli.student import build_student

    d: Path = tmp_path_factory.mktemp("kdic_tiny")
    torch.manual_seed(0)
    teacher = tiny("mbt2018-mean")
    teacher.update(force=True)
    student, info = build_student(teacher, [torch.rand(2, 3, 64, 64)], width=0.5)
    student.update(force=True)
    info["teacher_fingerprint"] = fingerprint(teacher).hex()
    save_model(d / "teacher.safetensors", teacher)
    save_model(d / "student.safetensors", student, extra={"kdic_student": info})
    return str(d / "teacher.safetensors"), str(d / "student.safetensors")


@pytest.fixture(scope="session")
def trained_codec(tmp_path_factory) -> str:
    """A tiny mbt2018-mean trained briefly on builtin:photos through `kdic finetune`."""
    out = tmp_path_factory.mktemp("kdic") / "teacher"
    kdic("finetune", "--arch", "mbt2018-mean", "--N", "16", "--M", "24", "--steps", "80",
         "--lr", "3e-3", "--aux-lr", "1e-2", "--lmbda", "0.0483", *TRAIN,
         "--out", str(out))  # fmt: skip
    return str(out)
