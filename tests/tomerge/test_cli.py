"""The `tomerge` commands and their API on tiny pipelines built from configs (real CLIP
tokenizer vocabulary, random weights). In-process; the console script once (slow)."""

from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from shared.errors import InputError
from shared.images import load_image
from tests.helpers import run_cli

FAST = ["--steps", "3", "--height", "16", "--width", "16", "--quiet"]


@pytest.fixture(scope="module")
def pipe_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tomerge_cli import tiny

    root = tmp_path_factory.mktemp("tomerge")
    tiny.tiny_sd(tokenizer_dir=root / "tok").save_pretrained(root / "pipe")
    return root / "pipe"


@pytest.fixture(scope="module")
def sd_pipe(tmp_path_factory: pytest.TempPathFactory):
    from tomerge_cli import tiny

    pipe = tiny.tiny_sd(tokenizer_dir=tmp_path_factory.mktemp("tok"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tomerge(*args: str | Path) -> tuple[int, str, str]:
    res = run_cli("tomerge", *args)
    return res.code, res.stdout, res.stderr


class FakeClock:
    """A perf_counter whose every generation lasts the set duration of the method the
    pipeline is patched with right now (generate reads the clock once before, once after)."""

    SECONDS = {"unmerged": 8.0, "tomesd": 5.0, "tome": 4.0, "importance": 2.0}

    def __init__(self, pipe) -> None:
        self.pipe, self.now, self.calls = pipe, 100.0, 0
        self.timed: dict[str, int] = {}

    def method(self) -> str:
        from tomerge_cli import get_merger

        merger = get_merger(self.pipe)
        if merger is not None:
            return merger.settings.mode
        tomesd = any(type(m).__name__ == "ToMeBlock" for m in self.pipe.unet.modules())
        return "tomesd" if tomesd else "unmerged"

    def __call__(self) -> float:
        self.calls += 1
        if self.calls % 2 == 0:  # the end of a generation
            name = self.method()
            self.now += self.SECONDS[name]
            self.timed[name] = self.timed.get(name, 0) + 1
        return self.now


def test_benchmark_reports_the_clock_durations_and_their_ratio(sd_pipe) -> None:
    from tomerge_cli import api

    clock = FakeClock(sd_pipe)
    cfg = api.BenchmarkOptions(
        pipeline="(in memory)", prompt=["a cat", "a dog"], steps=1, height=16, width=16,
        attention=["sdpa"], methods=["tome", "importance"], warmup=1,
    )  # fmt: skip
    metrics = api.benchmark(cfg, pipe=sd_pipe, clock=clock)
    rows = {r["method"]: r for r in metrics["rows"]}
    assert set(rows) == {"unmerged", "tome", "importance"} and not metrics["skipped"]
    for name, row in rows.items():
        assert row["seconds_per_image"] == FakeClock.SECONDS[name]  # the clock's, exactly
        assert row["speedup"] == pytest.approx(
            rows["unmerged"]["seconds_per_image"] / row["seconds_per_image"]
        )
        assert row["repeats"] == 2  # one timed run per prompt; the warm-up is not counted
        assert clock.timed[name] == 2 + 1  # ...but it did run
    assert rows["importance"]["speedup"] == pytest.approx(4.0)
    assert rows["unmerged"]["psnr"] == float("inf")
    assert 0 < rows["tome"]["psnr"] < 200
    assert FakeClock(sd_pipe).method() == "unmerged"  # left unpatched


@pytest.mark.slow
def test_generate_writes_images_and_timings(pipe_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    code, stdout, err = tomerge(
        "generate", "--pipeline", pipe_dir, "--prompt", "a red cube", "--prompt", "a dog",
        "--ratio", "0.5", "--out", out, "--json", *FAST,
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads(stdout)
    assert metrics["images"] == 2 and len(metrics["seconds_each"]) == 2
    assert all(s > 0 for s in metrics["seconds_each"])
    assert metrics["seconds_per_prompt"] == pytest.approx(sum(metrics["seconds_each"]) / 2)
    assert metrics["merge_stats"]["merged_calls"] > 0
    assert metrics["merge_stats"]["partitions"]["importance"] >= 1
    assert (out / "generate.json").exists() and (out / "config.yaml").exists()
    assert load_image(out / "images" / "000.png").shape == (3, 16, 16)
    assert err == ""  # --quiet: no device line, no library bars or advice blocks


@pytest.mark.slow
def test_mode_none_equals_ratio_zero_and_differs_from_merged(
    pipe_dir: Path, tmp_path: Path
) -> None:
    images = {}
    for name, extra in {
        "none": ["--mode", "none"],
        "zero": ["--ratio", "0"],
        "merged": ["--ratio", "0.7", "--mode", "tome"],
    }.items():
        code, _, err = tomerge(
            "generate", "--pipeline", pipe_dir, "--prompt", "a cat", "--out", tmp_path / name,
            *extra, *FAST,
        )  # fmt: skip
        assert code == 0, err
        images[name] = load_image(tmp_path / name / "images" / "000.png")
    assert torch.equal(images["none"], images["zero"])
    assert not torch.equal(images["none"], images["merged"])


@pytest.mark.slow
def test_benchmark_command_compares_all_methods(pipe_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    out = tmp_path / "bench"
    code, stdout, err = tomerge(
        "benchmark", "--pipeline", pipe_dir, "--prompts", prompts, "--ratio", "0.5",
        "--warmup", "0", "--out", out, "--json", *FAST,
    )  # fmt: skip
    assert code == 0, err
    rows = json.loads(stdout)["rows"]
    got = {(r["attention"], r["method"]) for r in rows}
    methods = ("unmerged", "tomesd", "tome", "importance")
    assert got == {(a, m) for a in ("sdpa", "math") for m in methods}
    for attention in ("sdpa", "math"):
        mine = {r["method"]: r for r in rows if r["attention"] == attention}
        base = mine["unmerged"]["seconds_per_image"]
        for r in mine.values():
            assert r["seconds_per_image"] > 0 and r["repeats"] == 2
            assert r["speedup"] == pytest.approx(base / r["seconds_per_image"])
    for r in rows:
        if r["method"] == "unmerged":
            assert r["psnr"] is None and r["ssim"] == pytest.approx(1.0)  # inf: identical
        else:
            assert 0 < r["psnr"] < 200
    saved = json.loads((out / "benchmark.json").read_text())
    assert saved["rows"] == rows
    assert (out / "grid.png").exists() and "| sdpa | importance |" in (
        out / "benchmark.md"
    ).read_text()


def test_pipelines_without_unet_skip_tomesd_with_the_reason(tmp_path: Path) -> None:
    """Issue #17: un-patching called tomesd on PixArt (no unet) and crashed."""
    from tomerge_cli import api, get_merger, tiny

    pipe = tiny.tiny_pixart(layers=4)
    api.apply_method(pipe, "none", 0.5, {})  # the crash was here
    api.apply_method(pipe, "tome", 0.5, {})
    assert get_merger(pipe) is not None
    api.apply_method(pipe, "none", 0.5, {})
    assert get_merger(pipe) is None
    why = api.tomesd_unavailable(pipe)
    assert why is not None and "UNet pipelines only" in why and "PixArtAlphaPipeline" in why
    with pytest.raises(InputError, match="UNet pipelines only"):
        api.apply_method(pipe, "tomesd", 0.5, {})


@pytest.mark.slow
def test_benchmark_on_pixart_skips_tomesd_row(tmp_path: Path) -> None:
    from tomerge_cli import tiny

    tiny.tiny_pixart(layers=4, tokenizer_dir=tmp_path / "tok").save_pretrained(tmp_path / "pix")
    code, stdout, err = tomerge(
        "benchmark", "--pipeline", tmp_path / "pix", "--prompt", "a cat", "--warmup", "0",
        "--attention", "sdpa", "--out", tmp_path / "bench", "--json", "--steps", "2",
        "--height", "16", "--width", "16",
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads(stdout)
    assert [r["method"] for r in metrics["rows"]] == ["unmerged", "tome", "importance"]
    assert "UNet pipelines only" in metrics["skipped"]["tomesd"]
    assert "tomesd skipped: tomesd supports UNet pipelines only" in err
    assert "Traceback" not in err
    assert "tomesd skipped" in (tmp_path / "bench" / "benchmark.md").read_text()


def test_loading_a_pipeline_prints_no_library_chatter(pipe_dir: Path) -> None:
    """diffusers' loading bars and its accelerate advice block must not land in our output."""
    from tomerge_cli.pipelines import load_pipeline

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("diffusers").addHandler(handler)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            pipe = load_pipeline(str(pipe_dir), torch.device("cpu"))
    finally:
        logging.getLogger("diffusers").removeHandler(handler)
    assert [r.getMessage()[:60] for r in records if r.levelno < logging.ERROR] == []
    assert "Loading pipeline components" not in err.getvalue() and "%|" not in err.getvalue()
    assert pipe._progress_bar_config.get("disable") is True  # per-step bars too
    from diffusers.utils import logging as dlog

    assert dlog.is_progress_bar_enabled()  # restored afterwards


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ratio", "0.8"], "--ratio: must be <= 0.75, got 0.8"),
        (["--ratio", "-0.1"], "--ratio: must be >= 0"),
        (["--ratio", "nan"], "--ratio: must be a finite number"),
        (["--mode", "fast"], "--mode: 'fast' is not one of importance, tome, none"),
        (["--blocks", "x-y"], "7-20 or 0,2,5"),
        (["--height", "20"], "--height: must be a multiple of 8"),
        (["--width", "4"], "--width: must be >= 8"),
        (["--steps", "0"], "--steps: must be >= 1"),
        (["--guidance", "inf"], "--guidance: must be a finite number"),
        (["--guidance", "-1"], "--guidance: must be >= 0"),
        (["--max-downsample", "3"], "--max-downsample: use 1, 2, 4 or 8"),
        (["--dtype", "int8"], "--dtype: 'int8' is not one of"),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "bad"
    code, _, err = tomerge(
        "generate", "--pipeline", tmp_path / "nothing", "--prompt", "x", "--out", out, *args,
    )  # fmt: skip
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) <= 2 and "Traceback" not in err
    assert not out.exists()


def test_benchmark_refuses_unknown_methods_and_backends(tmp_path: Path) -> None:
    for flag, value in (("--method", "fast"), ("--attention", "flash")):
        code, _, err = tomerge(
            "benchmark", "--pipeline", "x", "--prompt", "x", "--out", tmp_path / "b",
            flag, value,
        )  # fmt: skip
        assert code == 2 and f"{flag}: '{value}' is not one of" in err


def test_api_checks_bounds_without_the_command_line() -> None:
    from tomerge_cli import api

    with pytest.raises(InputError, match="--height: must be a multiple of 8"):
        api.generate(api.GenerateOptions(pipeline="x", prompt=["a"], height=12))
    with pytest.raises(InputError, match="--ratio"):
        api.benchmark(api.BenchmarkOptions(pipeline="x", prompt=["a"], ratio=0.9))
    assert api.parse_blocks("1-3,7") == [1, 2, 3, 7]


def test_missing_pipeline_and_prompts_are_bad_input(tmp_path: Path, pipe_dir: Path) -> None:
    code, _, err = tomerge(
        "generate", "--pipeline", tmp_path, "--prompt", "x", "--out", tmp_path / "o",
    )  # fmt: skip
    assert code == 2 and "no model_index.json" in err
    code, _, err = tomerge("generate", "--pipeline", pipe_dir, "--out", tmp_path / "o2")
    assert code == 2 and "--prompt TEXT or --prompts FILE" in err
    assert not (tmp_path / "o2").exists()


def test_evaluate_offline_names_the_weight_files(pipe_dir: Path, tmp_path: Path) -> None:
    from shared.images import save_image

    ref = tmp_path / "ref"
    for i in range(2):
        save_image(torch.rand(3, 16, 16), ref / f"{i}.png")
    code, _, err = tomerge(
        "evaluate", "--pipeline", pipe_dir, "--prompt", "x", "--reference", ref,
        "--out", tmp_path / "ev", *FAST,
    )  # fmt: skip
    assert code == 2
    assert "--inception-weights weights-inception-2015-12-05-6726825d.pth" in err
    assert not (tmp_path / "ev").exists()
    code, _, err = tomerge(
        "evaluate", "--pipeline", pipe_dir, "--prompt", "x", "--reference", ref,
        "--inception-weights", tmp_path / "missing.pth", "--out", tmp_path / "ev", *FAST,
    )  # fmt: skip
    assert code == 2 and "missing.pth: file not found" in err


@pytest.mark.slow
def test_console_script_help_and_bad_ratio() -> None:
    res = run_cli(
        "tomerge", "generate", "--pipeline", "x", "--prompt", "x", "--ratio", "0.9",
        "--out", "/nonexistent/never", subprocess=True, timeout=120,
    )  # fmt: skip
    assert res.code == 2
    assert res.stderr.strip().splitlines()[-1].startswith("tomerge: error: --ratio: must be <=")
    help_ = run_cli("tomerge", "--help", subprocess=True)
    assert help_.code == 0 and "generate" in help_.stdout and "benchmark" in help_.stdout


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


@pytest.mark.slow
def test_evaluate_with_local_metric_weights_reports_fid_and_clip_score(
    pipe_dir: Path, tmp_path: Path
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
        "--clip-model", clip_dir, "--out", tmp_path / "ev", "--json", *FAST,
    )  # fmt: skip
    assert code == 0, err
    metrics = json.loads(stdout)
    assert metrics["images"] == 3 and metrics["reference_images"] == 3
    assert np.isfinite(metrics["fid"]) and metrics["fid"] >= 0
    assert 0 <= metrics["clip_score"] <= 100
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["fid"] == metrics["fid"]


def test_options_ratio_bound_is_the_algorithms_and_help_needs_no_torch() -> None:
    import subprocess
    import sys

    from tomerge_cli import api, merge

    assert api.MAX_RATIO == merge.MAX_RATIO
    code = "import sys, tomerge_cli.cli; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.strip() == "False", res.stderr
