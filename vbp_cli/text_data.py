"""Text data for language models: `--data text:PATH` (a file, or a folder of .txt/.md/.rst
files read in sorted order), tokenised with the model folder's tokenizer and cut into
fixed-length windows of token ids. Every token of every window is one VBP sample, as every
patch of every image is.

The last `HELD_OUT` share of the windows is held out: split "train" is the rest, "val" /
"test" the held-out part, "all" everything. `perplexity` scores a causal LM on windows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.errors import InputError

PREFIX = "text:"
SUFFIXES = (".txt", ".md", ".rst", ".text")
HELD_OUT = 0.1
SPLITS = ("train", "val", "test", "all")


def is_text_spec(spec: str) -> bool:
    return spec.startswith(PREFIX)


def read_text(spec: str) -> str:
    path = Path(spec.removeprefix(PREFIX)).expanduser()
    if path.is_file():
        files = [path]
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    else:
        raise InputError(f"--data {spec}: no such file or folder")
    if not files:
        raise InputError(f"--data {spec}: no {'/'.join(SUFFIXES)} files in the folder")
    text = "\n\n".join(p.read_text(encoding="utf-8", errors="replace") for p in files)
    if not text.strip():
        raise InputError(f"--data {spec}: the text is empty")
    return text


def load_tokenizer(folder: str | Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise InputError(
            f"--data text: needs a tokenizer in the model folder {folder} ({type(exc).__name__})"
        ) from None


def tokenize(text: str, tokenizer: Any, chunk_chars: int = 100_000) -> torch.Tensor:
    """All token ids of `text` (tokenised in paragraph-aligned chunks, no special tokens)."""
    ids: list[int] = []
    start = 0
    while start < len(text):
        end = min(len(text), start + chunk_chars)
        if end < len(text):  # cut at a paragraph or line break so words stay whole
            cut = text.rfind("\n", start, end)
            end = cut + 1 if cut > start else end
        ids.extend(tokenizer(text[start:end], add_special_tokens=False)["input_ids"])
        start = end
    return torch.tensor(ids, dtype=torch.long)


def split_windows(ids: torch.Tensor, seq_len: int, split: str) -> torch.Tensor:
    """(n, seq_len) windows of `ids`; the held-out share is the last windows."""
    if split not in SPLITS:
        raise InputError(f"--split {split}: text data has splits {', '.join(SPLITS)}")
    n = ids.numel() // seq_len
    if n < 2:
        raise InputError(
            f"--data text: {ids.numel()} tokens make fewer than two windows of {seq_len}"
        )
    windows = ids[: n * seq_len].view(n, seq_len)
    held = max(1, int(round(n * HELD_OUT)))
    if split == "train":
        return windows[: n - held]
    if split in ("val", "test"):
        return windows[n - held :]
    return windows


def text_windows(spec: str, tokenizer_folder: str | Path, seq_len: int, split: str) -> torch.Tensor:
    """`--data text:PATH` as (n, seq_len) token-id windows of `split`."""
    return split_windows(
        tokenize(read_text(spec), load_tokenizer(tokenizer_folder)), seq_len, split
    )


def model_seq_len(model: nn.Module, requested: int) -> int:
    """`requested`, capped by the model's position limit."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return min(requested, limit) if limit else requested


def next_token_logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(B, L-1, V) logits of a causal LM at the tokens of `ids` (B, L) that have a next token."""
    return model(input_ids=ids, use_cache=False).logits[:, :-1]


def token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """(B, L-1) next-token cross-entropy of `next_token_logits` for the windows `ids`."""
    loss = nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="none"
    )
    return loss.view(ids.shape[0], -1)


@torch.no_grad()
def window_nll(
    model: nn.Module,
    windows: torch.Tensor,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Mean next-token cross-entropy of a causal LM on each token window (float64, one
    value per window), so that two models can be compared window by window."""
    device = torch.device(device)
    model.eval()
    per_window: list[torch.Tensor] = []
    for start in range(0, windows.shape[0], batch_size):
        ids = windows[start : start + batch_size].to(device)
        loss = token_nll(next_token_logits(model, ids).float(), ids)
        per_window.append(loss.mean(1).double().cpu())
    return torch.cat(per_window)


def perplexity(
    model: nn.Module,
    windows: torch.Tensor,
    *,
    batch_size: int = 8,
    device: torch.device | str = "cpu",
) -> dict[str, float]:
    """Perplexity of a causal LM on token windows (next-token cross-entropy over every
    predicted token), with a 95% interval from the spread of the per-window mean losses."""
    nll = window_nll(model, windows, batch_size=batch_size, device=device)
    return {
        **perplexity_from_nll(nll),
        "tokens": int(windows.shape[0] * (windows.shape[1] - 1)),
    }


def perplexity_from_nll(nll: torch.Tensor) -> dict[str, float]:
    """Perplexity and its 95% interval from per-window mean NLLs (see `window_nll`)."""
    mean = float(nll.mean())
    half = 1.96 * float(nll.std()) / math.sqrt(nll.numel()) if nll.numel() > 1 else 0.0
    return {
        "perplexity": math.exp(mean),
        "perplexity_low": math.exp(mean - half),
        "perplexity_high": math.exp(mean + half),
        "nll": mean,
        "windows": int(nll.numel()),
    }


@dataclass(frozen=True)
class TextWindows:
    """Which token windows `--data text:PATH` gives a model: the text `spec`, cut with the
    tokenizer in `tokenizer_folder` into windows of `seq_len` tokens (capped by the model's
    position limit), the windows of `split`."""

    spec: str
    tokenizer_folder: str | Path
    seq_len: int
    split: str

    def of(self, model: nn.Module) -> torch.Tensor:
        seq_len = model_seq_len(model, self.seq_len)
        return text_windows(self.spec, self.tokenizer_folder, seq_len, self.split)


def stats_batches(
    text: TextWindows, model: nn.Module, *, batch_size: int, batches: int, seed: int
) -> tuple[list[torch.Tensor], int]:
    """Token-id batches for collect-stats: this rank's share of the windows (shuffled with
    `seed` when only `batches` batches are used); returns them and the count of windows in
    all."""
    from shared import distributed

    windows = text.of(model)
    if batches:
        order = torch.randperm(windows.shape[0], generator=torch.Generator().manual_seed(seed))
        windows = windows[order[: batches * batch_size * distributed.world_size()]]
    mine = windows[distributed.rank() :: distributed.world_size()]
    return list(mine.split(batch_size)), int(windows.shape[0])


def evaluate_lm(
    text: TextWindows, model: nn.Module, *, batch_size: int, device: torch.device | str
) -> dict[str, Any]:
    """Perplexity of a causal LM on the held-out windows (split "val"/"test") of the text."""
    from vbp_cli import hf

    if not hf.is_causal_lm(model):
        raise InputError(
            f"--data {text.spec}: perplexity needs a causal language model "
            f"({', '.join(hf.CAUSAL_LM)}), not {type(model).__name__}"
        )
    windows = text.of(model)
    model.to(device)
    return perplexity(model, windows, batch_size=batch_size, device=device) | {"split": text.split}
