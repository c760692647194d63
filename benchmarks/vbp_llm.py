"""VBP on a language model: perplexity right after pruning 10-60% of the MLP neurons of a
LLaMA-architecture causal LM (gated SwiGLU MLPs, bias-free down projections), for VBP and the
criteria an LLM-pruning user would otherwise pick, optionally after a short distillation,
plus the CPU speed of the pruned model (prefill and decode tokens/s against dense).

    python -m benchmarks.vbp_llm                  # ~10 M parameters, about an hour on 1 core
    python -m benchmarks.vbp_llm --preset llama-16m   # ~16 M parameters, ~13 s/step on 1 core
    python -m benchmarks.vbp_llm --quick          # a tiny run that shows the pipeline works

Data: English text that ships offline with CPython: the pydoc topics
(`pydoc_data.topics.topics`, the language reference's sections) and the docstrings of the
pure-Python standard library (read with `ast`; tests and idlelib left out), about 1.9 M
characters, documents shuffled with seed 0 (`--corpus pydoc`: the topics only, 0.47 M
characters). Tokenised with a byte-level BPE trained on the first 90% of the text; the last
10% of the token windows are held out and give every perplexity. The trained model is cached
as a transformers folder under $TOOLKIT_CACHE/vbp_llm/<preset>-<corpus>, so pruning sweeps
reuse it; the results record the exact token counts.

Methods (the same structure everywhere: whole neurons of every MLP, one global ranking):
VBP (variance + mean-shift compensation into an added down_proj bias), variance without
compensation, FLAP (fluctuation = variance x |down column|^2, with the same compensation),
structured Wanda (|down column| x input norm), magnitude (group L2 norm) and random.
Perplexity intervals are 95% intervals over held-out windows.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import RESULTS, add_common_args, check_tree, markdown_table, write_results
from shared import intervals
from shared.cache import cache_dir
from shared.profiling import count_params
from shared.train import Trainer, cosine_with_warmup, step_rng
from vbp_cli.prune import prune_model
from vbp_cli.stats import collect_stats
from vbp_cli.text_data import perplexity_from_nll, split_windows, tokenize, window_nll

PRESETS: dict[str, dict[str, Any]] = {
    # ~10 M parameters (7 M of them in the MLPs' 8 x 896 neurons): 500 steps of 16 x 128
    # tokens (1 M tokens, under two passes over the training text), ~7 s/step on one core
    "llama-10m": dict(
        vocab=4096, hidden=320, layers=8, heads=5, kv_heads=1, inter=896, seq_len=128,
        steps=500, batch=16, lr=1e-3,
    ),
    # ~16 M parameters (9.4 M of them in the MLPs' 8 x 1024 neurons): 3000 steps of
    # 32 x 128 tokens, ~13 s/step on one core here, so about 11 hours
    "llama-16m": dict(
        vocab=4096, hidden=384, layers=8, heads=6, kv_heads=2, inter=1024, seq_len=128,
        steps=3000, batch=32, lr=1e-3,
    ),
    # a seconds-long check of the whole pipeline (--quick)
    "quick": dict(
        vocab=384, hidden=64, layers=2, heads=4, kv_heads=2, inter=128, seq_len=32,
        steps=20, batch=8, lr=3e-3,
    ),
}  # fmt: skip
RATIOS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
METHODS = {  # name: (criterion, compensation)
    "VBP": ("variance", True),
    "variance, no comp.": ("variance", False),
    "FLAP": ("flap", True),
    "structured Wanda": ("wanda", False),
    "magnitude": ("magnitude", False),
    "random": ("random", False),
}


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
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
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


def train_lm(
    preset: str, p: dict[str, Any], dev: torch.device, corpus_kind: str, text: str
) -> tuple[Path, dict[str, Any]]:
    """Train (or reuse) the LM; returns its folder and what it was trained on."""
    import json

    from shared.io import write_json

    folder = cache_dir("vbp_llm", f"{preset}-{corpus_kind}")
    info_path = folder / "training.json"
    if info_path.is_file():
        return folder, json.loads(info_path.read_text())
    cut = int(len(text) * 0.9)  # the tokenizer sees the training text only
    tokenizer = train_tokenizer(text[:cut], p["vocab"])
    ids = tokenize(text, tokenizer)
    train = split_windows(ids, p["seq_len"], "train")
    model = build_lm(p, len(tokenizer)).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=p["lr"], weight_decay=0.1, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, cosine_with_warmup(p["steps"], max(1, p["steps"] // 20))
    )
    trainer = Trainer(p["steps"], device=dev, description=f"train {preset}")
    trainer.track(student=model, opt=opt, sched=sched)

    def step(s: int) -> dict[str, float]:
        rows = step_rng(0, s).integers(0, train.shape[0], p["batch"])
        batch = train[torch.as_tensor(rows)].to(dev)
        with trainer.autocast():
            loss = lm_loss(model, batch)
        trainer.optimize(loss, opt, clip=1.0, scheduler=sched)
        return {"loss": float(loss.detach())}

    start = time.perf_counter()
    fit = trainer.fit(step)
    model.save_pretrained(folder)
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
        "train_seconds": round(time.perf_counter() - start, 1),
        **fit,
    }
    write_json(info_path, info)
    return folder, info


def distill(student: nn.Module, teacher: nn.Module, train: torch.Tensor, steps: int) -> None:
    """A short logit distillation (KL at T=1) of the pruned model from the dense one."""
    if steps <= 0:
        return
    opt = torch.optim.AdamW(student.parameters(), lr=3e-4, weight_decay=0.0)
    trainer = Trainer(steps, description="distill").track(student=student, opt=opt)
    teacher.eval()

    def step(s: int) -> dict[str, float]:
        rows = step_rng(1, s).integers(0, train.shape[0], 16)
        ids = train[torch.as_tensor(rows)]
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
def speed(models: dict[str, nn.Module], vocab: int, seq_len: int, repeats: int) -> list[dict]:
    """Prefill (one forward over seq_len tokens) and decode (new tokens one by one with the
    KV cache) tokens/s at batch 1, the models interleaved in one run."""
    ids = torch.randint(0, vocab, (1, seq_len // 2), generator=torch.Generator().manual_seed(0))
    new = seq_len // 2
    times: dict[str, dict[str, list[float]]] = {n: {"prefill": [], "decode": []} for n in models}
    for _ in range(repeats):
        for name, m in models.items():
            t0 = time.perf_counter()
            m(input_ids=ids)
            t1 = time.perf_counter()
            m.generate(ids, max_new_tokens=new, min_new_tokens=new, do_sample=False)
            t2 = time.perf_counter()
            times[name]["prefill"].append(t1 - t0)
            times[name]["decode"].append(t2 - t1 - (t1 - t0))  # generate also prefills
    rows = []
    for name, t in times.items():
        pre = sorted(t["prefill"])[len(t["prefill"]) // 2]
        dec = max(sorted(t["decode"])[len(t["decode"]) // 2], 1e-9)
        rows.append({"model": name, "prefill_tok_s": ids.shape[1] / pre, "decode_tok_s": new / dec})
    dense = rows[0]
    for r in rows:
        r["prefill_speedup"] = r["prefill_tok_s"] / dense["prefill_tok_s"]
        r["decode_speedup"] = r["decode_tok_s"] / dense["decode_tok_s"]
    return rows


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
    add_common_args(parser)
    args = parser.parse_args()
    check_tree(args)
    preset = "quick" if args.quick else args.preset
    p = PRESETS[preset]
    ratios = (0.2, 0.5) if args.quick else RATIOS
    dev = torch.device("cpu")
    torch.set_num_threads(max(1, torch.get_num_threads()))

    from transformers import LlamaForCausalLM

    corpus_kind = args.corpus or ("pydoc" if args.quick else "pydoc+docstrings")
    text = corpus(corpus_kind)
    folder, info = train_lm(preset, p, dev, corpus_kind, text)
    dense = LlamaForCausalLM.from_pretrained(folder).eval()
    from vbp_cli.text_data import load_tokenizer

    ids = tokenize(text, load_tokenizer(folder))
    train = split_windows(ids, p["seq_len"], "train")
    test = split_windows(ids, p["seq_len"], "test")
    if test.shape[0] > args.test_windows:  # evenly spaced, so every part of the tail counts
        test = test[torch.linspace(0, test.shape[0] - 1, args.test_windows).long()]
    kd_ratios = {float(r) for r in args.kd_ratios.split(",") if r} if args.kd_steps else set()
    calib = train[torch.randperm(train.shape[0], generator=torch.Generator().manual_seed(0))]
    calib = calib[: args.calib_windows]
    stats = collect_stats(dense, calib.split(16))
    dense_nll = window_nll(dense, test)
    base = perplexity_from_nll(dense_nll)
    rows: list[dict[str, Any]] = []
    nlls: dict[tuple[str, float, str], torch.Tensor] = {}
    half: dict[str, nn.Module] = {}
    for ratio in ratios:
        for name, (criterion, comp) in METHODS.items():
            model = copy.deepcopy(dense)
            prune_model(model, stats, ratio, criterion=criterion, compensation=comp)
            nll = window_nll(model, test)
            row = {"method": name, "ratio": ratio, **perplexity_from_nll(nll)}
            row["params"] = count_params(model)
            if ratio in kd_ratios:
                distill(model, dense, train, args.kd_steps)
                kd_nll = window_nll(model, test)
                row["kd"] = perplexity_from_nll(kd_nll)
                nlls[(name, ratio, "kd")] = kd_nll
            nlls[(name, ratio, "pruned")] = nll
            rows.append(row)
            if ratio == 0.5 and name == "VBP":
                half[f"VBP {ratio:.0%}"] = model
    uniform = copy.deepcopy(dense)
    prune_model(uniform, stats, 0.5, uniform=True)
    models = {"dense": dense, **half, "VBP 50% uniform": uniform}
    speed_rows = speed(models, dense.config.vocab_size, p["seq_len"], args.speed_repeats)

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
        for m in METHODS
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
    sections = [
        ("Setup", (
            f"Preset `{preset}`: LLaMA architecture, {info['params'] / 1e6:.2f} M parameters, "
            f"trained {info['steps']} steps of {p['batch']} x {p['seq_len']} tokens drawn from "
            f"{info['train_windows']} training windows of {info['corpus']} ({info['tokens']} "
            f"tokens in all, the last 10% held out) in {info['train_seconds'] / 60:.0f} min; "
            f"dense test perplexity {fmt_ppl(base)} over {base['windows']} held-out windows "
            f"(evenly spaced over the held-out tail). Statistics from {calib.shape[0]} "
            f"training windows. Distillation: {args.kd_steps} steps of logit KL at ratios "
            f"{sorted(kd_ratios) or 'none'}."
        )),
        ("Perplexity right after pruning (95% interval over held-out windows)",
         markdown_table(cols, table)),
        ("After a short distillation", markdown_table(
            ["method", "ratio", "pruned", "distilled"], kd_table) if kd_table else "not run"),
        ("Paired comparison with VBP (mean per-window NLL of the method minus VBP's, 95% "
         "interval over the same held-out windows; positive means VBP is better)",
         markdown_table(["method", "ratio", "stage", "NLL difference", "verdict"], paired_rows)),
        ("CPU speed, batch 1", markdown_table(
            ["model", "prefill tok/s", "decode tok/s", "prefill x", "decode x"],
            [[r["model"], round(r["prefill_tok_s"]), round(r["decode_tok_s"], 1),
              round(r["prefill_speedup"], 2), round(r["decode_speedup"], 2)] for r in speed_rows],
        )),
    ]  # fmt: skip
    name = "vbp_llm_quick" if args.quick else f"vbp_llm_{preset}"
    path = write_results(
        "vbp",
        name,
        "VBP on a LLaMA-architecture language model",
        sections,
        {
            "preset": preset,
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
