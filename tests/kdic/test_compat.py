"""compressai compatibility: class-native students read by compressai's own loaders,
foreign checkpoints with N/M read off the weights, payload vs file bpp."""

from __future__ import annotations

import json
import re

import pytest
import torch

from tests.kdic.conftest import kdic

CLASSES = ["bmshj2018-hyperprior", "mbt2018-mean", "mbt2018", "cheng2020-anchor",
           "elic2022-official"]  # fmt: skip
# tiny widths; ELIC at M=320 because compressai's Elic2022Official.from_state_dict reads N
# only and builds M=320
TINY = {"cheng2020-anchor": {"N": 16}, "elic2022-official": {"N": 16, "M": 320}}
# other widths than the defaults, to see them read off a foreign checkpoint
ODD = {"cheng2020-anchor": {"N": 24}, "elic2022-official": {"N": 24, "M": 160}}


def _model(name: str, widths: dict[str, int]):
    from kdic_cli.models import make_spec, new_model

    torch.manual_seed(0)
    model = new_model(make_spec(name, **widths)).eval()
    model.update(force=True)
    return model


@torch.no_grad()
def _same_codec(a, b, x: torch.Tensor) -> None:
    assert torch.equal(a(x)["x_hat"], b(x)["x_hat"])
    assert a.compress(x)["strings"] == b.compress(x)["strings"]


def _compressai_class(name: str) -> type:
    from compressai.zoo.image import model_architectures

    if name == "elic2022-official":
        from compressai.models import Elic2022Official

        return Elic2022Official
    return model_architectures[name]


@pytest.mark.parametrize("name", CLASSES)
def test_default_student_loads_with_compressais_own_loaders(name: str, tmp_path) -> None:
    """The default student is `Class(N * width, M)`: compressai's `from_state_dict` (and
    eval_model's checkpoint loading) rebuild it from the weights alone, identically."""
    from safetensors.torch import load_file

    from kdic_cli.models import load_model, save_model
    from kdic_cli.student import build_student

    teacher = _model(name, TINY.get(name, {"N": 16, "M": 24}))
    student, info = build_student(teacher, [torch.rand(1, 3, 64, 64)], width=0.5)
    student.update(force=True)
    assert student.kdic_spec == {**teacher.kdic_spec, "N": 8}  # no per-layer resizing
    save_model(tmp_path / "s.safetensors", student, extra={"kdic_student": info})
    ours, _ = load_model(tmp_path / "s.safetensors")
    state = load_file(str(tmp_path / "s.safetensors"))
    theirs = _compressai_class(name).from_state_dict(state).eval()
    theirs.update(force=True)
    x = torch.rand(1, 3, 64, 64)
    _same_codec(ours, theirs, x)
    try:
        from compressai.utils.eval_model.__main__ import architectures, load_checkpoint
    except ImportError:
        return
    if name in architectures:  # eval_model's checkpoint mode reads torch files
        torch.save({"state_dict": state}, tmp_path / "s.pth.tar")
        _same_codec(ours, load_checkpoint(name, False, str(tmp_path / "s.pth.tar")), x)


@pytest.mark.parametrize("name", CLASSES)
@pytest.mark.parametrize("suffix", [".pth.tar", ".safetensors"])
def test_foreign_checkpoint_widths_are_read_off_the_weights(name, suffix, tmp_path) -> None:
    from safetensors.torch import save_file

    from kdic_cli.models import load_model

    model = _model(name, ODD.get(name, {"N": 24, "M": 40}))
    path = tmp_path / f"foreign{suffix}"
    state = model.state_dict()
    if suffix == ".safetensors":  # plain weights, no toolkit metadata
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:  # what compressai's examples/train.py saves
        torch.save({"epoch": 1, "state_dict": state}, path)
    loaded, meta = load_model(path, arch={"name": name})
    assert meta["architecture"] == model.kdic_spec
    _same_codec(loaded, model, torch.rand(1, 3, 64, 64))


def test_foreign_checkpoint_misfit_names_the_tensor_and_both_shapes(tmp_path) -> None:
    from PIL import Image

    path = tmp_path / "foreign.pth.tar"
    torch.save({"state_dict": _model("mbt2018-mean", {"N": 24, "M": 40}).state_dict()}, path)
    Image.new("RGB", (64, 64), (90, 120, 30)).save(tmp_path / "img.png")
    base = ["compress", str(tmp_path / "img.png"), "--model", str(path), "--arch",
            "mbt2018-mean", "-o", str(tmp_path / "x.kdic")]  # fmt: skip
    kdic(*base, "--quiet")  # no --N/--M needed
    res = kdic(*base, "--N", "32", check=False)
    assert res.code == 2
    (line,) = res.stderr.strip().splitlines()
    # the first misfit in the model's order, e.g. "entropy_bottleneck.quantiles is (24, 1, 3)
    # in the file, (32, 1, 3) in the model"
    assert re.search(r"[\w.]+ is \(24, [\d, ]+\) in the file, \(32, [\d, ]+\) in the model", line)


@pytest.mark.parametrize("name", CLASSES)
def test_class_native_half_width_student_costs_at_most_45_percent(name: str) -> None:
    """Issue #16's budget at the zoo widths (N=192, M=320): the class-native student's
    kMAC/px at width 0.5 is at most 45% of the teacher's (measured: 25-42%)."""
    from kdic_cli.models import make_spec, new_model
    from kdic_cli.student import class_spec
    from shared.profiling import count_macs

    t_spec = make_spec(name, N=192, M=320)
    x = torch.rand(1, 3, 64, 64)
    teacher, student = new_model(t_spec), new_model(class_spec(t_spec, 0.5))
    assert count_macs(student, x) <= 0.45 * count_macs(teacher, x)


def test_file_bpp_exceeds_payload_bpp_by_the_container_bytes(photo) -> None:
    """payload: compressai's strings (what its eval_model counts); file: the .kdic file,
    whose header, shape and length prefixes are the whole difference."""
    from kdic_cli.codec_io import _HEAD, compress_image, pad_image, payload_bytes
    from kdic_cli.evaluate import evaluate_model

    model = _model("mbt2018-mean", {"N": 16, "M": 24})
    x = photo[:, :100, :150]
    with torch.no_grad():
        out = model.compress(pad_image(x[None])[0])
    strings = out["strings"]  # [[y string], [z string]]
    data = compress_image(model, x)
    assert payload_bytes(data) == sum(len(s) for group in strings for s in group)
    shape = json.dumps([int(v) for v in out["shape"]]).encode()
    container = _HEAD.size + 2 + len(shape) + 5 * (1 + len(strings) + sum(map(len, strings)))
    assert len(data) - payload_bytes(data) == container
    res = evaluate_model(model, [("photo", x)])
    assert res["file_bpp"] - res["payload_bpp"] == pytest.approx(container * 8 / (100 * 150))


def test_free_widths_still_build_a_stagewise_student(tmp_path) -> None:
    from kdic_cli.models import load_model
    from kdic_cli.student import build_student

    teacher = _model("mbt2018-mean", {"N": 16, "M": 24})
    student, info = build_student(teacher, [torch.rand(1, 3, 64, 64)], 0.5, widths="free")
    assert student.kdic_spec["resize"] and info["stagewise"] and info["widths"] == "free"
    # h_s's M-wide inner layers are narrowed too: widths no class constructor gives
    assert student.h_s[0].out_channels == 12
    from kdic_cli.models import save_model

    save_model(tmp_path / "s.safetensors", student, extra={"kdic_student": info})
    assert load_model(tmp_path / "s.safetensors")[0].h_s[0].out_channels == 12


@pytest.mark.slow  # ~20 s on a 2-core CPU: cheng2020-anchor students and a CLI distill
def test_cheng_class_native_student_is_refused_stagewise_free_one_accepted(tmp_path) -> None:
    """cheng2020-anchor ties M to N: its class-native student changes the latent width, so
    its stages do not fit inside the teacher; `--widths free` keeps them fitting."""
    from kdic_cli.models import save_model

    teacher = _model("cheng2020-anchor", {"N": 16})
    save_model(tmp_path / "t.safetensors", teacher)
    common = ["--teacher", str(tmp_path / "t.safetensors"), "--crop", "64", "--calib-images",
              "2", "--quiet"]  # fmt: skip
    for widths in ("class", "free"):
        kdic("build-student", *common, "--widths", widths, "--out", str(tmp_path / widths))
    train = ["--steps", "0", "--batch-size", "2", "--crop", "64", "--device", "cpu", "--quiet"]
    res = kdic("distill", "--teacher", str(tmp_path / "t.safetensors"), "--student",
               str(tmp_path / "class"), *train, "--out", str(tmp_path / "d1"),
               check=False)  # fmt: skip
    assert res.code == 2
    (line,) = res.stderr.strip().splitlines()
    assert "--widths free" in line and "cheng2020-anchor" in line
    kdic("distill", "--teacher", str(tmp_path / "t.safetensors"), "--student",
         str(tmp_path / "free"), *train, "--out", str(tmp_path / "d2"))  # fmt: skip
