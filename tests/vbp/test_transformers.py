"""vbp on every transformer MLP: gated (SwiGLU) MLPs, GPT-2's Conv1D, Hugging Face
`transformers` models read from folders, language-model text data, and the refusal of MLPs
with anything between the activation and the down projection (GRN, mixture of experts)."""

from __future__ import annotations

import copy
import json
from functools import partial
from pathlib import Path

import pytest
import torch

from tests.helpers import run_cli
from vbp_cli.mlps import find_mlps
from vbp_cli.prune import prune_model
from vbp_cli.stats import NeuronStats, collect_stats

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

TEXT = (
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.\n"
    "Python is a programming language that lets you work quickly and integrate systems.\n"
) * 40


def tiny(family: str, **overrides: object) -> torch.nn.Module:
    """A tiny randomly initialised transformers model (seeded)."""
    torch.manual_seed(0)
    common = dict(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)
    if family == "llama":
        cfg = transformers.LlamaConfig(
            **common, intermediate_size=48, num_key_value_heads=2, max_position_embeddings=64
        )
        cls = transformers.LlamaForCausalLM
    elif family == "qwen2":
        cfg = transformers.Qwen2Config(
            **common, intermediate_size=48, num_key_value_heads=2, max_position_embeddings=64
        )
        cls = transformers.Qwen2ForCausalLM
    elif family == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=96, n_embd=32, n_layer=2, n_head=4, n_positions=64, n_inner=48,
            bos_token_id=0, eos_token_id=0,
        )  # fmt: skip
        cls = transformers.GPT2LMHeadModel
    elif family == "bert":
        cfg = transformers.BertConfig(**common, intermediate_size=48, max_position_embeddings=64)
        cls = transformers.BertForMaskedLM
    elif family == "vit":
        cfg = transformers.ViTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            image_size=16, patch_size=8, num_labels=3,
        )  # fmt: skip
        cls = transformers.ViTForImageClassification
    else:
        raise AssertionError(family)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    model = cls(cfg).eval()
    for p in model.parameters():  # HF init is near-zero: make every weight and bias matter
        torch.nn.init.normal_(p, std=0.1 if p.ndim == 1 else 0.2)
    return model


def swiglu_vit(packed: bool = False) -> torch.nn.Module:
    from timm.layers import GluMlp, SwiGLU
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    mlp = partial(GluMlp, act_layer=torch.nn.SiLU, gate_last=False) if packed else SwiGLU
    return VisionTransformer(
        img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, num_classes=5,
        mlp_layer=mlp,
    ).eval()  # fmt: skip


def inputs(model: torch.nn.Module, n: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    config = getattr(model, "config", None)
    if config is None or config.model_type == "vit":
        size = 32 if config is None else config.image_size
        return torch.randn(n, 3, size, size, generator=gen)
    return torch.randint(0, config.vocab_size, (n, 12), generator=gen)


def out(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        y = model(x)
    return y if isinstance(y, torch.Tensor) else y.logits


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "vit", "swiglu", "glu"])
def test_ratio_zero_leaves_logits_identical(family: str) -> None:
    model = swiglu_vit(family == "glu") if family in ("swiglu", "glu") else tiny(family)
    kinds = {"llama": "gated", "swiglu": "gated", "glu": "packed"}
    assert {ref.kind for ref in find_mlps(model)} == {kinds.get(family, "plain")}
    x = inputs(model)
    before = out(model, x)
    stats = collect_stats(model, [x])
    widths = prune_model(model, stats, 0.0)
    assert torch.equal(out(model, x), before)
    assert all(w == ref.hidden for w, ref in zip(widths.values(), find_mlps(model), strict=True))


def _constant_neurons(model: torch.nn.Module, family: str) -> dict[str, torch.Tensor]:
    """Make three neurons per MLP constant and non-zero over every input; return them."""
    chosen = {}
    with torch.no_grad():
        for i, ref in enumerate(find_mlps(model)):
            idx = torch.tensor([1, 5 + i, 9])
            for layer in ref.input_layers:
                if family == "gpt2":  # Conv1D: weight is (in, out)
                    layer.weight[:, idx] = 0.0
                else:
                    layer.weight[idx] = 0.0
                layer.bias[idx] = torch.tensor([0.8, -0.6, 1.7])
            chosen[ref.name] = idx
    return chosen


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_constant_neurons_are_removed_exactly_with_compensation(family: str) -> None:
    # GPT-2 has biases everywhere; the gated LLaMA MLP gets gate/up biases so that its product
    # act(g) * u can be a non-zero constant, and loses the down bias that vbp must add back
    model = tiny("gpt2") if family == "gpt2" else tiny("llama", mlp_bias=True)
    if family == "llama":
        for ref in find_mlps(model):
            ref.down_layer.bias = None
    chosen = _constant_neurons(model, family)
    x = inputs(model, 3)
    reference = out(model, x)
    stats = collect_stats(model, [x])
    total = sum(ref.hidden for ref in find_mlps(model))
    ratio = 6 / total
    for name, idx in chosen.items():
        assert stats[name].var[idx].max() < 1e-10 and stats[name].mean[idx].abs().min() > 0.05
    plain = copy.deepcopy(model)
    prune_model(model, stats, ratio)
    for ref in find_mlps(model):
        assert ref.hidden == 45
        assert ref.down_layer.bias is not None  # added to the bias-free LLaMA down_proj
    error = (out(model, x) - reference).abs().max()
    assert error < 1e-4
    prune_model(plain, stats, ratio, compensation=False)
    assert (out(plain, x) - reference).abs().max() > max(100 * error, 1e-2)
    if family == "llama":
        assert all(ref.down_layer.bias is None for ref in find_mlps(plain))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_statistics_equal_float64_reference(family: str) -> None:
    model = tiny(family)
    captured: dict[str, list[torch.Tensor]] = {ref.name: [] for ref in find_mlps(model)}
    hooks = [
        ref.down_layer.register_forward_pre_hook(
            lambda m, a, name=ref.name: captured[name].append(a[0].double())
        )
        for ref in find_mlps(model)
    ]
    x = inputs(model, 3)
    mask = torch.ones_like(x)
    mask[0, 8:] = 0  # padding: not samples
    stats = collect_stats(model, [{"input_ids": x, "attention_mask": mask}])
    for h in hooks:
        h.remove()
    for name, chunks in captured.items():
        ref = torch.cat(chunks)[mask.bool()]
        assert stats[name].count == ref.shape[0] == int(mask.sum())
        # per-batch moments come from float32 activations: float32 precision
        torch.testing.assert_close(stats[name].mean, ref.mean(0), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(stats[name].var, ref.var(0, correction=0), rtol=1e-5, atol=1e-7)


def test_gated_pruning_removes_gate_up_rows_and_down_column_together() -> None:
    model = tiny("llama")
    ref = find_mlps(model)[0]
    gate, up, down = (ref.module.gate_proj.weight.clone(), ref.module.up_proj.weight.clone(),
                      ref.module.down_proj.weight.clone())  # fmt: skip
    var = torch.rand(48, dtype=torch.float64)
    stats = {r.name: NeuronStats(10, torch.zeros(48, dtype=torch.float64), var * 10) for r in
             find_mlps(model)}  # fmt: skip
    prune_model(model, stats, 0.25, uniform=True, compensation=False)
    kept = torch.sort(torch.argsort(var, descending=True)[:36]).values
    mlp = find_mlps(model)[0].module
    assert torch.equal(mlp.gate_proj.weight, gate[kept])
    assert torch.equal(mlp.up_proj.weight, up[kept])
    assert torch.equal(mlp.down_proj.weight, down[:, kept])


# -- folders and the command line ------------------------------------------------------------
def write_folder(model: torch.nn.Module, folder: Path, text: str = TEXT) -> Path:
    """save_pretrained plus a small BPE tokenizer trained on `text`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    model.save_pretrained(folder)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=model.config.vocab_size, special_tokens=["<unk>"])
    tok.train_from_iterator([text], trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>")
    fast.save_pretrained(folder)
    return folder


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT)
    return path


def _stats_and_prune(
    folder: Path, text_file: Path, tmp: Path, *flags: str
) -> tuple[Path, dict[str, object]]:
    res = run_cli(
        "vbp", "collect-stats", "--model", str(folder), "--data", f"text:{text_file}",
        "--seq-len", "16", "-b", "4", "--out", str(tmp / "stats"),
    )  # fmt: skip
    assert res.code == 0, res.stderr
    res = run_cli(
        "vbp", "prune", "--model", str(folder), "--stats", str(tmp / "stats"),
        "--ratio", "0.5", "--out", str(tmp / "pruned"), "--json", *flags,
    )  # fmt: skip
    assert res.code == 0, res.stderr
    return tmp / "pruned", json.loads(res.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_uniform_folder_loads_with_from_pretrained(
    family: str, tmp_path: Path, text_file: Path
) -> None:
    from vbp_cli import load_model

    folder = write_folder(tiny(family), tmp_path / "dense")
    pruned, metrics = _stats_and_prune(folder, text_file, tmp_path, "--uniform")
    assert metrics["transformers_loadable"] is True
    ours = load_model(pruned)
    widths = {ref.hidden for ref in find_mlps(ours)}
    assert widths == {24}
    if family == "llama":  # compensation added a down bias: the config says mlp_bias
        assert json.loads((pruned / "config.json").read_text())["mlp_bias"] is True
    theirs = type(ours).from_pretrained(pruned).eval()
    x = inputs(ours)
    torch.testing.assert_close(out(theirs, x), out(ours, x), rtol=0, atol=1e-6)
    # the dense folder and the pruned one both read text and report perplexity
    res = run_cli(
        "vbp", "evaluate", "--model", str(pruned), "--data", f"text:{text_file}",
        "--seq-len", "16", "--json",
    )  # fmt: skip
    assert res.code == 0, res.stderr
    ppl = json.loads(res.stdout)
    assert ppl["perplexity_low"] <= ppl["perplexity"] <= ppl["perplexity_high"]
    assert ppl["windows"] >= 1 and ppl["split"] == "test"


@pytest.mark.slow
def test_global_folder_reloads_and_qwen2_bias_is_reported(tmp_path: Path, text_file: Path) -> None:
    from vbp_cli import load_model

    dense = tiny("qwen2")
    folder = write_folder(dense, tmp_path / "dense")
    pruned, metrics = _stats_and_prune(folder, text_file, tmp_path, "--uniform")
    # Qwen2 has no MLP-bias option in transformers: the compensated folder is vbp-only
    assert metrics["transformers_loadable"] is False and metrics["added_mlp_bias"] is True
    model = load_model(pruned)
    assert all(ref.down_layer.bias is not None for ref in find_mlps(model))
    # a global (non-uniform) selection reloads with vbp, with the widths recorded
    res = run_cli(
        "vbp", "prune", "--model", str(folder), "--stats", str(tmp_path / "stats"),
        "--ratio", "0.5", "--no-compensation", "--out", str(tmp_path / "global"), "--json",
    )  # fmt: skip
    assert res.code == 0, res.stderr
    reloaded = load_model(tmp_path / "global")
    assert [r.down_layer.bias for r in find_mlps(reloaded)] == [None, None]
    assert sum(r.hidden for r in find_mlps(reloaded)) == 48


def test_grn_mlp_is_refused_not_pruned() -> None:
    # ConvNeXt-V2: fc1 -> GELU -> GRN -> fc2 looks like an MLP but is not one
    model = timm.create_model("convnextv2_atto")
    with pytest.raises(ValueError, match="GlobalResponseNormMlp.*grn"):
        find_mlps(model)
    with pytest.raises(ValueError, match="grn"):
        prune_model(model, None, 0.5, criterion="magnitude", compensation=False)


def _one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1, stderr
    return errors[0]


@pytest.mark.slow
def test_grn_model_is_refused_by_the_cli(tmp_path: Path) -> None:
    res = run_cli(
        "vbp", "collect-stats", "--model", "convnextv2_atto", "--data", "builtin:digits",
        "--batches", "1", "-b", "2", "--out", str(tmp_path / "s"),
    )  # fmt: skip
    assert res.code == 2
    assert "GlobalResponseNormMlp" in _one_error_line(res.stderr)


def test_norm_between_product_and_down_is_refused() -> None:
    from timm.layers import SwiGLU

    model = torch.nn.Sequential(SwiGLU(32, 64, norm_layer=torch.nn.LayerNorm))
    with pytest.raises(ValueError, match="norm"):
        find_mlps(model)


class _Scaled(torch.nn.Module):
    """fc1 -> act -> (x 2) -> fc2: parameter-free, but not what vbp would prune."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act, self.fc2 = (
            torch.nn.Linear(8, 16),
            torch.nn.GELU(),
            torch.nn.Linear(16, 8),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(2 * self.act(self.fc1(x)))


def test_parameter_free_op_between_act_and_down_is_refused() -> None:
    with pytest.raises(ValueError, match="sits"):
        find_mlps(torch.nn.Sequential(_Scaled()))


def test_moe_and_unknown_families_are_refused(tmp_path: Path) -> None:
    moe = transformers.Qwen2MoeForCausalLM(
        transformers.Qwen2MoeConfig(
            vocab_size=96, hidden_size=32, intermediate_size=48, moe_intermediate_size=16,
            num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2, num_experts=4,
            num_experts_per_tok=2,
        )
    )  # fmt: skip
    with pytest.raises(ValueError, match="mixture-of-experts"):
        find_mlps(moe)
    (tmp_path / "moe").mkdir()
    moe.config.to_json_file(tmp_path / "moe" / "config.json")
    other = tmp_path / "t5"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "t5"}))
    for folder in (tmp_path / "moe", other):
        res = run_cli(
            "vbp", "prune", "--model", str(folder), "--stats", str(tmp_path), "--ratio", "0.5",
            "--out", str(tmp_path / f"out-{folder.name}"),
        )  # fmt: skip
        assert res.code == 2, res.stderr
        line = _one_error_line(res.stderr)
        assert "LLaMA" in line and "GPT-2" in line


# -- fine-tuning a pruned language model ---------------------------------------------------
# 20 steps of 8 windows of 16 tokens: seconds on a CPU
LM_FINETUNE = ["--seq-len", "16", "-b", "8", "--epochs", "1", "--lr", "1e-3", "--device", "cpu"]


def _train_dense(family: str, folder: Path, text_file: Path) -> Path:
    """A tiny model of `family` trained a little on the text (a teacher that knows something
    for the pruned model to lose and recover), written as a transformers folder."""
    from vbp_cli.text_data import next_token_logits, text_windows, token_nll

    model = tiny(family)
    write_folder(model, folder)
    windows = text_windows(f"text:{text_file}", folder, 16, "train")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(60):
        ids = windows[torch.randint(0, windows.shape[0], (16,), generator=gen)]
        loss = token_nll(next_token_logits(model, ids), ids).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lms(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    """The text, and `make(family, uniform)`: (dense folder, pruned folder) at ratio 0.5,
    each made once for the module."""
    root = tmp_path_factory.mktemp("lm")
    text_file = root / "corpus.txt"
    text_file.write_text(TEXT)
    made: dict[tuple[str, bool], tuple[Path, Path]] = {}

    def make(family: str, uniform: bool) -> tuple[Path, Path]:
        if (family, uniform) not in made:
            dense = root / f"{family}-dense"
            if not dense.exists():
                _train_dense(family, dense, text_file)
            work = root / f"{family}-{'uniform' if uniform else 'global'}"
            work.mkdir()
            flags = ["--uniform"] if uniform else []
            made[family, uniform] = (dense, _stats_and_prune(dense, text_file, work, *flags)[0])
        return made[family, uniform]

    return text_file, make


def _finetune_lm(pruned: Path, text_file: Path, out: Path, *flags: str) -> dict:
    res = run_cli(
        "vbp", "finetune", "--model", str(pruned), "--data", f"text:{text_file}",
        *LM_FINETUNE, "--out", str(out), "--json", *flags,
    )  # fmt: skip
    assert res.code == 0, res.stderr
    return json.loads(res.stdout)


@pytest.mark.slow
@pytest.mark.parametrize(("family", "uniform"), [("llama", True), ("gpt2", False)])
def test_lm_finetune_recovers_the_teacher_and_writes_a_folder_of_the_same_kind(
    family: str, uniform: bool, lms: tuple[Path, object], tmp_path: Path
) -> None:
    from shared.checkpoints import read_metadata
    from vbp_cli import load_model

    text_file, make = lms
    dense, pruned = make(family, uniform)
    ft = tmp_path / "ft"
    metrics = _finetune_lm(pruned, text_file, ft)  # the teacher: the folder prune recorded
    assert metrics["steps"] == 20
    # held-out windows: closer to the teacher's next-token distributions, and a lower
    # perplexity, than right after pruning (which cost something to recover)
    assert metrics["perplexity_before"] > metrics["teacher_perplexity"], metrics
    assert metrics["kl"] < 0.8 * metrics["kl_before"], metrics
    assert metrics["perplexity"] < 0.95 * metrics["perplexity_before"], metrics
    # the same kind of folder as the pruned one: config, weights with the widths, tokenizer
    assert metrics["model"] == str(ft) and (ft / "tokenizer.json").is_file()
    ours, before = load_model(ft), load_model(pruned)
    assert [r.hidden for r in find_mlps(ours)] == [r.hidden for r in find_mlps(before)]
    x = inputs(ours)
    assert not torch.equal(out(ours, x), out(before, x))
    assert metrics["transformers_loadable"] is uniform
    if uniform:
        theirs = type(ours).from_pretrained(ft).eval()
        torch.testing.assert_close(out(theirs, x), out(ours, x), rtol=0, atol=1e-6)
    # evaluate reads it, and scores the same held-out windows the same
    res = run_cli(
        "vbp", "evaluate", "--model", str(ft), "--data", f"text:{text_file}", "--seq-len", "16",
        "--json",
    )  # fmt: skip
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["perplexity"] == pytest.approx(metrics["perplexity"], rel=1e-5)
    # the record of the dense model stays (absolute): a second finetune needs no --teacher
    assert read_metadata(ft / "model.safetensors")["source"]["model"] == str(dense.resolve())


@pytest.mark.slow
def test_lm_finetune_stopped_and_resumed_gives_the_same_weights(
    lms: tuple[Path, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    from shared.runs import Run

    text_file, make = lms
    _, pruned = make("gpt2", False)  # GPT-2 has dropout: the RNG state must resume too
    args = ("--checkpoint-every", "0", "--kd-alpha", "1")
    expected = _finetune_lm(pruned, text_file, tmp_path / "ref", *args)
    step_done = Run.step_done

    def stop_after_step_7(run: Run, step: int, make_state: object) -> None:
        if step == 7:  # as SIGTERM does: save the state after this step and exit 75
            run.request_stop("SIGTERM")
        step_done(run, step, make_state)

    monkeypatch.setattr(Run, "step_done", stop_after_step_7)
    res = run_cli(
        "vbp", "finetune", "--model", str(pruned), "--data", f"text:{text_file}", *LM_FINETUNE,
        "--out", str(tmp_path / "stopped"), *args,
    )  # fmt: skip
    assert res.code == 75, res.stderr
    monkeypatch.undo()
    resumed = _finetune_lm(pruned, text_file, tmp_path / "stopped", *args, "--resume")
    a = load_file(tmp_path / "ref" / "model.safetensors")
    b = load_file(tmp_path / "stopped" / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for key in ("final_loss", "perplexity", "perplexity_before", "kl"):
        assert resumed[key] == expected[key], key


def test_finetune_refuses_data_of_the_other_kind(tmp_path: Path, text_file: Path) -> None:
    """Image data for a language model, text data for an image model (or for a text model that
    is no causal LM): exit 2, one line, before any model is loaded; nothing left in --out."""
    from vbp_cli import save_model
    from vbp_cli.models import Architecture

    kwargs = {"img_size": 32, "patch_size": 8, "depth": 1, "num_classes": 3}
    vit = timm.create_model("vit_tiny_patch16_224", **kwargs)
    image_model = tmp_path / "vit.safetensors"
    save_model(vit, Architecture("vit_tiny_patch16_224", kwargs), image_model)
    gpt2 = write_folder(tiny("gpt2"), tmp_path / "gpt2")
    bert = write_folder(tiny("bert"), tmp_path / "bert")
    for model, data, message in (
        (gpt2, "builtin:digits", "gpt2 text model: give it text (--data text:PATH)"),
        (image_model, f"text:{text_file}", "text data needs a causal language model"),
        (bert, f"text:{text_file}", "bert is not one"),
    ):
        ft = tmp_path / f"ft-{model.stem}"
        res = run_cli("vbp", "finetune", "--model", str(model), "--data", data, "--out", str(ft))
        assert res.code == 2, res.stderr
        assert message in _one_error_line(res.stderr)
        assert not ft.exists()
