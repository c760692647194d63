"""VBP on a language model: perplexity right after pruning 10-60% of the MLP neurons of a
LLaMA-architecture causal LM (gated SwiGLU MLPs, bias-free down projections) or a GPT-2 one
(plain GELU MLPs in Conv1D layers with biases), for VBP and the criteria an LLM-pruning user
would otherwise pick, optionally after a short distillation, plus the CPU speed of the pruned
model (prefill and decode tokens/s against dense, always on the CPU).

    python -m benchmarks.vbp_llm                  # ~10 M parameters, about an hour on 1 core
    python -m benchmarks.vbp_llm --steps 1500 --select-on-val --threads 2   # a better LM
    python -m benchmarks.vbp_llm --preset llama-16m --device cuda --select-on-val  # ~16 M, GPU
    python -m benchmarks.vbp_llm --preset gpt2-16m --device cuda --select-on-val   # GPT-2 twin
    python -m benchmarks.vbp_llm --quick          # a tiny run that shows the pipeline works
    python -m benchmarks.vbp_llm --quick --preset gpt2-10m   # the same for GPT-2

Data: English text that ships offline with CPython: the pydoc topics
(`pydoc_data.topics.topics`, the language reference's sections) and the docstrings of the
pure-Python standard library (read with `ast`; tests and idlelib left out), about 1.9 M
characters, documents shuffled with seed 0 (`--corpus pydoc`: the topics only, 0.47 M
characters). Tokenised with a byte-level BPE trained on the first 90% of the text; the last
10% of the token windows are held out and give every perplexity. The trained model is cached
as a transformers folder under $TOOLKIT_CACHE/vbp_llm/<architecture>-<preset>-<corpus> (the
architecture once when the preset's name starts with it), so pruning sweeps reuse it; the
results record the exact token counts and the device.

Methods (the same structure everywhere: whole neurons of every MLP, one global ranking):
VBP (variance + mean-shift compensation into an added down_proj bias), variance without
compensation, FLAP (fluctuation = variance x |down column|^2, with the same compensation),
structured Wanda (|down column| x input norm), magnitude (group L2 norm), random, and
Torch-Pruning's group magnitude and group Taylor importances (scored by Torch-Pruning on each
MLP's dependency group of hidden channels, ranked globally, removed by the same code without
compensation, so the structure is identical). Perplexity intervals are 95% intervals over
held-out windows.

With `--device cuda` training, statistics, scoring, pruning, distillation and perplexity run
on the GPU in fp32 (`--amp`: bf16 autocast in training only); the speed section runs on CPU
copies of the models with `--threads` threads.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import RESULTS, add_common_args, check_tree, markdown_table, write_results
from shared import intervals
from shared.cache import cache_dir
from shared.profiling import count_params, round_order
from shared.train import Trainer, cosine_with_warmup, step_rng
from vbp_cli.mlps import MlpRef, find_mlps
from vbp_cli.prune import NeuronImportance, prune_model
from vbp_cli.stats import collect_stats
from vbp_cli.text_data import perplexity_from_nll, split_windows, tokenize, window_nll

PRESETS: dict[str, dict[str, Any]] = {
    # LLaMA: ~10 M parameters (7 M of them in the MLPs' 8 x 896 neurons): 500 steps of 16 x 128
    # tokens (1 M tokens, under two passes over the training text), ~7 s/step on one core
    "llama-10m": dict(
        arch="llama", vocab=4096, hidden=320, layers=8, heads=5, kv_heads=1, inter=896, seq_len=128,
        steps=500, batch=16, lr=1e-3,
    ),
    # ~16 M parameters (9.4 M of them in the MLPs' 8 x 1024 neurons), sized for a GPU (~13
    # s/step on one core here): 750 steps of 32 x 128 tokens, 3 M tokens (~7 passes), where
    # llama-10m with --select-on-val still improved on validation (best at 1350 of 1500
    # steps of 16). 3000 steps (12 M tokens, ~25 passes) memorised the text on an H200
    # (training loss 0.023, held-out perplexity 398; vbp_llm_llama-16m-3000steps.md); 750 is
    # not run yet: run it with --select-on-val
    "llama-16m": dict(
        arch="llama", vocab=4096, hidden=384, layers=8, heads=6, kv_heads=2, inter=1024,
        seq_len=128, steps=750, batch=32, lr=1e-3,
    ),
    # a seconds-long check of the whole pipeline (--quick)
    "quick": dict(
        arch="llama", vocab=384, hidden=64, layers=2, heads=4, kv_heads=2, inter=128,
        seq_len=32, steps=20, batch=8, lr=3e-3,
    ),
    # GPT-2 (two MLP matrices, not three, so 4x-wide MLPs for similar sizes; no dropout):
    # ~11 M parameters (6.6 M in the MLPs' 8 x 1280 neurons), the steps of llama-10m
    "gpt2-10m": dict(
        arch="gpt2", vocab=4096, hidden=320, layers=8, heads=5, inter=1280, seq_len=128,
        steps=500, batch=16, lr=1e-3,
    ),
    # ~16 M parameters (9.4 M in the MLPs' 8 x 1536 neurons), the steps of llama-16m (3000
    # memorised the text here too: held-out perplexity 727; vbp_llm_gpt2-16m-3000steps.md)
    "gpt2-16m": dict(
        arch="gpt2", vocab=4096, hidden=384, layers=8, heads=6, inter=1536, seq_len=128,
        steps=750, batch=32, lr=1e-3,
    ),
    "gpt2-quick": dict(
        arch="gpt2", vocab=384, hidden=64, layers=2, heads=4, inter=128, seq_len=32,
        steps=20, batch=8, lr=3e-3,
    ),
}  # fmt: skip
QUICK = {"llama": "quick", "gpt2": "gpt2-quick"}  # --quick: the tiny preset of the architecture
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
VAL_SHARE = 0.05  # --select-on-val: the share of the training windows held out for validation
METHODS = {  # name: (criterion, compensation)
    "VBP": ("variance", True),
    "variance, no comp.": ("variance", False),
    "FLAP": ("flap", True),
    "structured Wanda": ("wanda", False),
    "magnitude": ("magnitude", False),
    "random": ("random", False),
}
# Torch-Pruning's criteria (name: importance class), no compensation
TP_METHODS = {
    "TP group magnitude": "GroupMagnitudeImportance",
    "TP group Taylor": "GroupTaylorImportance",
}
TP_NOTE = (
    "Torch-Pruning rows: scores from Torch-Pruning {version} (`{classes}`, default group "
    "reduction and per-group mean normalisation) on the dependency group of each MLP's hidden "
    "channels, traced on that MLP module alone (its hidden channels couple to nothing outside "
    "it: gate/up outputs and down inputs for LLaMA, c_fc outputs and c_proj inputs for GPT-2; "
    "traced on the whole GPT-2, Torch-Pruning 1.6.1 fails at the attention's split of c_attn). "
    "Torch-Pruning has no pruner for transformers' Conv1D, so GPT-2's MLPs are scored on "
    "nn.Linear copies with the same weights and gradients. Taylor: gradients of the LM loss "
    "summed over the calibration windows. One global ranking of the normalised scores (as "
    "Torch-Pruning's global pruning ranks), removed by the same code as every other row, "
    "without compensation. Group Hessian importance is left out: in Torch-Pruning 1.6.1 its "
    "`accumulate_grad` looks up parameter names in a dict keyed by parameters, so every call "
    "replaces the accumulated squared gradients instead of adding to them."
)


def corpus(kind: str = "pydoc+docstrings") -> str:
    """English text that ships with CPython: the pydoc topics (the language reference's
    sections) and, with "+docstrings", the docstrings of the pure-Python standard library
    (modules, classes, functions; read with `ast`, nothing imported; tests and idlelib
    left out). Documents are shuffled with a fixed seed so the held-out tail is a mix."""
    import ast
    import random
    import sysconfig
    from pydoc_data.topics import topics

    docs = [topics[k] for k in sorted(topics)]
    if kind == "pydoc+docstrings":
        root = Path(sysconfig.get_paths()["stdlib"])
        skip = ("test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo")
        for path in sorted(root.rglob("*.py")):
            if any(part in skip for part in path.relative_to(root).parts):
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"))
            except (SyntaxError, UnicodeDecodeError, ValueError):
                continue
            kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, kinds))]
            text = [d for n in nodes if (d := ast.get_docstring(n)) and len(d) > 80]
            if text:
                docs.append("\n\n".join(text))
    random.Random(0).shuffle(docs)
    return "\n\n".join(docs)


def train_tokenizer(text: str, vocab: int) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<unk>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([text], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def build_lm(p: dict[str, Any], vocab: int) -> nn.Module:
    """A freshly initialised causal LM of the preset's architecture (seed 0)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if p["arch"] == "gpt2":
        gpt2 = GPT2Config(
            vocab_size=vocab, n_embd=p["hidden"], n_inner=p["inter"], n_layer=p["layers"],
            n_head=p["heads"], n_positions=p["seq_len"], resid_pdrop=0.0, embd_pdrop=0.0,
            attn_pdrop=0.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
        )  # fmt: skip
        return GPT2LMHeadModel(gpt2)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=p["hidden"], intermediate_size=p["inter"],
        num_hidden_layers=p["layers"], num_attention_heads=p["heads"],
        num_key_value_heads=p["kv_heads"], max_position_embeddings=p["seq_len"],
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def lm_loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=ids).logits
    return nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(), ids[:, 1:].reshape(-1)
    )


def run_name(preset: str, steps: int | None = None, select: bool = False) -> str:
    """The preset's name, with the training steps when `--steps` changed them and "-val"
    when `--select-on-val` chose the checkpoint."""
    name = preset
    if steps is not None and steps != PRESETS[preset]["steps"]:
        name = f"{preset}-{steps}steps"
    return name + ("-val" if select else "")


def cache_name(
    preset: str, corpus_kind: str, steps: int | None = None, select: bool = False
) -> str:
    """The cached model's folder name: architecture, preset (and changed steps, checkpoint
    selection) and corpus, so that two architectures or trainings never share a folder."""
    arch = PRESETS[preset]["arch"]
    name = run_name(preset, steps, select)
    stem = name if preset.startswith(arch) else f"{arch}-{name}"
    return f"{stem}-{corpus_kind}"


def training_windows(
    ids: torch.Tensor, seq_len: int, select: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The training windows (the first 90%) and, with `select`, the validation windows
    carved from their end (VAL_SHARE of them, just before the held-out test tail), which
    then take no part in training, statistics or distillation."""
    train = split_windows(ids, seq_len, "train")
    if not select:
        return train, None
    n_val = max(16, int(train.shape[0] * VAL_SHARE))
    return train[:-n_val], train[-n_val:]


def train_lm(
    preset: str,
    p: dict[str, Any],
    dev: torch.device,
    corpus_kind: str,
    text: str,
    amp: bool = False,
    select: bool = False,
) -> tuple[Path, dict[str, Any]]:
    """Train (or reuse) the LM; returns its folder and what it was trained on. `select`:
    validation perplexity every twentieth of the steps, and the best checkpoint is kept
    (the test windows are never seen)."""
    import json

    from shared.io import write_json

    folder = cache_dir("vbp_llm", cache_name(preset, corpus_kind, p["steps"], select))
    info_path = folder / "training.json"
    if info_path.is_file():
        return folder, json.loads(info_path.read_text())
    cut = int(len(text) * 0.9)  # the tokenizer sees the training text only
    tokenizer = train_tokenizer(text[:cut], p["vocab"])
    ids = tokenize(text, tokenizer)
    train, val = training_windows(ids, p["seq_len"], select)
    model = build_lm(p, len(tokenizer)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=0.1, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, cosine_with_warmup(p["steps"], max(1, p["steps"] // 20))
    )
    trainer = Trainer(p["steps"], device=dev, amp=amp, description=f"train {preset}")
    trainer.track(student=model, opt=opt, sched=sched)
    every = max(1, p["steps"] // 20)
    curve: list[list[float]] = []  # [step, validation perplexity]
    best: dict[str, Any] = {"nll": math.inf, "step": 0, "state": None}

    def step(s: int) -> dict[str, float]:
        rows = step_rng(0, s).integers(0, train.shape[0], p["batch"])
        batch = train[torch.as_tensor(rows)].to(dev)
        with trainer.autocast():
            loss = lm_loss(model, batch)
        trainer.optimize(loss, opt, clip=1.0, scheduler=sched)
        if val is not None and (s % every == 0 or s == p["steps"]):
            nll = float(window_nll(model, val, device=dev).mean())
            model.train()
            curve.append([s, round(math.exp(nll), 3)])
            if nll < best["nll"]:
                state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
                best.update(nll=nll, step=s, state=state)
        return {"loss": float(loss.detach())}

    start = time.perf_counter()
    fit = trainer.fit(step)
    if val is not None:
        model.load_state_dict(best["state"])
    model.cpu().save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    info = {
        "corpus": (
            "pydoc_data.topics.topics"
            + (" + docstrings of the pure-Python stdlib" if "+" in corpus_kind else "")
            + f" (CPython {sys.version.split()[0]}), documents shuffled with seed 0"
        ),
        "characters": len(text),
        "tokens": int(ids.numel()),
        "train_windows": int(train.shape[0]),
        "seq_len": p["seq_len"],
        "params": count_params(model),
        "architecture": p["arch"],
        "device": str(dev) + (" (bf16 autocast)" if trainer.amp else ""),
        "train_seconds": round(time.perf_counter() - start, 1),
        **fit,
    }
    if val is not None:
        info["validation"] = {
            "windows": int(val.shape[0]),
            "every": every,
            "best_step": best["step"],
            "best_perplexity": round(math.exp(best["nll"]), 3),
            "curve": curve,
        }
    write_json(info_path, info)
    return folder, info


def validation_text(info: dict[str, Any]) -> str:
    """How --select-on-val chose the checkpoint, for the results' setup line ("" without)."""
    v = info.get("validation")
    if not v:
        return ""
    curve = ", ".join(f"{int(step)}: {ppl:.1f}" for step, ppl in v["curve"])
    return (
        f", keeping the checkpoint of step {v['best_step']}, the lowest perplexity on "
        f"{v['windows']} validation windows (the end of the training part, not trained on; "
        f"{v['best_perplexity']:.2f}; step: perplexity {curve})"
    )


def distill(
    student: nn.Module,
    teacher: nn.Module,
    train: torch.Tensor,
    steps: int,
    dev: torch.device = torch.device("cpu"),
) -> None:
    """A short logit distillation (KL at T=1) of the pruned model from the dense one; both
    models on `dev`, the windows (on the CPU) drawn there and moved batch by batch."""
    if steps <= 0:
        return
    opt = torch.optim.AdamW(student.parameters(), lr=3e-4, weight_decay=0.0)
    trainer = Trainer(steps, device=dev, description="distill").track(student=student, opt=opt)
    teacher.eval()

    def step(s: int) -> dict[str, float]:
        rows = step_rng(1, s).integers(0, train.shape[0], 16)
        ids = train[torch.as_tensor(rows)].to(dev)
        with torch.no_grad():
            target = teacher(input_ids=ids).logits.float().log_softmax(-1)
        student.train()
        logp = student(input_ids=ids).logits.float().log_softmax(-1)
        loss = nn.functional.kl_div(logp, target, log_target=True, reduction="batchmean")
        trainer.optimize(loss / ids.shape[1], opt, clip=1.0)
        return {"kd": float(loss.detach())}

    trainer.fit(step)
    student.eval()


@torch.no_grad()
def speed(
    models: dict[str, nn.Module], vocab: int, seq_len: int, repeats: int, threads: int = 1
) -> list[dict]:
    """Prefill (one forward over seq_len/2 tokens) and decode (seq_len/2 new tokens one by
    one with the KV cache) tokens/s at batch 1 on the CPU with `threads` threads, on CPU
    copies of the models (the originals stay where they are). After one warm-up call each,
    the models run interleaved in `repeats` rounds whose order rotates, so a slow spell of
    the machine hits all alike; the ratio to dense is taken round by round (median and
    [min, max] of the per-round ratios, `shared.intervals.ratio_spread`)."""
    cpu = {n: copy.deepcopy(m).cpu().eval() for n, m in models.items()}
    ids = torch.randint(0, vocab, (1, seq_len // 2), generator=torch.Generator().manual_seed(0))
    new = seq_len // 2
    names = list(cpu)
    times: dict[str, dict[str, list[float]]] = {n: {"prefill": [], "decode": []} for n in names}
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:

        def run(m: nn.Module) -> tuple[float, float]:
            t0 = time.perf_counter()
            m(input_ids=ids)
            t1 = time.perf_counter()
            m.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
            t2 = time.perf_counter()
            return t1 - t0, max(t2 - t1 - (t1 - t0), 1e-9)  # generate also prefills

        for m in cpu.values():
            run(m)  # warm-up: first-call allocations are not the model's speed
        for r in range(repeats):
            for name in round_order(names, r):
                pre, dec = run(cpu[name])
                times[name]["prefill"].append(pre)
                times[name]["decode"].append(dec)
    finally:
        torch.set_num_threads(old_threads)
    dense = times[names[0]]
    rows = []
    for name, t in times.items():
        rows.append({
            "model": name,
            "prefill_tok_s": ids.shape[1] / statistics.median(t["prefill"]),
            "decode_tok_s": new / statistics.median(t["decode"]),
            "prefill_speedup": intervals.ratio_spread(dense["prefill"], t["prefill"]),
            "decode_speedup": intervals.ratio_spread(dense["decode"], t["decode"]),
            "threads": threads,
        })  # fmt: skip
    return rows


class FixedScores(NeuronImportance):
    """Scores computed beforehand (one tensor per MLP name), for prune_model's ranking."""

    def __init__(self, table: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.table = table

    def scores(self, ref: MlpRef) -> torch.Tensor:
        return self.table[ref.name]


@torch.no_grad()
def _as_linear_mlp(module: nn.Module) -> nn.Module:
    """A copy of an MLP module whose transformers Conv1D layers are nn.Linear layers with the
    same weights, biases and gradients (Torch-Pruning knows Linear, not Conv1D)."""
    sub = copy.deepcopy(module)
    for (_, p), (_, q) in zip(module.named_parameters(), sub.named_parameters(), strict=True):
        q.grad = None if p.grad is None else p.grad.detach().clone()
    for parent in list(sub.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ != "Conv1D":
                continue
            w = child.weight  # (in, out)
            lin = nn.Linear(w.shape[0], w.shape[1], device=w.device, dtype=w.dtype)
            lin.weight.copy_(w.t())
            lin.bias.copy_(child.bias)
            if w.grad is not None:
                lin.weight.grad = w.grad.t().clone()
                lin.bias.grad = child.bias.grad.clone()
            setattr(parent, name, lin)
    return sub


def tp_scores(
    model: nn.Module, importance: str, calib: torch.Tensor, dev: torch.device
) -> dict[str, torch.Tensor]:
    """Torch-Pruning's `importance` of every hidden neuron of every MLP: the dependency
    group rooted at the MLP's first input layer's output channels, traced on the MLP module
    (see TP_NOTE). Taylor scores use the LM loss's gradients summed over `calib` (CPU
    windows, moved to `dev` in batches of 16). The model's gradients are cleared after."""
    import torch_pruning as tp

    imp = getattr(tp.importance, importance)()
    model.zero_grad(set_to_none=True)
    if "Taylor" in importance:
        model.eval()  # no dropout; the gradients are of the deployed model
        for batch in calib.split(16):
            lm_loss(model, batch.to(dev)).backward()
    out: dict[str, torch.Tensor] = {}
    try:
        for ref in find_mlps(model):
            sub = _as_linear_mlp(ref.module)
            fc1 = sub.get_submodule(ref.inputs[0])
            example = torch.randn(1, 2, fc1.in_features, device=dev)
            graph = tp.DependencyGraph().build_dependency(sub, example_inputs=example)
            group = graph.get_pruning_group(
                fc1, tp.prune_linear_out_channels, idxs=list(range(ref.hidden))
            )
            layers = {dep.target.module for dep, _ in group}
            if sub.get_submodule(ref.down) not in layers:
                raise RuntimeError(f"{ref.name}: Torch-Pruning's group misses the down projection")
            scores = imp(group)
            if scores is None or scores.numel() != ref.hidden:
                raise RuntimeError(f"{ref.name}: Torch-Pruning gave no score per neuron")
            out[ref.name] = scores.detach().double().cpu()
    finally:
        model.zero_grad(set_to_none=True)
    return out


def paired_nll(a: torch.Tensor, b: torch.Tensor) -> dict[str, float | str]:
    """Mean per-window NLL difference b - a with a 95% t interval (the same windows scored
    by both models), and the verdict it supports for a: "better", "worse" or "on par"."""
    p = intervals.paired(b, a, "t")
    return {**p, "verdict": intervals.verdict(p["low"], p["high"], "better", "worse")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="llama-10m")
    parser.add_argument("--quick", action="store_true", help="the tiny preset, two ratios")
    parser.add_argument(
        "--corpus",
        choices=("pydoc", "pydoc+docstrings"),
        default=None,
        help="default: pydoc+docstrings (--quick: pydoc)",
    )
    parser.add_argument("--calib-windows", type=int, default=256)
    parser.add_argument("--kd-steps", type=int, default=50, help="distillation steps per model")
    parser.add_argument(
        "--kd-ratios", default="0.5", help="comma-separated ratios that are also distilled"
    )
    parser.add_argument(
        "--test-windows", type=int, default=256, help="held-out windows scored (evenly spaced)"
    )
    parser.add_argument("--speed-repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads of the speed section (default 1)"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default cpu)")
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="training steps instead of the preset's (named in the cache folder and results)",
    )
    parser.add_argument("--amp", action="store_true", help="bf16 autocast in training (CUDA)")
    parser.add_argument(
        "--select-on-val",
        action="store_true",
        help="hold out the last 5%% of the training windows, score them every twentieth of "
        "the steps and keep the best checkpoint (named '-val' in the cache and results)",
    )
    add_common_args(parser)
    args = parser.parse_args()
    check_tree(args)
    from shared.device import select_device

    choice = select_device(args.device)
    dev = choice.device
    arch = PRESETS[args.preset]["arch"]
    preset = QUICK[arch] if args.quick else args.preset
    p = dict(PRESETS[preset], **({"steps": args.steps} if args.steps else {}))
    result_name = run_name(preset, p["steps"], args.select_on_val)
    quick = preset in QUICK.values()
    ratios = (0.2, 0.5) if quick else RATIOS
    print(f"preset {preset} ({arch}) on {choice}", file=sys.stderr)

    from transformers import AutoModelForCausalLM

    corpus_kind = args.corpus or ("pydoc" if quick else "pydoc+docstrings")
    text = corpus(corpus_kind)
    folder, info = train_lm(
        preset, p, dev, corpus_kind, text, amp=args.amp, select=args.select_on_val
    )
    dense = AutoModelForCausalLM.from_pretrained(folder).to(dev).eval()
    from vbp_cli.text_data import load_tokenizer

    ids = tokenize(text, load_tokenizer(folder))
    train, _ = training_windows(ids, p["seq_len"], args.select_on_val)
    test = split_windows(ids, p["seq_len"], "test")
    if test.shape[0] > args.test_windows:  # evenly spaced, so every part of the tail counts
        test = test[torch.linspace(0, test.shape[0] - 1, args.test_windows).long()]
    kd_ratios = {float(r) for r in args.kd_ratios.split(",") if r} if args.kd_steps else set()
    calib = train[torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(0))]
    calib = calib[: args.calib_windows]
    stats = collect_stats(dense, calib.split(16), device=dev)
    dense_nll = window_nll(dense, test, device=dev)
    base = perplexity_from_nll(dense_nll)
    # Torch-Pruning's scores do not depend on the ratio: computed once on the dense model
    methods: dict[str, tuple[str | NeuronImportance, bool]] = dict(METHODS)
    tp_refused: dict[str, str] = {}
    for name, cls in TP_METHODS.items():
        try:
            methods[name] = (FixedScores(tp_scores(dense, cls, calib, dev)), False)
        except Exception as exc:  # noqa: BLE001 (reported in the results, never hidden)
            tp_refused[name] = f"{type(exc).__name__}: {exc}"
            print(f"{name}: {tp_refused[name]}", file=sys.stderr)
    total = sum(ref.hidden for ref in find_mlps(dense))
    rows: list[dict[str, Any]] = []
    nlls: dict[tuple[str, float, str], torch.Tensor] = {}
    half: dict[str, nn.Module] = {}
    for ratio in ratios:
        for name, (criterion, comp) in methods.items():
            model = copy.deepcopy(dense)
            widths = prune_model(model, stats, ratio, criterion=criterion, compensation=comp)
            nll = window_nll(model, test, device=dev)
            row = {"method": name, "ratio": ratio, **perplexity_from_nll(nll)}
            row["params"] = count_params(model)
            row["neurons"] = sum(widths.values())
            row["neurons_dense"] = total
            if ratio in kd_ratios:
                distill(model, dense, train, args.kd_steps, dev)
                kd_nll = window_nll(model, test, device=dev)
                row["kd"] = perplexity_from_nll(kd_nll)
                nlls[(name, ratio, "kd")] = kd_nll
            nlls[(name, ratio, "pruned")] = nll
            rows.append(row)
            if ratio == 0.5 and name == "VBP":
                half[f"VBP {ratio:.0%}"] = model
    uniform = copy.deepcopy(dense)
    prune_model(uniform, stats, 0.5, uniform=True)
    models = {"dense": dense, **half, "VBP 50% uniform": uniform}
    speed_rows = speed(
        models, dense.config.vocab_size, p["seq_len"], args.speed_repeats, args.threads
    )

    def fmt_ppl(r: dict[str, Any]) -> str:
        return f"{r['perplexity']:.2f} [{r['perplexity_low']:.2f}, {r['perplexity_high']:.2f}]"

    cols = ["method", *[f"{r:.0%}" for r in ratios]]
    table = [
        [
            m,
            *[
                fmt_ppl(next(r for r in rows if r["method"] == m and r["ratio"] == q))
                for q in ratios
            ],
        ]
        for m in methods
    ]
    paired_rows, compare = [], []
    for (m, q, stage), nll in sorted(nlls.items(), key=lambda kv: (kv[0][1], kv[0][2] == "kd")):
        if m == "VBP":
            continue
        pr = {"method": m, "ratio": q, "stage": stage, **paired_nll(nlls[("VBP", q, stage)], nll)}
        compare.append(pr)
        paired_rows.append([
            m, f"{q:.0%}", stage, f"{pr['diff']:+.4f} [{pr['low']:+.4f}, {pr['high']:+.4f}]",
            {"better": "VBP better", "worse": "VBP worse", "on par": "on par"}[pr["verdict"]],
        ])  # fmt: skip
    kd_table = [
        [r["method"], f"{r['ratio']:.0%}", fmt_ppl(r), fmt_ppl(r["kd"])] for r in rows if "kd" in r
    ]
    from importlib.metadata import PackageNotFoundError, version

    try:
        tp_version = version("torch-pruning")
    except PackageNotFoundError:  # imported from a path, or absent (then its rows say so)
        try:
            import torch_pruning

            tp_version = f"{torch_pruning.__version__} (its __version__)"
        except ImportError:
            tp_version = "(not installed)"
    arch_name = {"llama": "LLaMA", "gpt2": "GPT-2"}[arch]
    tp_text = TP_NOTE.format(version=tp_version, classes="`, `".join(TP_METHODS.values()))
    if tp_refused:
        tp_text += " Not run: " + "; ".join(f"{k}: {v}" for k, v in tp_refused.items()) + "."

    def fmt_x(spread: dict[str, float]) -> str:
        return f"{spread['median']:.2f} [{spread['min']:.2f}, {spread['max']:.2f}]"

    sections = [
        ("Setup", (
            f"Preset `{preset}`: {arch_name} architecture, {info['params'] / 1e6:.2f} M "
            f"parameters ({total} MLP neurons), "
            f"trained {info['steps']} steps of {p['batch']} x {p['seq_len']} tokens drawn from "
            f"{info['train_windows']} training windows of {info['corpus']} ({info['tokens']} "
            f"tokens in all, the last 10% held out) in {info['train_seconds']:.0f} s"
            f"{validation_text(info)}; "
            f"dense test perplexity {fmt_ppl(base)} over {base['windows']} held-out windows "
            f"(evenly spaced over the held-out tail). Statistics from {calib.shape[0]} "
            f"training windows. Distillation: {args.kd_steps} steps of logit KL at ratios "
            f"{sorted(kd_ratios) or 'none'}. Device: {choice} (trained on "
            f"{info.get('device', 'cpu')}); the speed section on the CPU with "
            f"{args.threads} thread(s)."
        )),
        ("Torch-Pruning criteria", tp_text),
        ("Perplexity right after pruning (95% interval over held-out windows)",
         markdown_table(cols, table)),
        ("After a short distillation", markdown_table(
            ["method", "ratio", "pruned", "distilled"], kd_table) if kd_table else "not run"),
        ("Paired comparison with VBP (mean per-window NLL of the method minus VBP's, 95% "
         "interval over the same held-out windows; positive means VBP is better)",
         markdown_table(["method", "ratio", "stage", "NLL difference", "verdict"], paired_rows)),
        (f"CPU speed, batch 1, {args.threads} thread(s) ({args.speed_repeats} interleaved "
         "rounds; x: median [min, max] of the per-round ratios to dense)", markdown_table(
            ["model", "prefill tok/s", "decode tok/s", "prefill x", "decode x"],
            [[r["model"], round(r["prefill_tok_s"]), round(r["decode_tok_s"], 1),
              fmt_x(r["prefill_speedup"]), fmt_x(r["decode_speedup"])] for r in speed_rows],
        )),
    ]  # fmt: skip
    path = write_results(
        "vbp",
        f"vbp_llm_{result_name}",
        f"VBP on a {arch_name}-architecture language model",
        sections,
        {
            "preset": preset,
            "architecture": arch,
            "device": str(dev),
            "device_reason": choice.reason,
            "speed_threads": args.threads,
            "torch_pruning": {
                "version": tp_version,
                "methods": TP_METHODS,
                "refused": tp_refused,
            },
            "training": info,
            "dense": base,
            "rows": rows,
            "paired_vs_vbp": compare,
            "speed": speed_rows,
        },
        results=RESULTS,
    )
    print(path)


if __name__ == "__main__":
    main()
