"""The `vbp` commands end to end: in process through the typer app (`run_cli`), and through
the installed console script where a real process is needed (signals, torchrun)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import BIN, CliResult, run_cli, tool_path

ARCH = {"img_size": 32, "patch_size": 4, "num_classes": 10, "depth": 3, "num_heads": 2}
KW = json.dumps({**ARCH, "embed_dim": 48})
MODEL = ["--model", "vit_tiny_patch16_224", "--model-kwargs", KW, "--checkpoint", "weights.pth"]
FINETUNE = ["finetune", "--model", "pruned", "--data", "builtin:digits"]  # the pipeline's model


def vbp(*args: str, cwd: Path) -> CliResult:
    """`vbp args...` in this process."""
    return run_cli("vbp", *args, cwd=cwd)


def vbp_json(*args: str, cwd: Path) -> dict:
    """The metrics of `vbp args... --json`, which must succeed."""
    res = vbp(*args, "--json", cwd=cwd)
    assert res.code == 0, res.stderr
    return json.loads(res.stdout)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """collect-stats -> prune on a small random ViT with real digits images."""
    root = tmp_path_factory.mktemp("vbp")
    import timm

    torch.manual_seed(3)
    torch.save(
        timm.create_model("vit_tiny_patch16_224", **json.loads(KW)).state_dict(),
        root / "weights.pth",
    )
    stats = vbp_json(
        "collect-stats", *MODEL, "--data", "builtin:digits", "--batches", "4", "--batch-size", "32",
        "--out", "stats", cwd=root,
    )  # fmt: skip
    assert stats["samples_per_neuron"] == 4 * 32 * 65 and stats["mlps"] == 3
    report = vbp_json(
        "prune", *MODEL, "--stats", "stats", "--ratio", "0.5", "--out", "pruned", cwd=root
    )
    assert report["macs_after"] < report["macs_before"]
    assert sum(report["widths_after"].values()) == 3 * 192 // 2
    assert (root / "pruned" / "model.safetensors").exists()
    return root


def test_evaluate_json_keys(pipeline: Path) -> None:
    out = vbp_json(
        "evaluate", "--model", "pruned", "--data", "builtin:digits", "--teacher",
        "vit_tiny_patch16_224", "--no-speed", cwd=pipeline,
    )  # fmt: skip
    assert {"top1", "top5", "params", "macs", "teacher_agreement"} <= set(out)
    assert out["images"] == 360 and 0 <= out["top1"] <= out["top5"] <= 100


def test_target_macs_reduction(pipeline: Path) -> None:
    out = vbp_json(
        "prune", *MODEL, "--stats", "stats", "--target-macs-reduction", "0.2", "--round-to", "8",
        "--out", "target", cwd=pipeline,
    )  # fmt: skip
    assert 0.2 <= out["macs_reduction"] < 0.23
    assert all(w % 8 == 0 for w in out["widths_after"].values())


def test_export_onnx_matches_torch(pipeline: Path) -> None:
    out = vbp_json("export", "--model", "pruned", "--onnx", "pruned.onnx", cwd=pipeline)
    assert out["max_abs_diff"] < 1e-4 and (pipeline / "pruned.onnx").stat().st_size > 0


def _vit_macs(widths: list[int], dim: int = 48, tokens: int = 65, patch: int = 4) -> int:
    """MACs of the test ViT counted by hand: patch embedding, per block qkv + proj (4 t d^2),
    the two attention matmuls (2 t^2 d) and the MLP (2 t d h), then the head."""
    blocks = sum(4 * tokens * dim * dim + 2 * tokens * tokens * dim + 2 * tokens * dim * h
                 for h in widths)  # fmt: skip
    return (tokens - 1) * 3 * patch * patch * dim + blocks + dim * ARCH["num_classes"]


def test_benchmark_reports_true_counts_and_consistent_timings(pipeline: Path) -> None:
    out = vbp_json(
        "benchmark", *MODEL, "--pruned", "pruned", "-b", "1", "-b", "3", "--repeats", "2",
        "--device", "cpu", cwd=pipeline,
    )  # fmt: skip
    from safetensors.torch import load_file

    widths = json.loads((pipeline / "pruned" / "metrics.json").read_text())["widths_after"]
    counts = out["counts"]
    assert counts["dense"]["macs"] == _vit_macs([192] * 3)
    assert counts["pruned"]["macs"] == _vit_macs(list(widths.values()))
    saved = load_file(pipeline / "pruned" / "model.safetensors")
    pruned_params = sum(t.numel() for t in saved.values())
    dense_params = sum(t.numel() for t in torch.load(pipeline / "weights.pth").values())
    assert counts["pruned"]["params"] == pruned_params < counts["dense"]["params"] == dense_params
    rows = {(r["model"], r["batch_size"]): r for r in out["rows"]}
    assert sorted(rows) == [("dense", 1), ("dense", 3), ("pruned", 1), ("pruned", 3)]
    for (_, batch), r in rows.items():
        assert r["ms_per_batch"] > 0
        assert r["images_per_s"] == pytest.approx(batch * 1e3 / r["ms_per_batch"])
    for batch in (1, 3):
        dense, pruned = rows["dense", batch], rows["pruned", batch]
        assert dense["speedup"] == pytest.approx(1.0)
        assert pruned["speedup"] == pytest.approx(dense["ms_per_batch"] / pruned["ms_per_batch"])


def test_load_model_api_gives_plain_module(pipeline: Path) -> None:
    from vbp_cli import load_model

    model = load_model(pipeline / "pruned")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.slow
def test_two_processes_give_the_same_statistics(pipeline: Path) -> None:
    """torchrun with 2 CPU ranks (Gloo): each rank sees half the images, Chan's merge makes
    the result equal to one process over all of them."""
    args = [
        "collect-stats",
        *MODEL,
        "--data",
        "builtin:digits",
        "--batch-size",
        "60",
        "--device",
        "cpu",
        "--split",
        "val",
    ]
    one = vbp(*args, "--out", "one", cwd=pipeline)
    assert one.code == 0, one.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run(
        [
            str(BIN / "torchrun"),
            "--nproc-per-node",
            "2",
            "--master-port",
            str(29500 + os.getpid() % 1000),
            tool_path("vbp"),
            *args,
            "--out",
            "two",
        ],
        capture_output=True,
        text=True,
        cwd=pipeline,
        env=env,
        timeout=300,
    )
    assert two.returncode == 0, two.stderr
    from vbp_cli.statsfile import load_stats

    a, b = load_stats(pipeline / "one"), load_stats(pipeline / "two")
    assert json.loads((pipeline / "two" / "metrics.json").read_text())["world_size"] == 2
    for name in a:
        assert a[name].count == b[name].count == 360 * 65
        # different batches per process: equal up to the float32 per-batch moments
        torch.testing.assert_close(a[name].mean, b[name].mean, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(a[name].var, b[name].var, rtol=1e-5, atol=1e-7)


def _one_error_line(res: CliResult | subprocess.CompletedProcess) -> str:
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert "Traceback" not in res.stderr, res.stderr
    return lines[-1]


def test_bad_inputs_exit_2_and_leave_nothing(pipeline: Path, tmp_path: Path) -> None:
    # stats collected on a model of another width
    other = json.dumps({**ARCH, "embed_dim": 32})
    res = vbp(
        "collect-stats",
        "--model",
        "vit_tiny_patch16_224",
        "--model-kwargs",
        other,
        "--data",
        "builtin:digits",
        "--batches",
        "1",
        "--out",
        str(tmp_path / "s2"),
        cwd=pipeline,
    )
    assert res.code == 0, res.stderr
    cases = {
        "mismatch": (["--stats", str(tmp_path / "s2"), "--ratio", "0.5"], "do not match"),
        "missing": (["--stats", str(tmp_path / "nope"), "--ratio", "0.5"], "no such file"),
        "ratio": (["--stats", "stats", "--ratio", "1.0"], "--ratio: must be < 1"),
        "negative": (["--stats", "stats", "--ratio", "-0.1"], "--ratio: must be >= 0"),
        "nan": (["--stats", "stats", "--ratio", "nan"], "--ratio: must be a finite number"),
        "target": (
            ["--stats", "stats", "--target-macs-reduction", "1"],
            "--target-macs-reduction: must be < 1",
        ),
        "criterion": (["--stats", "stats", "--ratio", "0.5", "--criterion", "l1"], "variance"),
        "kwargs": (
            ["--stats", "stats", "--ratio", "0.5", "--model-kwargs", "[1]"],
            "--model-kwargs: expected a JSON object",
        ),
        "both": (["--stats", "stats"], "exactly one of"),
    }
    for name, (args, message) in cases.items():
        out = tmp_path / f"out-{name}"
        res = vbp("prune", *MODEL, *args, "--out", str(out), cwd=pipeline)
        assert res.code == 2, (name, res.stderr)
        assert message in _one_error_line(res), (name, res.stderr)
        assert not out.exists(), name
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a checkpoint")
    res = vbp(
        "prune",
        *MODEL,
        "--checkpoint",
        str(corrupt),
        "--stats",
        "stats",
        "--ratio",
        "0.5",
        "--out",
        str(tmp_path / "c"),
        cwd=pipeline,
    )
    assert res.code == 2 and str(corrupt) in _one_error_line(res)
    assert not (tmp_path / "c").exists()
    res = vbp(
        "evaluate",
        "--model",
        str(tmp_path / "missing-dir/"),
        "--data",
        "builtin:digits",
        cwd=pipeline,
    )
    assert res.code == 2 and "no such file" in _one_error_line(res)
    for args, message in [
        (["--lr", "0"], "--lr: must be > 0"),
        (["--batch-size", "0"], "--batch-size: must be >= 1"),
        (["--kd-alpha", "1.5"], "--kd-alpha: must be <= 1"),
    ]:
        out = tmp_path / "ft-bad"
        res = vbp(*FINETUNE, *args, "--out", str(out), cwd=pipeline)
        assert res.code == 2 and message in _one_error_line(res), (args, res.stderr)
        assert not out.exists()


@pytest.mark.slow
def test_finetune_short_run_writes_a_trained_model(pipeline: Path) -> None:
    args = ["--epochs", "0.05", "--batch-size", "16", "--lr", "1e-3", "--device", "cpu"]
    out = vbp_json(*FINETUNE, *args, "--out", "ft-short", cwd=pipeline)
    assert out["steps"] == round(0.05 * (1437 // 16)) and out["final_loss"] > 0
    from safetensors.torch import load_file

    before = load_file(pipeline / "pruned" / "model.safetensors")
    after = load_file(pipeline / "ft-short" / "model.safetensors")
    assert before.keys() == after.keys()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    lines = (pipeline / "ft-short" / "train.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == out["steps"]


@pytest.mark.slow
def test_finetune_killed_and_resumed_matches_uninterrupted(pipeline: Path) -> None:
    common = [
        *FINETUNE,
        "--epochs",
        "0.4",
        "--batch-size",
        "32",
        "--lr",
        "1e-3",
        "--device",
        "cpu",
        "--checkpoint-every",
        "3",
        "--json",
    ]
    # all three runs as processes with one thread each: bitwise equality needs the same
    # float reduction order, which another thread count would change
    one_thread = {"OMP_NUM_THREADS": "1"}
    ref = run_cli("vbp", *common, "--out", "ft-ref", cwd=pipeline, subprocess=True, env=one_thread)
    assert ref.code == 0, ref.stderr
    expected = json.loads(ref.stdout)
    assert expected["steps"] == round(0.4 * (1437 // 32))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [tool_path("vbp"), *common, "--out", "ft-kill"],
        cwd=pipeline,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    state = pipeline / "ft-kill" / "resume.pt"
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    res = run_cli(
        "vbp", *common, "--out", "ft-kill", "--resume", cwd=pipeline, subprocess=True,
        env=one_thread,
    )  # fmt: skip
    assert res.code == 0, res.stderr
    assert "resumed at step" in res.stderr
    from safetensors.torch import load_file

    a = load_file(pipeline / "ft-ref" / "model.safetensors")
    b = load_file(pipeline / "ft-kill" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert json.loads(res.stdout)["top1"] == expected["top1"]


@pytest.mark.slow
def test_pretrained_offline_fails_fast_with_a_way_out(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run(
        [tool_path("vbp"), "evaluate", "--model", "deit_tiny_patch16_224", "--pretrained",
         "--data", "builtin:digits"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120,
    )  # fmt: skip
    assert res.returncode == 1
    line = _one_error_line(res)
    assert "pretrained weights for deit_tiny_patch16_224" in line and "--checkpoint" in line
