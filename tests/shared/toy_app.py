"""A tiny tool built on the shared layer, to test its plumbing end to end as a subprocess:
config file + flags, --json, exit codes, atomic outputs, checkpoints, SIGTERM and --resume."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from shared.cli import (
    CheckpointEveryOpt,
    ConfigOpt,
    DeviceOpt,
    JsonOpt,
    OutOpt,
    QuietOpt,
    ResumeOpt,
    SeedOpt,
    command,
    create_app,
    pick_device,
    run_app,
)
from shared.errors import InputError

app = create_app("toy", "A toy tool for testing the shared layer.")


@app.command("train")
def train(
    ctx: typer.Context,
    out: OutOpt,
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 20,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 0.05,
    sleep: Annotated[float, typer.Option(help="Seconds to sleep per step.")] = 0.0,
    data: Annotated[Path | None, typer.Option(help="A file that must exist.")] = None,
    config: ConfigOpt = None,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    resume: ResumeOpt = False,
    checkpoint_every: CheckpointEveryOpt = 5,
    json_output: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fit a linear model to a fixed random problem with SGD and momentum."""
    import torch

    from shared.runs import check_finite, rng_state, set_rng_state

    with command(ctx, "toy", out, resume=resume, checkpoint_every=checkpoint_every) as run:
        if data is not None and not data.exists():
            raise InputError(f"--data {data}: no such file")
        dev = pick_device(device)
        torch.manual_seed(seed)
        model = torch.nn.Linear(4, 1).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        start = 0
        state = run.load_state()
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"])
            start = state["step"]
        (run.path("model.bin")).write_bytes(b"partial")  # an artefact this run creates
        for step in range(start + 1, steps + 1):
            x = torch.randn(16, 4)  # drawn from the global RNG: resume must restore it
            y = x.sum(1, keepdim=True)
            loss = torch.nn.functional.mse_loss(model(x), y)
            check_finite(loss, step)
            opt.zero_grad()
            loss.backward()
            opt.step()
            time.sleep(sleep)
            run.step_done(
                step,
                lambda s=step: {
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "rng": rng_state(),
                    "step": s,
                },
            )
        weights = [round(float(v), 10) for v in model.weight.flatten()]
        metrics = run.save_metrics({"loss": float(loss), "weights": weights, "steps": steps})
        run.console.summary(metrics)


if __name__ == "__main__":
    run_app(app)
