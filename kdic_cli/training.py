"""The training of `distill` and `finetune` on the shared engine (shared.train.Trainer):
phases (a set of trainable parameters and a loss each, one Adam per phase), the aux
optimizer on the entropy bottlenecks' quantiles throughout, and gradient averaging for what
DDP does not see. The method itself lives in distill.py."""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["Phase", "run_phases"]


@dataclass
class Phase:
    """A run of steps with one set of trainable parameters and one loss."""

    name: str
    steps: int
    params: list[nn.Parameter]
    loss: Callable[[Tensor], dict[str, Tensor]]
    # False when the loss does not go through DDP: gradients are then averaged by hand.
    ddp_synced: bool = True


def run_phases(
    phases: list[Phase],
    batches: Callable[[int], Tensor],
    student: nn.Module,
    *,
    lr: float,
    aux_lr: float,
    device: torch.device | str,
    clip: float = 1.0,
    run: Any | None = None,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Train phase after phase (global steps 1..sum of phase steps), each with its own Adam
    (lr) on its parameters; Adam (aux_lr) on the student's quantiles after every step.
    `batches(step)` gives the step's images. Resumable at any step through `run`.

    Returns each phase's last logs ({"phase": name} alone for phases finished before a
    resume) and the trainer's summary ({"steps", "final_<log>"})."""
    from shared import distributed
    from shared.console import get_console
    from shared.train import Trainer

    aux_params = [p for n, p in student.named_parameters() if n.endswith(".quantiles")]
    aux_opt = torch.optim.Adam(aux_params, lr=aux_lr) if aux_params else None
    # every phase's optimizer exists from the start, so one state holds them all
    opts = [torch.optim.Adam([p for p in ph.params if p.requires_grad], lr=lr) for ph in phases]
    ends = [sum(ph.steps for ph in phases[: k + 1]) for k in range(len(phases))]
    trainer = Trainer(ends[-1] if ends else 0, run=run, device=device, description="training")
    trainer.track(
        student=student, **{f"opt_{_key(ph.name)}": o for ph, o in zip(phases, opts, strict=True)}
    )
    if aux_opt is not None:
        trainer.track(aux=aux_opt)
    last: dict[str, dict[str, float]] = {}

    def step_fn(step: int) -> dict[str, Tensor]:
        k = bisect.bisect_left(ends, step)  # the phase whose last step is >= step
        ph = phases[k]
        x = batches(step).to(device)
        with trainer.autocast():
            out = ph.loss(x)
        average = None if ph.ddp_synced else ph.params
        trainer.optimize(out["loss"], opts[k], clip=clip, average=average)
        if aux_opt is not None:
            with trainer.autocast():
                aux = distributed.unwrap(student).aux_loss()
            # DDP does not see the aux loss: its gradients are averaged by hand
            trainer.optimize(aux, aux_opt, average=aux_params)
        logs = {name: float(v.detach()) for name, v in out.items()}
        last[ph.name] = logs
        if step == ends[k]:
            get_console().info(f"{ph.name}: " + "  ".join(f"{n}={v:.4g}" for n, v in logs.items()))
        return out

    final = trainer.fit(step_fn)
    summary = [{"phase": ph.name, **last.get(ph.name, {})} for ph in phases]
    return summary, final


def _key(name: str) -> str:
    return name.replace(".", "_").replace("-", "_")
