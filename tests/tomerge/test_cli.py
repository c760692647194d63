"""The `tomerge` commands on a tiny Stable Diffusion pipeline saved to disk (real CLIP
tokenizer vocabulary, random weights). In-process for speed, plus the console script once."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.images import load_image
from tests.helpers import tool_path

FAST = ["--steps", "3", "--height", "16", "--width", "16", "--quiet"]


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tomerge_cli import tiny

    root = tmp_path_factory.mktemp("tomerge")
    tiny.tiny_sd(tokenizer_dir=root / "tok").save_pretrained(root / "pipe")
    return root / "pipe"


def tomerge(*args: str, capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    from shared.cli import run_app
    from tomerge_cli.cli import app

    try:
        run_app(app, [str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_writes_images_and_timings(pipe_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "gen"
    code, stdout, err = tomerge(
        "generate", "--pipeline", pipe_dir, "--prompt", "a red cube", "--prompt", "a dog",
        "--ratio", "0.5", "--out", out, "--json", *FAST, capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads(stdout)
    assert metrics["images"] == 2 and len(metrics["seconds_each"]) == 2
    assert metrics["merge_stats"]["merged_calls"] > 0
    assert metrics["merge_stats"]["partitions"]["importance"] >= 1
    assert (out / "generate.json").exists() and (out / "config.yaml").exists()
    assert load_image(out / "images" / "000.png").shape == (3, 16, 16)


def test_mode_none_equals_ratio_zero_and_differs_from_merged(
    pipe_dir: Path, tmp_path: Path, capsys
) -> None:
    images = {}
    for name, extra in {
        "none": ["--mode", "none"],
        "zero": ["--ratio", "0"],
        "merged": ["--ratio", "0.7", "--mode", "tome"],
    }.items():
        code, _, err = tomerge(
            "generate", "--pipeline", pipe_dir, "--prompt", "a cat", "--out", tmp_path / name,
            *extra, *FAST, capsys=capsys,
        )  # fmt: skip
        assert code == 0, err
        images[name] = load_image(tmp_path / name / "images" / "000.png")
    assert torch.equal(images["none"], images["zero"])
    assert not torch.equal(images["none"], images["merged"])


def test_benchmark_compares_all_methods(pipe_dir: Path, tmp_path: Path, capsys) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    out = tmp_path / "bench"
    code, stdout, err = tomerge(
        "benchmark", "--pipeline", pipe_dir, "--prompts", prompts, "--ratio", "0.5",
        "--warmup", "0", "--out", out, "--json", *FAST, capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    rows = json.loads(stdout)["rows"]
    got = {(r["attention"], r["method"]) for r in rows}
    methods = ("unmerged", "tomesd", "tome", "importance")
    assert got == {(a, m) for a in ("sdpa", "math") for m in methods}
    for r in rows:
        if r["method"] == "unmerged":
            assert r["psnr"] is None and r["ssim"] == pytest.approx(1.0)  # inf: identical
        else:
            assert 0 < r["psnr"] < 200 and r["seconds_per_image"] > 0
    assert (out / "grid.png").exists() and "| sdpa | importance |" in (
        out / "benchmark.md"
    ).read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ratio", "0.8"], "--ratio 0.8: must be in [0, 0.75]"),
        (["--ratio", "-0.1"], "must be in [0, 0.75]"),
        (["--mode", "fast"], "--mode fast: use one of"),
        (["--blocks", "x-y"], "7-20 or 0,2,5"),
    ],
)
def test_bad_options_exit_2_with_one_line(
    pipe_dir: Path, tmp_path: Path, capsys, args: list[str], message: str
) -> None:
    out = tmp_path / "bad"
    code, _, err = tomerge(
        "generate", "--pipeline", pipe_dir, "--prompt", "x", "--out", out, *args, *FAST,
        capsys=capsys,
    )  # fmt: skip
    assert code == 2 and message in err
    assert not out.exists()


def test_missing_pipeline_and_prompts_are_bad_input(tmp_path: Path, pipe_dir: Path, capsys) -> None:
    code, _, err = tomerge(
        "generate", "--pipeline", tmp_path, "--prompt", "x", "--out", tmp_path / "o",
        capsys=capsys,
    )  # fmt: skip
    assert code == 2 and "no model_index.json" in err
    code, _, err = tomerge(
        "generate", "--pipeline", pipe_dir, "--out", tmp_path / "o2", capsys=capsys
    )
    assert code == 2 and "--prompt TEXT or --prompts FILE" in err
    assert not (tmp_path / "o2").exists()


def test_evaluate_offline_names_the_weight_files(pipe_dir: Path, tmp_path: Path, capsys) -> None:
    from shared.images import save_image

    ref = tmp_path / "ref"
    for i in range(2):
        save_image(torch.rand(3, 16, 16), ref / f"{i}.png")
    code, _, err = tomerge(
        "evaluate", "--pipeline", pipe_dir, "--prompt", "x", "--reference", ref,
        "--out", tmp_path / "ev", *FAST, capsys=capsys,
    )  # fmt: skip
    assert code == 2
    assert "--inception-weights weights-inception-2015-12-05-6726825d.pth" in err
    assert not (tmp_path / "ev").exists()
    code, _, err = tomerge(
        "evaluate", "--pipeline", pipe_dir, "--prompt", "x", "--reference", ref,
        "--inception-weights", tmp_path / "missing.pth", "--out", tmp_path / "ev", *FAST,
        capsys=capsys,
    )  # fmt: skip
    assert code == 2 and "missing.pth: file not found" in err


def test_console_script_help_and_bad_ratio() -> None:
    res = subprocess.run(
        [tool_path("tomerge"), "generate", "--pipeline", "x", "--prompt", "x", "--ratio", "0.9",
         "--out", "/nonexistent/never"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("tomerge: error: --ratio 0.9")
    help_ = subprocess.run([tool_path("tomerge"), "--help"], capture_output=True, text=True)
    assert help_.returncode == 0 and "generate" in help_.stdout and "benchmark" in help_.stdout


def _random_fid_inception(path: Path) -> Path:
    """torch-fidelity's FID Inception v3 with random weights, saved in its file format (the
    real weights are a download; the code path that reads the file is the same)."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    real_load = fe.FeatureExtractorInceptionV3.load_state_dict
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(fe, "load_state_dict_from_url", lambda *a, **k: {})
        mp.setattr(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None)
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    assert fe.FeatureExtractorInceptionV3.load_state_dict is real_load
    torch.save(model.state_dict(), path)
    return path


def _random_clip_model(directory: Path) -> Path:
    """A tiny transformers CLIPModel + processor (real CLIP vocabulary) saved to a folder."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTextConfig,
        CLIPVisionConfig,
    )

    from tomerge_cli import tiny

    text = CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=2, projection_dim=16)  # fmt: skip
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                              num_attention_heads=2, image_size=32, patch_size=8,
                              projection_dim=16)  # fmt: skip
    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=16
    )
    model = CLIPModel(config)
    processor = CLIPProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32),
        tokenizer=tiny.clip_tokenizer(directory / "tok"),
    )
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def test_evaluate_with_local_metric_weights_reports_fid_and_clip_score(
    pipe_dir: Path, tmp_path: Path, capsys
) -> None:
    from shared.images import save_image

    ref = tmp_path / "ref"
    torch.manual_seed(0)
    for i in range(3):
        save_image(torch.rand(3, 16, 16), ref / f"{i}.png")
    weights = _random_fid_inception(tmp_path / "inception.pth")
    clip_dir = _random_clip_model(tmp_path / "clip")
    code, stdout, err = tomerge(
        "evaluate", "--pipeline", pipe_dir, "--prompt", "a red cube", "--prompt", "a dog",
        "--prompt", "a tree", "--reference", ref, "--inception-weights", weights,
        "--clip-model", clip_dir, "--out", tmp_path / "ev", "--json", *FAST, capsys=capsys,
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads(stdout)
    assert metrics["images"] == 3 and metrics["reference_images"] == 3
    assert np.isfinite(metrics["fid"]) and metrics["fid"] >= 0
    assert 0 <= metrics["clip_score"] <= 100
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["fid"] == metrics["fid"]
