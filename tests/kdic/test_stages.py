"""Stage partition and the hybrid codecs of stage-wise distillation."""

from __future__ import annotations

import pytest
import torch

from tests.kdic.conftest import tiny


@pytest.mark.parametrize(
    "name", ["mbt2018-mean", "mbt2018", "s2c-conv", "cheng2020-anchor", "elic2022-official"]
)
def test_partition_covers_every_parameter_once(name: str) -> None:
    from kdic_cli.stages import check_partition, partition

    model = tiny(name)
    stages = partition(model)
    check_partition(model, stages)
    names = [p for s in stages for p in s.params]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    kinds = {s.name.split(".")[0] for s in stages}
    assert {"g_a", "h_a", "h_s", "g_s", "entropy"} <= kinds


def test_s2c_has_three_analysis_and_three_synthesis_stages() -> None:
    from kdic_cli.stages import partition

    names = [s.name for s in partition(tiny("s2c-conv"))]
    assert [n for n in names if n.startswith("g_a")] == ["g_a.0", "g_a.1", "g_a.2"]
    assert [n for n in names if n.startswith("g_s")] == ["g_s.0", "g_s.1", "g_s.2"]


def _pair(width: float):
    from kdic_cli.student import build_student

    teacher = tiny("mbt2018-mean")
    student, info = build_student(teacher, [torch.rand(2, 3, 64, 64)], width=width)
    return teacher, student, info


@pytest.mark.slow  # ~15 s on a 2-core CPU
def test_hybrid_trains_only_its_stage() -> None:
    from kdic_cli.distill import make_hybrid, rd_loss
    from kdic_cli.stages import partition

    teacher, student, info = _pair(0.5)
    before_t = {k: v.clone() for k, v in teacher.state_dict().items()}
    for stage in partition(student):
        hybrid = make_hybrid(teacher, student, stage, info).train()
        student.zero_grad()
        x = torch.rand(2, 3, 64, 64)
        rd_loss(hybrid(x), x, 0.01)["loss"].backward()
        grads = {n for n, p in student.named_parameters() if p.grad is not None
                 and p.grad.abs().sum() > 0}  # fmt: skip
        assert grads and grads <= set(stage.params), stage.name
        assert not any(p.requires_grad for p in hybrid.codec.parameters()
                       if all(p is not q for q in student.parameters()))  # fmt: skip
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before_t[k])


def test_hybrid_with_full_width_student_is_the_teacher() -> None:
    from kdic_cli.distill import explicit_loss, make_hybrid
    from kdic_cli.stages import partition

    teacher, student, info = _pair(1.0)
    x = torch.rand(1, 3, 64, 64)
    for stage in partition(student):
        hybrid = make_hybrid(teacher, student, stage, info).eval()
        with torch.no_grad():
            assert torch.equal(hybrid(x)["x_hat"], teacher(x)["x_hat"]), stage.name
        if stage.transform is not None:
            assert explicit_loss(teacher.eval(), student.eval(), stage, info, x).item() == 0
