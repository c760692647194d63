"""The shipped kdic reference codecs (references/kdic/) and the first-run demo (issue #15)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.references import REPO, find, manifest, sha256

NAMES = ("kdic/teacher", "kdic/student")


@pytest.mark.parametrize("name", NAMES)
def test_shipped_reference_is_recorded_intact(name: str) -> None:
    entry = manifest()[name]
    assert entry["command"] == f"python -m kdic_cli.references {name.split('/')[1]}"
    assert "kdic finetune" in entry["note"] or "kdic distill" in entry["note"]
    path = find(name)
    assert path is not None, f"{name}: missing or its hash differs from the manifest"
    assert path.suffix == ".safetensors"


def test_the_pair_stays_small() -> None:
    assert sum(manifest()[n]["bytes"] for n in NAMES) <= 6_000_000


def test_shipped_pair_is_the_recipe_teacher_and_its_distilled_student() -> None:
    from kdic_cli.models import fingerprint, load_model
    from kdic_cli.references import ARCH, LMBDA, RECIPE, STAGES, M, N, commands

    teacher, t_meta = load_model(find("kdic/teacher"))
    student, s_meta = load_model(find("kdic/student"))
    assert teacher.kdic_spec == {"name": ARCH, "N": N, "M": M}
    # the class-native student: the teacher's compressai class at half N, M kept
    assert student.kdic_spec == {"name": ARCH, "N": N // 2, "M": M}
    assert t_meta["recipe"] == s_meta["recipe"] == RECIPE
    assert t_meta["commands"] == commands("teacher") and s_meta["commands"] == commands("student")
    assert s_meta["kdic_student"]["teacher_fingerprint"] == fingerprint(teacher).hex()
    # both end with `kdic finetune --model` (the teacher's lower lr, the student's end-to-end
    # pass after stage-wise distillation)
    last = {name: int(args[args.index("--steps") + 1]) for name, args in STAGES.items()
            for _, args in STAGES[name][-1:]}  # fmt: skip
    assert t_meta["trained"] == {"lmbda": LMBDA, "steps": last["teacher"], "scratch": False}
    assert s_meta["trained"] == {"lmbda": LMBDA, "steps": last["student"], "scratch": False}
    assert set(s_meta["training"]) == {"student-kd", "student"}
    # no machine-specific paths in what ships
    text = json.dumps([{k: v for k, v in m.items() if k != "path"} for m in (t_meta, s_meta)])
    assert "/tmp" not in text and str(REPO) not in text


def test_compressai_reads_the_shipped_files_and_codes_the_same_bits() -> None:
    """The files are plain compressai state dicts: compressai's own loader gives a model that
    writes the same bitstream as the toolkit's."""
    import torch
    from compressai.models import MeanScaleHyperprior
    from safetensors.torch import load_file

    from kdic_cli.models import load_model
    from shared.builtin_data import PhotoImages

    x = PhotoImages("val")[0][None, :, :128, :128].contiguous()
    for name in NAMES:
        ours = load_model(find(name))[0]
        theirs = MeanScaleHyperprior.from_state_dict(load_file(str(find(name)))).eval()
        with torch.inference_mode():
            assert theirs.compress(x)["strings"] == ours.compress(x)["strings"]


def test_claim_says_where_the_codecs_lose() -> None:
    from kdic_cli.demo import claim

    f = {
        "photos": 4, "teacher_psnr": 28.0, "teacher_bpp": 0.3, "jpeg_psnr_at_teacher_bpp": 27.5,
        "webp_psnr_at_teacher_bpp": 30.8, "student_kmac_per_px": 4.1, "student_kmac_ratio": 0.31,
        "teacher_kmac_per_px": 13.3, "student_psnr": 26.0, "student_bpp": 0.33,
        "student_psnr_gap_db": -2.0, "student_bpp_change": 0.1,
        "jpeg_psnr_at_student_bpp": 28.0, "webp_psnr_at_student_bpp": None,
    }  # fmt: skip
    text = claim(f)
    assert "28.00 dB at 0.300 bpp, 0.50 dB above JPEG and 2.80 dB below WebP" in text
    assert "4.1 kMAC/px (31% of the teacher's 13.3)" in text
    assert "2.00 dB below the teacher at 10% more rate" in text
    assert "2.00 dB below JPEG" in text and "outside WebP's measured range" in text


def test_psnr_at_interpolates_inside_the_curve_only() -> None:
    from kdic_cli.demo import psnr_at

    curve = [{"payload_bpp": 0.2, "psnr": 25.0}, {"payload_bpp": 0.4, "psnr": 29.0}]
    assert psnr_at(curve, 0.3) == pytest.approx(27.0)
    assert psnr_at(curve, 0.1) is None and psnr_at(curve, 0.5) is None


@pytest.mark.slow
def test_demo_prints_its_figures_and_writes_its_picture(tmp_path: Path) -> None:
    from shared.demo import run_demo

    code, report, _ = run_demo("kdic_cli.demo", tmp_path)
    assert code == 0 and report, "the demo failed or printed no JSON object"
    assert Path(report["picture"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    f = report["figures"]
    from shared.builtin_data import list_photos

    assert f["test_photos"] == list_photos("val") and len(f["test_photos"]) >= 8
    for codec in ("teacher", "student"):
        for key in ("bpp", "psnr", "ms_ssim", "kmac_per_px", "encode_s", "decode_s"):
            assert f[f"{codec}_{key}"] > 0
    assert f["student_kmac_ratio"] < 0.45  # the cost target of a half-width student
    assert len(f["jpeg_curve"]) >= 5 and len(f["webp_curve"]) >= 5
    assert f"{f['teacher_psnr']:.2f} dB at {f['teacher_bpp']:.3f} bpp" in report["claim"]


@pytest.mark.slow
@pytest.mark.rebuild
@pytest.mark.timeout(3600)  # about 6 minutes of one thread, much longer on a busy machine
def test_rebuilding_the_student_gives_the_shipped_file(tmp_path: Path) -> None:
    """The faster artefact (under 10 minutes of one CPU thread; the teacher takes about
    40): `kdic build-student`, `kdic distill` and `kdic finetune` of the shipped teacher on
    one thread, every crop a function of (seed, step), no paths or times in the file, so the
    rebuild is bit-identical on the same CPU type and versions."""
    from kdic_cli.references import build

    path = build("student", tmp_path, tmp_path / "work", log=lambda _: None)
    assert sha256(path) == manifest()["kdic/student"]["sha256"]
