"""Teacher-guided student construction."""

from __future__ import annotations

import pytest
import torch

from tests.kdic.conftest import tiny


def _calib() -> list[torch.Tensor]:
    from kdic_cli.data import PhotoCrops

    ds = PhotoCrops("train", crop_size=64, n_crops_per_epoch=8)
    return [torch.stack([ds[i] for i in range(8)])]


@pytest.mark.parametrize("name", ["mbt2018-mean", "bmshj2018-hyperprior", "mbt2018", "s2c-conv"])
def test_width_one_student_reproduces_teacher_exactly(name: str) -> None:
    from kdic_cli.student import build_student

    teacher = tiny(name)
    teacher.update(force=True)
    student, info = build_student(teacher, _calib(), width=1.0)
    student.update(force=True)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = teacher(x), student(x)
    assert torch.equal(a["x_hat"], b["x_hat"])
    for key in a["likelihoods"]:
        assert torch.equal(a["likelihoods"][key], b["likelihoods"][key])
    assert all(v is None for bounds in info["boundaries"].values() for v in bounds)


@pytest.mark.parametrize(("widths", "params"), [("class", 0.6), ("free", 0.5)])
def test_half_width_keeps_latent_and_cuts_macs(widths: str, params: float) -> None:
    """class: mbt2018-mean at N/2, M kept (h_s's M-wide layers stay whole, so more
    parameters remain than with free widths, which narrow those too)."""
    from kdic_cli.student import build_student
    from shared.profiling import count_macs, count_params

    teacher = tiny("mbt2018-mean")
    student, info = build_student(teacher, _calib(), width=0.5, widths=widths)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert student.g_a(x).shape == teacher.g_a(x).shape  # latent width M kept
    assert student.entropy_bottleneck.channels == 8  # hyper-latent z narrowed
    assert count_macs(student, x) <= 0.45 * count_macs(teacher, x)
    assert count_params(student) < params * count_params(teacher)
    assert len(info["eb"]["entropy_bottleneck"]) == 8 and info["stagewise"]


def test_selection_keeps_the_highest_energy_channels() -> None:
    from kdic_cli.student import build_student

    teacher = tiny("mbt2018-mean")
    with torch.no_grad():  # make channels 3 and 11 of the first conv carry most energy
        teacher.g_a[0].weight[[3, 11]] *= 50
    _, info = build_student(teacher, _calib(), width=0.25)
    kept = info["boundaries"]["g_a"][1]
    assert len(kept) == 4 and {3, 11} <= set(kept)


def test_residual_stream_is_one_group_in_s2c() -> None:
    """Every block of a stage adds to the same stream, so they must keep the same channels."""
    from kdic_cli.student import analyse_channels

    plan = analyse_channels(tiny("s2c-conv"))
    groups = {(leaf.path.split(".")[0:2] == ["g_a", "1"], plan.find(leaf.g_out))
              for leaf in plan.leaves if leaf.path.startswith("g_a.1.")
              and leaf.path.endswith(("spatial", "ffn.2", "1.0"))}  # fmt: skip
    assert len({g for _, g in groups}) == 1


def test_s2c_student_fewer_blocks_and_ffn() -> None:
    from kdic_cli.student import build_student

    student, info = build_student(tiny("s2c-conv"), _calib(), width=0.5, blocks=[1, 1, 1],
                                  ffn_ratio=1.0)  # fmt: skip
    cfg = student.kdic_spec["config"]
    assert cfg["widths"] == [4, 6, 8] and cfg["blocks"] == [1, 1, 1]
    assert len(info["kept_blocks"]) == 6
    out = student(torch.rand(1, 3, 64, 64))
    assert out["x_hat"].shape == (1, 3, 64, 64)


@pytest.mark.slow  # ~15 s on a 2-core CPU
def test_cheng2020_and_elic_students_build() -> None:
    from kdic_cli.student import build_student

    for name in ("cheng2020-anchor", "elic2022-official"):
        teacher = tiny(name)
        student, _ = build_student(teacher, _calib(), width=0.5)
        with torch.no_grad():
            out = student(torch.rand(1, 3, 64, 64))
        assert out["x_hat"].shape == (1, 3, 64, 64)
        assert sum(p.numel() for p in student.parameters()) < sum(
            p.numel() for p in teacher.parameters()
        )
