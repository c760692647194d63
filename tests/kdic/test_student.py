"""Teacher-guided student construction."""

from __future__ import annotations

import pytest
import torch

from tests.kdic.conftest import tiny


def _calib() -> list[torch.Tensor]:
    from kdic_cli.data import PhotoCrops

    ds = PhotoCrops("train", crop_size=64, n_crops_per_epoch=8)
    return [torch.stack([ds[i] for i in range(8)])]


@pytest.mark.parametrize("widths", ["class", "free"])
@pytest.mark.parametrize(
    "name", ["mbt2018-mean", "bmshj2018-hyperprior", "mbt2018", "cheng2020-anchor", "s2c-conv"]
)
def test_width_one_student_reproduces_teacher_exactly(name: str, widths: str) -> None:
    from kdic_cli.student import build_student

    teacher = tiny(name)
    teacher.update(force=True)
    student, info = build_student(teacher, _calib(), width=1.0, widths=widths)
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


# small widths in the teachers' own N/M proportions (ELIC's fixed 224/128-wide channel
# context needs N=128 to be in proportion), and one S2C-Conv config
COST = {
    "bmshj2018-hyperprior": {"N": 32, "M": 48},
    "mbt2018-mean": {"N": 32, "M": 48},
    "mbt2018": {"N": 32, "M": 48},
    "cheng2020-anchor": {"N": 32},
    "elic2022-official": {"N": 128, "M": 192},
    "s2c-conv": {"s2c": {"widths": (16, 24, 32), "M": 48, "N": 32}},
}


@pytest.mark.parametrize("widths", ["class", "free"])
@pytest.mark.parametrize("name", list(COST))
def test_half_width_student_costs_at_most_45_percent_and_codes(name: str, widths: str) -> None:
    """Every teacher class, both width modes: kMAC/px <= 45% of the teacher's at width 0.5,
    the latent y as wide as the teacher's where the student is stage-wise, and a real
    bitstream round trip."""
    from kdic_cli.models import make_spec, new_model
    from kdic_cli.student import build_student
    from shared.profiling import count_macs

    torch.manual_seed(0)
    teacher = new_model(make_spec(name, **COST[name])).eval()
    student, info = build_student(teacher, [torch.rand(2, 3, 64, 64)], 0.5, widths=widths)
    x = torch.rand(1, 3, 64, 64)
    assert count_macs(student, x) <= 0.45 * count_macs(teacher, x)
    if widths == "free":
        assert info["stagewise"]
    with torch.no_grad():
        if info["stagewise"]:
            assert student.g_a(x).shape == teacher.g_a(x).shape
        assert student(x)["x_hat"].shape == x.shape
        student.update(force=True)
        enc = student.compress(x)
        assert student.decompress(enc["strings"], enc["shape"])["x_hat"].shape == x.shape


def _kept_rows(t_weight: torch.Tensor, s_weight: torch.Tensor) -> list[int]:
    """The teacher rows each student row is a copy of (fails if one is not a copy)."""
    rows = []
    for row in s_weight:
        (match,) = [j for j, t_row in enumerate(t_weight) if torch.equal(t_row, row)]
        rows.append(match)
    return rows


def test_free_student_narrows_context_model_and_entropy_parameters_by_copying() -> None:
    """mbt2018: the context model keeps half its output channels, the entropy-parameter
    network its kept hidden channels; every kept weight is the teacher's, with the
    concatenation cat(h_s output, context) indexed at the right offsets."""
    from kdic_cli.student import build_student

    teacher = tiny("mbt2018")
    student, info = build_student(teacher, _calib(), 0.5, widths="free")
    t_ctx, s_ctx = teacher.context_prediction, student.context_prediction
    assert (s_ctx.in_channels, s_ctx.out_channels) == (24, 24)  # y kept, output 2M/2
    k_ctx = _kept_rows(t_ctx.weight, s_ctx.weight)  # y (the input) is kept whole
    assert k_ctx == sorted(set(k_ctx)) and torch.equal(s_ctx.bias, t_ctx.bias[k_ctx])
    assert torch.equal(s_ctx.mask, t_ctx.mask[k_ctx])
    t_ep, s_ep = teacher.entropy_parameters, student.entropy_parameters
    cols = list(range(48)) + [48 + k for k in k_ctx]  # h_s output (2M) whole, then context
    k_1 = _kept_rows(t_ep[0].weight[:, cols], s_ep[0].weight)
    k_2 = _kept_rows(t_ep[2].weight[:, k_1], s_ep[2].weight)
    assert len(k_1) == round(t_ep[0].out_channels / 2) and len(k_2) == round(
        t_ep[2].out_channels / 2
    )
    assert torch.equal(s_ep[4].weight, t_ep[4].weight[:, k_2])  # the Gaussian params whole
    assert s_ep[4].out_channels == 48 and info["stagewise"]


def test_free_cheng_student_narrows_pixel_shuffle_upsampling_by_copying() -> None:
    """cheng2020-anchor's sub-pixel upsampling: each kept output channel of the shuffle
    keeps its 4 input channels of the convolution before it, copied from the teacher."""
    from kdic_cli.student import build_student

    teacher = tiny("cheng2020-anchor")
    student, info = build_student(teacher, _calib(), 0.5, widths="free")
    bounds = info["boundaries"]["g_s"]
    # around g_s[3], a ResidualBlockUpsample between two narrowed residual streams
    k_in, k_out = bounds[3], bounds[4]
    assert len(k_in) == len(k_out) == 8
    rows = [4 * c + j for c in k_out for j in range(4)]
    t_up, s_up = teacher.g_s[3].upsample[0], student.g_s[3].upsample[0]
    assert torch.equal(s_up.weight, t_up.weight[rows][:, k_in])
    assert torch.equal(s_up.bias, t_up.bias[rows])
    assert student.g_s[3].conv.out_channels == 8
    assert bounds[1] is None and bounds[-1] is None  # residual stream on y, the image
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert student.g_a(x).shape == teacher.g_a(x).shape  # latent y kept


def h_s_in(h_s: torch.nn.Module) -> int:
    """Input channels of a hyper-synthesis (its first convolution's)."""
    convs = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    return next(m for m in h_s.modules() if isinstance(m, convs)).in_channels


@pytest.mark.parametrize(
    "name",
    ["mbt2018", "cheng2020-anchor", "elic2022-official"],
)
def test_every_stage_hybrid_of_a_free_student_runs(name: str) -> None:
    """The narrowed boundaries (pixel-shuffle groups between cheng2020-anchor's synthesis
    stages) and entropy-model widths fit inside the teacher, stage by stage."""
    from kdic_cli.distill import make_hybrid
    from kdic_cli.stages import partition
    from kdic_cli.student import build_student

    teacher = tiny(name)
    student, info = build_student(teacher, _calib(), 0.5, widths="free")
    x = torch.rand(1, 3, 64, 64)
    narrowed = [b for bounds in info["boundaries"].values() for b in bounds if b is not None]
    assert narrowed
    checked = 0
    for stage in partition(student):
        hybrid = make_hybrid(teacher, student, stage, info)
        seen: list[torch.Tensor] = []
        for path, eb_idx in info.get("eb", {}).items():
            if stage.transform is None and eb_idx is not None:
                # what h_s is given: the dropped hyper-latent channels must be zero, also
                # where the codec re-quantises z itself (ELIC's straight-through path)
                h_s = hybrid.codec.get_submodule(path.rpartition(".")[0] + ".h_s"
                                                 if "." in path else "h_s")  # fmt: skip
                h_s.register_forward_pre_hook(lambda m, a, seen=seen: seen.append(a[0]))
                dropped = sorted(set(range(h_s_in(h_s))) - set(eb_idx))
                # the teacher's z shifted by 3, so a dropped channel let through would round
                # to a non-zero value (a tiny model's z mostly rounds to 0 by itself)
                h_a = hybrid.codec.get_submodule(path.rpartition(".")[0] + ".h_a"
                                                 if "." in path else "h_a")  # fmt: skip
                masked = type(h_a[-1]).__name__ == "_KeepChannels"  # the hybrid's mask
                inner = h_a[0] if masked else h_a
                inner.register_forward_hook(lambda m, a, out: out + 3.0)
        with torch.no_grad():
            out = hybrid(x)
        assert out["x_hat"].shape == x.shape, stage.name
        if seen:
            assert dropped and seen[0][:, dropped].abs().max() == 0, stage.name
            checked += 1
    assert checked  # the entropy stage narrowed z and was checked
