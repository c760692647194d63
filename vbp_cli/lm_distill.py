"""Logit distillation of a pruned causal language model from its dense one, and the held-out
scores that show what it recovered.

A causal LM is trained as a classifier of next tokens: `NextTokenLogits` gives the logits of
every token of a batch of windows that has a next token, `next_token_batch` the windows with
those next tokens as labels, so the image path's loop (`shared.classify.fit_classifier`, on
`shared.train.Trainer`) and its loss apply unchanged: (1 - a) * next-token cross-entropy +
a * T^2 * KL(teacher || student) at temperature T, averaged over the predicted tokens.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vbp_cli.text_data import next_token_logits, token_nll


class NextTokenLogits(nn.Module):
    """A causal LM as a classifier of tokens: windows (B, L) in, the (B * (L-1), V) logits of
    the tokens that have a next token out. Its parameters are the LM's own."""

    def __init__(self, lm: nn.Module) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = next_token_logits(self.lm, ids)
        return logits.reshape(-1, logits.shape[-1])


def next_token_batch(items: Sequence[tuple[torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """A loader's collate function for windows (items of a TensorDataset of token ids): the
    windows (B, L) and their next tokens (B * (L-1),), the labels of `NextTokenLogits`."""
    ids = torch.stack([window for (window,) in items])
    return ids, ids[:, 1:].reshape(-1)


@torch.no_grad()
def heldout_scores(
    student: nn.Module,
    teacher: nn.Module,
    windows: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> dict[str, torch.Tensor]:
    """Per-window (float64) mean next-token NLL of the student and of the teacher, and the mean
    per-token KL(teacher || student) at temperature 1, on held-out token windows."""
    student.eval()
    teacher.eval()
    out: dict[str, list[torch.Tensor]] = {"nll": [], "teacher_nll": [], "kl": []}
    for batch in windows.split(batch_size):
        ids = batch.to(device)
        s = next_token_logits(student, ids).float()
        t = next_token_logits(teacher, ids).float()
        log_s, log_t = s.log_softmax(-1), t.log_softmax(-1)
        kl = (log_t.exp() * (log_t - log_s)).sum(-1).mean(1)
        for key, value in (("nll", token_nll(s, ids)), ("teacher_nll", token_nll(t, ids))):
            out[key].append(value.mean(1).double().cpu())
        out["kl"].append(kl.double().cpu())
    return {key: torch.cat(parts) for key, parts in out.items()}
