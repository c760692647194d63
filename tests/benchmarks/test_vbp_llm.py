"""The VBP language-model benchmark: Torch-Pruning's scores of LLaMA's gated and GPT-2's
Conv1D MLPs against their definitions, the cache and results names of the presets, and whole
--quick runs for both architectures (every method row, finite perplexities, the expected
number of neurons, the CPU speed spread)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import vbp_llm as bench
from benchmarks.common import REPO
from vbp_cli.mlps import find_mlps, weight_matrix

pytest.importorskip("torch_pruning")

VOCAB = 97


def _tiny(preset: str) -> torch.nn.Module:
    return bench.build_lm(bench.PRESETS[preset], VOCAB).eval()


def _windows(n: int = 20, seq_len: int = 16) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, seq_len), generator=torch.Generator().manual_seed(0))


def _normalised(per_layer: list[torch.Tensor]) -> torch.Tensor:
    # Torch-Pruning reduces a group's layers to one score per channel and divides by the
    # mean: a sum or a mean over layers gives the same normalised scores
    s = torch.stack(per_layer).double().sum(0)
    return s / s.mean()


@pytest.mark.parametrize("preset", ["quick", "gpt2-quick"])
def test_torch_pruning_magnitude_is_the_group_l2_of_each_neuron(preset: str) -> None:
    model = _tiny(preset)
    scores = bench.tp_scores(model, "GroupMagnitudeImportance", _windows(), torch.device("cpu"))
    refs = find_mlps(model)
    assert list(scores) == [r.name for r in refs]
    for ref in refs:
        # every input layer's rows and the down projection's columns, as (out, in) matrices,
        # so GPT-2's transposed Conv1D weights are read the right way round
        per_layer = [weight_matrix(x).square().sum(1) for x in ref.input_layers]
        per_layer.append(weight_matrix(ref.down_layer).square().sum(0))
        assert scores[ref.name].shape == (ref.hidden,)
        torch.testing.assert_close(scores[ref.name], _normalised(per_layer), rtol=1e-5, atol=0)


def _grad(layer: torch.nn.Module) -> torch.Tensor:
    """The weight's gradient as an (out, in) matrix, like `weight_matrix`."""
    g = layer.weight.grad
    return g.t() if type(layer).__name__ == "Conv1D" else g


@pytest.mark.parametrize("preset", ["quick", "gpt2-quick"])
def test_torch_pruning_taylor_uses_the_lm_gradients(preset: str) -> None:
    model = _tiny(preset)
    calib = _windows()
    model.zero_grad()
    for batch in calib.split(16):
        bench.lm_loss(model, batch).backward()
    expected = {}
    for ref in find_mlps(model):
        per_layer = [(weight_matrix(x) * _grad(x)).abs().sum(1) for x in ref.input_layers]
        per_layer.append((weight_matrix(ref.down_layer) * _grad(ref.down_layer)).abs().sum(0))
        expected[ref.name] = _normalised(per_layer)
    scores = bench.tp_scores(model, "GroupTaylorImportance", calib, torch.device("cpu"))
    assert all(p.grad is None for p in model.parameters())  # cleared after scoring
    for name, want in expected.items():
        torch.testing.assert_close(scores[name], want, rtol=1e-4, atol=0)
        assert scores[name].std() > 0  # gradients reached the copies


def test_cache_and_results_names_keep_architectures_and_step_counts_apart() -> None:
    names = {bench.cache_name(p, "pydoc") for p in bench.PRESETS}
    assert len(names) == len(bench.PRESETS)
    for p, spec in bench.PRESETS.items():
        assert bench.cache_name(p, "pydoc").startswith(spec["arch"] + "-")
    assert bench.cache_name("llama-16m", "pydoc", 750) == "llama-16m-pydoc"  # the preset's own
    assert bench.run_name("llama-16m", 3000) == "llama-16m-3000steps"  # the GPU run's file
    assert bench.cache_name("llama-16m", "pydoc", 2000) == "llama-16m-2000steps-pydoc"
    assert bench.run_name("gpt2-16m", 2000) == "gpt2-16m-2000steps"
    assert set(bench.QUICK) == {s["arch"] for s in bench.PRESETS.values()}


def test_validation_windows_are_carved_from_the_training_part_only() -> None:
    ids = torch.arange(128 * 400)
    train, none = bench.training_windows(ids, 128, select=False)
    assert none is None
    fit, val = bench.training_windows(ids, 128, select=True)
    test = bench.split_windows(ids, 128, "test")
    assert torch.equal(torch.cat([fit, val]), train)  # the end of the training part
    assert val.shape[0] == max(16, int(train.shape[0] * bench.VAL_SHARE))
    assert int(val.max()) < int(test.min())  # the test tail is untouched
    assert bench.run_name("llama-10m", 1500, select=True) == "llama-10m-1500steps-val"
    assert bench.cache_name("llama-10m", "pydoc", None, True) == "llama-10m-val-pydoc"


def test_select_on_val_keeps_the_checkpoint_with_the_lowest_validation_perplexity(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tiny training with --select-on-val whose validation score is scripted to be lowest
    at the 5th of 20 evaluations (a real tiny run keeps improving): the saved model holds
    the weights of that step, not the last, and the results record that step and curve."""
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path))
    scripted = [5.0 - 0.1 * i for i in range(5)] + [4.7 + 0.01 * i for i in range(15)]
    seen: list[dict[str, torch.Tensor]] = []

    def scored(model: torch.nn.Module, windows: torch.Tensor, **_: object) -> torch.Tensor:
        seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return torch.full((windows.shape[0],), scripted[len(seen) - 1], dtype=torch.float64)

    monkeypatch.setattr(bench, "window_nll", scored)
    p = dict(bench.PRESETS["quick"], steps=40)
    text = bench.corpus("pydoc")[:30_000]
    folder, info = bench.train_lm("quick", p, torch.device("cpu"), "pydoc", text, select=True)
    v = info["validation"]
    assert folder.name == "llama-quick-40steps-val-pydoc"
    assert [step for step, _ in v["curve"]] == list(range(2, 41, 2)) and len(seen) == 20
    assert v["best_step"] == 10 and v["best_perplexity"] == round(math.exp(4.6), 3)
    saved = AutoModelForCausalLM.from_pretrained(folder).state_dict()
    for name, weight in seen[4].items():
        assert torch.equal(saved[name], weight), name
    assert not all(torch.equal(saved[k], w) for k, w in seen[-1].items())
    assert "checkpoint of step 10" in bench.validation_text(info)


def _run_quick(tmp_path: Path, *extra: str) -> dict:
    env = {
        **os.environ,
        "TOOLKIT_RESULTS_DIR": str(tmp_path / "results"),
        "TOOLKIT_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "benchmarks.vbp_llm", "--quick", "--allow-dirty"]
    cmd += ["--speed-repeats", "3", "--kd-steps", "5", "--test-windows", "64", *extra]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    path = Path(done.stdout.strip().splitlines()[-1])
    assert path.is_file() and path.with_suffix(".json").is_file()
    assert path.parent == tmp_path / "results" / "vbp"
    return {**json.loads(path.with_suffix(".json").read_text()), "results_name": path.stem}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "preset", "arch"),
    [((), "quick", "llama"), (("--preset", "gpt2-10m", "--device", "auto"), "gpt2-quick", "gpt2")],
)
def test_quick_run_writes_every_method_at_the_expected_width(
    tmp_path: Path, extra: tuple[str, ...], preset: str, arch: str
) -> None:
    data = _run_quick(tmp_path, *extra)
    assert data["results_name"] == f"vbp_llm_{preset}"
    assert (data["preset"], data["architecture"]) == (preset, arch)
    if not torch.cuda.is_available():
        assert data["device"] == "cpu"  # --device auto falls back to the CPU here
    assert data["torch_pruning"]["refused"] == {}
    assert math.isfinite(data["dense"]["perplexity"])
    methods = [*bench.METHODS, *bench.TP_METHODS]
    rows = {(r["method"], r["ratio"]): r for r in data["rows"]}
    assert set(rows) == {(m, q) for m in methods for q in (0.2, 0.5)}
    for (_, ratio), r in rows.items():
        total = r["neurons_dense"]
        assert total == 2 * bench.PRESETS[preset]["inter"]
        assert r["neurons"] == total - round(ratio * total)  # one global ranking, exact count
        assert math.isfinite(r["perplexity"]) and r["perplexity_low"] <= r["perplexity"]
        if ratio == 0.5:
            assert math.isfinite(r["kd"]["perplexity"])
    assert {p["method"] for p in data["paired_vs_vbp"]} == set(methods) - {"VBP"}
    speed = {r["model"]: r for r in data["speed"]}
    assert list(speed) == ["dense", "VBP 50%", "VBP 50% uniform"]
    for r in speed.values():
        assert r["threads"] == 1 and r["prefill_tok_s"] > 0 and r["decode_tok_s"] > 0
        for key in ("prefill_speedup", "decode_speedup"):
            spread = r[key]
            assert spread["rounds"] == 3 and spread["min"] <= spread["median"] <= spread["max"]
    assert speed["dense"]["decode_speedup"]["median"] == 1.0
