"""The `vbp` commands end to end, through the installed console script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import BIN, tool_path

ARCH = {"img_size": 32, "patch_size": 4, "num_classes": 10, "depth": 3, "num_heads": 2}
KW = json.dumps({**ARCH, "embed_dim": 48})
MODEL = ["--model", "vit_tiny_patch16_224", "--model-kwargs", KW, "--checkpoint", "weights.pth"]


def vbp(*args: str, cwd: Path, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [tool_path("vbp"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env=env,
        **kw,
    )


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
    res = vbp(
        "collect-stats",
        *MODEL,
        "--data",
        "builtin:digits",
        "--batches",
        "4",
        "--batch-size",
        "32",
        "--out",
        "stats",
        "--json",
        cwd=root,
    )
    assert res.returncode == 0, res.stderr
    stats = json.loads(res.stdout)
    assert stats["samples_per_neuron"] == 4 * 32 * 65 and stats["mlps"] == 3
    res = vbp(
        "prune", *MODEL, "--stats", "stats", "--ratio", "0.5", "--out", "pruned", "--json", cwd=root
    )
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["macs_after"] < report["macs_before"]
    assert sum(report["widths_after"].values()) == 3 * 192 // 2
    assert (root / "pruned" / "model.safetensors").exists()
    return root


def test_evaluate_json_keys(pipeline: Path) -> None:
    res = vbp(
        "evaluate",
        "--model",
        "pruned",
        "--data",
        "builtin:digits",
        "--teacher",
        "vit_tiny_patch16_224",
        "--no-speed",
        "--json",
        cwd=pipeline,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert {"top1", "top5", "params", "macs", "teacher_agreement"} <= set(out)
    assert out["images"] == 360 and 0 <= out["top1"] <= out["top5"] <= 100


def test_target_macs_reduction(pipeline: Path) -> None:
    res = vbp(
        "prune",
        *MODEL,
        "--stats",
        "stats",
        "--target-macs-reduction",
        "0.2",
        "--round-to",
        "8",
        "--out",
        "target",
        "--json",
        cwd=pipeline,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert 0.2 <= out["macs_reduction"] < 0.23
    assert all(w % 8 == 0 for w in out["widths_after"].values())


def test_export_onnx_matches_torch(pipeline: Path) -> None:
    res = vbp("export", "--model", "pruned", "--onnx", "pruned.onnx", "--json", cwd=pipeline)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["max_abs_diff"] < 1e-4 and (pipeline / "pruned.onnx").stat().st_size > 0


def test_benchmark_runs_both_models(pipeline: Path) -> None:
    res = vbp(
        "benchmark",
        *MODEL,
        "--pruned",
        "pruned",
        "-b",
        "2",
        "--repeats",
        "1",
        "--json",
        cwd=pipeline,
    )
    assert res.returncode == 0, res.stderr
    rows = json.loads(res.stdout)["rows"]
    assert [r["model"] for r in rows] == ["dense", "pruned"] and rows[1]["speedup"] > 0


def test_load_model_api_gives_plain_module(pipeline: Path) -> None:
    from vbp_cli import load_model

    model = load_model(pipeline / "pruned")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


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
    assert one.returncode == 0, one.stderr
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


def _one_error_line(res: subprocess.CompletedProcess) -> str:
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
    assert res.returncode == 0, res.stderr
    cases = {
        "mismatch": (["--stats", str(tmp_path / "s2"), "--ratio", "0.5"], "do not match"),
        "missing": (["--stats", str(tmp_path / "nope"), "--ratio", "0.5"], "no such file"),
        "ratio": (["--stats", "stats", "--ratio", "1.5"], "[0, 1)"),
        "negative": (["--stats", "stats", "--ratio", "-0.1"], "[0, 1)"),
        "both": (["--stats", "stats"], "exactly one of"),
    }
    for name, (args, message) in cases.items():
        out = tmp_path / f"out-{name}"
        res = vbp("prune", *MODEL, *args, "--out", str(out), cwd=pipeline)
        assert res.returncode == 2, (name, res.stderr)
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
    assert res.returncode == 2 and str(corrupt) in _one_error_line(res)
    assert not (tmp_path / "c").exists()
    res = vbp(
        "evaluate",
        "--model",
        str(tmp_path / "missing-dir/"),
        "--data",
        "builtin:digits",
        cwd=pipeline,
    )
    assert res.returncode == 2 and "no such file" in _one_error_line(res)


def test_finetune_killed_and_resumed_matches_uninterrupted(pipeline: Path) -> None:
    common = [
        "finetune",
        "--model",
        "pruned",
        "--data",
        "builtin:digits",
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
    ref = vbp(*common, "--out", "ft-ref", cwd=pipeline)
    assert ref.returncode == 0, ref.stderr
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
    res = vbp(*common, "--out", "ft-kill", "--resume", cwd=pipeline)
    assert res.returncode == 0, res.stderr
    assert "resumed at step" in res.stderr
    from safetensors.torch import load_file

    a = load_file(pipeline / "ft-ref" / "model.safetensors")
    b = load_file(pipeline / "ft-kill" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert json.loads(res.stdout)["top1"] == expected["top1"]


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
