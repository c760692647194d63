"""shared.profiling: parameter and MAC counts, latency, throughput, interleaved comparison."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from shared import profiling


def _tiny() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(),
        nn.Linear(8 * 8 * 8, 10),
    )  # fmt: skip


def test_count_params_shared_counted_once() -> None:
    lin = nn.Linear(10, 20)
    assert profiling.count_params(lin) == 10 * 20 + 20
    assert profiling.count_params(nn.Sequential(lin, lin)) == 220
    lin.bias.requires_grad_(False)
    assert profiling.count_params(lin, trainable_only=True) == 200


def test_macs_linear_and_conv_by_hand() -> None:
    assert profiling.count_macs(nn.Linear(10, 20), torch.randn(3, 10)) == 600
    conv = nn.Conv2d(3, 16, kernel_size=3, padding=1)
    # each of 16 x 8 x 8 outputs takes 3 x 3 x 3 multiply-adds, for 2 images
    assert profiling.count_macs(conv, torch.randn(2, 3, 8, 8)) == 2 * 16 * 8 * 8 * 27
    grouped = nn.Conv2d(8, 8, kernel_size=3, padding=1, groups=8)  # depthwise
    assert profiling.count_macs(grouped, torch.randn(1, 8, 5, 5)) == 8 * 5 * 5 * 9


def test_macs_take_a_tuple_of_args() -> None:
    class Bilinear(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a @ b

    assert profiling.count_macs(Bilinear(), (torch.randn(4, 5), torch.randn(5, 6))) == 4 * 5 * 6


def test_macs_count_cpu_scaled_dot_product_attention() -> None:
    class Attn(nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return F.scaled_dot_product_attention(q, k, v)

    b, h, n, m, d, dv = 2, 3, 17, 11, 8, 4
    q, k, v = torch.randn(b, h, n, d), torch.randn(b, h, m, d), torch.randn(b, h, m, dv)
    expected = b * h * n * m * (d + dv)  # q k^T and (scores) v
    assert profiling.count_macs(Attn(), (q, k, v)) == expected

    # the same count as writing attention out with matmuls
    class Manual(nn.Module):
        def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            return (q @ k.transpose(-2, -1)).softmax(-1) @ v

    assert profiling.count_macs(Manual(), (q, k, v)) == expected


def test_count_macs_restores_training_flags() -> None:
    model = _tiny()
    model.train()
    model[1].eval()  # a frozen BatchNorm must stay frozen
    before = model[1].running_mean.clone()
    profiling.count_macs(model, torch.randn(2, 3, 8, 8))
    assert model.training and model[0].training and not model[1].training
    assert torch.equal(before, model[1].running_mean)  # ran in eval mode


@pytest.mark.parametrize(
    ("name", "gmacs"), [("deit_tiny_patch16_224", 1.26), ("deit_base_patch16_224", 17.58)]
)
def test_deit_macs_match_published(name: str, gmacs: float) -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model(name, pretrained=False)
    summary = profiling.profile_summary(model, torch.randn(1, 3, 224, 224))
    assert summary["gmacs"] == pytest.approx(gmacs, rel=0.01)
    assert summary["macs"] == int(summary["gmacs"] * 1e9)
    assert summary["params"] == profiling.count_params(model)


def test_measure_latency_keys_positive() -> None:
    model = _tiny()
    out = profiling.measure_latency(model, torch.randn(2, 3, 8, 8), warmup=1, iters=3)
    assert {"mean_ms", "median_ms", "std_ms"} <= set(out)
    assert out["mean_ms"] > 0 and out["median_ms"] > 0 and out["std_ms"] >= 0
    assert model.training  # restored


def test_measure_throughput_keys_positive() -> None:
    out = profiling.measure_throughput(_tiny(), torch.randn(4, 3, 8, 8), warmup=1, iters=3)
    assert set(out) == {"images_per_s", "batch_size", "ms_per_batch"}
    assert out["batch_size"] == 4 and out["images_per_s"] > 0 and out["ms_per_batch"] > 0
    assert out["images_per_s"] == pytest.approx(4 * 1e3 / out["ms_per_batch"])


def test_measure_with_amp_on_cpu_runs() -> None:
    out = profiling.measure_latency(nn.Linear(16, 16), torch.randn(2, 16), 1, 2, amp=True)
    assert out["median_ms"] > 0


def test_compare_speed_model_against_itself() -> None:
    model = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
    rows = profiling.compare_speed(
        {"a": model, "b": model},
        lambda bs: torch.randn(bs, 64),
        batch_sizes=[1, 8],
        warmup=2,
        iters=5,
        repeats=5,
    )
    assert [(r["model"], r["batch_size"]) for r in rows] == [
        ("a", 1), ("b", 1), ("a", 8), ("b", 8),
    ]  # fmt: skip
    for r in rows:
        assert r["ms_per_batch"] > 0 and r["images_per_s"] > 0
        assert 0.5 <= r["speedup"] <= 2.0
        assert r["time_ratio"] == pytest.approx(1.0 / r["speedup"])
    assert rows[0]["speedup"] == 1.0 and rows[2]["speedup"] == 1.0


def test_compare_speed_reports_the_spread_of_per_round_ratios() -> None:
    small = nn.Linear(64, 64)
    big = nn.Sequential(*[nn.Linear(64, 64) for _ in range(16)])
    rows = profiling.compare_speed(
        {"big": big, "small": small}, lambda bs: torch.randn(bs, 64), [32], 1, 3, 4
    )
    base, fast = rows
    assert base["speedup_rounds"]["min"] == base["speedup_rounds"]["max"] == 1.0
    q = fast["speedup_rounds"]
    assert q["rounds"] == 4 and len(fast["round_ms"]) == 4
    assert q["min"] <= q["median"] <= q["max"] and q["low"] <= q["mean"] <= q["high"]
    # the per-round ratios are the paired times, round by round
    ratios = [b / s for b, s in zip(base["round_ms"], fast["round_ms"], strict=True)]
    assert q["min"] == pytest.approx(min(ratios)) and q["max"] == pytest.approx(max(ratios))
    assert q["median"] > 2  # 16 layers against one
