"""A tiny tool built on the shared layer, to test its plumbing end to end: options declared
on a dataclass, config file + flags, --json, exit codes, atomic outputs, the training engine,
SIGTERM and --resume."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from shared.cli import create_app, run_app
from shared.errors import InputError
from shared.options import Invocation, opt, tool_command

app = create_app("toy", "A toy tool for testing the shared layer.")


@dataclass
class ToyOptions:
    steps: int = opt(20, "Optimiser steps.", min=0)
    lr: float = opt(0.05, "Learning rate.", min=0, min_open=True)
    sleep: float = opt(0.0, "Seconds to sleep per step.", min=0)
    data: Path | None = opt(None, "A file that must exist.")
    seed: int = opt(0, "Random seed.")


def fit_toy(cfg: ToyOptions, run: object | None = None, device: str = "cpu") -> dict:
    """The API: fit a linear model to a random problem with SGD and momentum."""
    import torch

    from shared.train import Trainer

    torch.manual_seed(cfg.seed)
    model = torch.nn.Linear(4, 1).to(device)
    opt_ = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
    trainer = Trainer(cfg.steps, run=run, device=device, description="toy")
    trainer.track(model=model, opt=opt_)

    def step(_: int) -> dict:
        x = torch.randn(16, 4)  # drawn from the global RNG: resume must restore it
        loss = torch.nn.functional.mse_loss(model(x), x.sum(1, keepdim=True))
        trainer.optimize(loss, opt_)
        time.sleep(cfg.sleep)
        return {"loss": loss}

    result = trainer.fit(step)
    weights = [round(float(v), 10) for v in model.weight.detach().flatten()]
    return {**result, "weights": weights}


@tool_command(app, "train", ToyOptions, train=True)
def train(cfg: ToyOptions, inv: Invocation) -> dict:
    """Fit a linear model to a fixed random problem with SGD and momentum."""
    if cfg.data is not None and not cfg.data.exists():
        raise InputError(f"--data {cfg.data}: no such file")
    inv.run.path("model.bin").write_bytes(b"partial")  # an artefact this run creates
    return fit_toy(cfg, inv.run, inv.device)


if __name__ == "__main__":
    run_app(app)
