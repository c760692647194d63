"""Tiny codecs for the kdic tests (CPU, a few seconds)."""

from __future__ import annotations

import warnings

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


def kdic(*args: str, check: bool = True, **kw):
    """Run the installed `kdic` console script."""
    import subprocess

    from tests.helpers import tool_path

    res = subprocess.run([tool_path("kdic"), *args], capture_output=True, text=True, **kw)
    if check and res.returncode != 0:
        raise AssertionError(f"kdic {' '.join(args)} -> {res.returncode}\n{res.stderr[-2000:]}")
    return res


TRAIN = ["--batch-size", "4", "--crop", "64", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="session")
def trained_codec(tmp_path_factory) -> str:
    """A tiny mbt2018-mean trained briefly on builtin:photos through `kdic finetune`."""
    out = tmp_path_factory.mktemp("kdic") / "teacher"
    kdic(
        "finetune",
        "--arch",
        "mbt2018-mean",
        "--N",
        "16",
        "--M",
        "24",
        "--steps",
        "80",
        "--lr",
        "3e-3",
        "--aux-lr",
        "1e-2",
        "--lmbda",
        "0.0483",
        *TRAIN,
        "--out",
        str(out),
    )
    return str(out)
