"""The one training loop of the toolkit.

Every training command of every tool runs on `Trainer`: the tool builds its models,
optimizers and schedulers, hands them to the trainer by name (`track`), and supplies a
step function `step_fn(step) -> logs` that computes its losses and calls
`trainer.optimize(loss, optimizer)` for each optimizer it steps. The trainer owns the rest:

- resume: every tracked object's `state_dict`, the GradScaler, the RNG states (torch,
  CUDA, numpy, random) and the step go into one `resume.pt` with the tool, command and
  options that wrote it; `--resume` restores them, and a state file written by another
  command or other options is refused (exit 2) instead of silently mixing two runs;
- data position: step functions draw their data from the step number (`StepBatches`,
  `step_rng`), so a resumed run sees exactly the batches it would have seen;
- preemption: SIGTERM/SIGUSR1 (Slurm) and Ctrl-C save the state after the current step and
  exit 75 (130 for Ctrl-C); periodic checkpoints every `--checkpoint-every` steps;
- a NaN/inf loss stops with exit 2 naming the step;
- AMP on CUDA (bf16 autocast, or fp16 with a GradScaler where bf16 is missing), DDP (models
  are unwrapped for their state) and gradient averaging for parameters DDP does not see;
- the progress bar, a metrics log (`train.jsonl` in the run folder) and a summary: the mean
  of each logged value over the last tenth of the steps.
"""

from __future__ import annotations

import json
import random
import signal
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from shared import distributed
from shared.console import get_console
from shared.errors import InputError, NonFiniteLoss, Preempted

FORMAT = "toolkit-train/1"
# options that may change between a run and its resumption without changing the result
VOLATILE_OPTIONS = frozenset(
    {"resume", "overwrite", "device", "quiet", "json_output", "config", "checkpoint_every",
     "num_workers", "out"}
)  # fmt: skip

Logs = Mapping[str, "float | torch.Tensor"]


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class Interrupted(Preempted):
    """Ctrl-C during training: state saved, exit 130 (the shell's code for SIGINT)."""

    exit_code = 130


def rng_state() -> dict[str, Any]:
    # numpy's state as tensors and numbers: resume files load with weights_only=True
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "numpy" in state:
        n = state["numpy"]
        keys = n["keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["gauss"]))
    if "python" in state:
        random.setstate(state["python"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


def check_finite(loss: torch.Tensor, step: int) -> None:
    """A NaN/inf loss stops the run with one clear line instead of training on garbage."""
    if not torch.isfinite(loss.detach()).all():
        raise NonFiniteLoss(
            f"loss is {loss.detach().float().sum().item()} at step {step}: lower the learning "
            "rate, check the data, or disable AMP"
        )


def step_rng(seed: int, step: int) -> np.random.Generator:
    """A generator that depends on (seed, rank, step) only: a resumed run draws what the
    uninterrupted run would have drawn at that step, and each rank draws its own data."""
    return np.random.default_rng([seed, distributed.rank(), step])


class StepBatches:
    """The batch of a global step from an epoch-seeded loader (see shared.loaders).

    Step s (1-based) takes batch (s - 1) mod len(loader) of epoch (s - 1) // len(loader);
    iteration continues cheaply while steps are consecutive and restarts at the right
    place after a resume."""

    def __init__(self, loader: Iterable[Any]) -> None:
        self.loader = loader
        self.per_epoch = len(loader)  # type: ignore[arg-type]
        if self.per_epoch < 1:
            raise ValueError("the data loader yields no batch (batch size larger than the data?)")
        self._it: Iterator[Any] | None = None
        self._next = -1

    def __call__(self, step: int) -> Any:
        from shared.loaders import epoch_batches

        index = step - 1
        if self._it is None or index != self._next:
            epoch, offset = divmod(index, self.per_epoch)
            self._it = iter(epoch_batches(self.loader, epoch, offset))  # type: ignore[arg-type]
        try:
            batch = next(self._it)
        except StopIteration:
            epoch = (index // self.per_epoch) + 1
            self._it = iter(epoch_batches(self.loader, epoch, 0))  # type: ignore[arg-type]
            batch = next(self._it)
        self._next = index + 1
        return batch


class Trainer:
    """Runs `total_steps` steps of a step function; see the module docstring.

    `run` is the command's `shared.runs.Run` (checkpoints, resume, signals), or None from
    Python (no files written, no signal handling)."""

    def __init__(
        self,
        total_steps: int,
        *,
        run: Any | None = None,
        device: torch.device | str = "cpu",
        amp: bool = False,
        description: str = "train",
        log_every: int = 0,
    ) -> None:
        if total_steps < 0:
            raise ValueError(f"total_steps must be >= 0, got {total_steps}")
        self.total = int(total_steps)
        self.run = run
        self.device = torch.device(device)
        self.amp = bool(amp) and self.device.type == "cuda"
        self.description = description
        self.log_every = log_every or max(1, self.total // 100)
        self.step = 0
        self.start_step = 0
        self.resumed = False
        fp16 = self.amp and not torch.cuda.is_bf16_supported()
        self.scaler = torch.amp.GradScaler("cuda", enabled=fp16)
        self._objects: dict[str, Any] = {}
        self._models: dict[str, nn.Module] = {}
        # logs of the last tenth of the steps: saved with the state, so a resumed run reports
        # the same final metrics as an uninterrupted one
        self._history: list[dict[str, float]] = []

    # -- what the trainer owns -------------------------------------------------------
    def track(self, **objects: Stateful) -> Trainer:
        """Objects whose state is saved and restored: models (DDP-wrapped or not),
        optimizers, schedulers, or anything with state_dict/load_state_dict."""
        for name, obj in objects.items():
            if isinstance(obj, nn.Module):
                self._models[name] = obj
            self._objects[name] = obj
        return self

    def autocast(self) -> AbstractContextManager[Any]:
        """Mixed precision on CUDA when AMP is on (bf16 where supported, else fp16)."""
        if not self.amp:
            return nullcontext()
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)

    def optimize(
        self,
        loss: torch.Tensor,
        optimizer: torch.optim.Optimizer,
        *,
        clip: float = 0.0,
        average: Iterable[nn.Parameter] | None = None,
        scheduler: Any | None = None,
    ) -> None:
        """One optimizer update from `loss`: finite check, backward (scaled under fp16),
        gradient averaging over ranks for `average` (parameters outside DDP), clipping,
        step, scheduler step."""
        check_finite(loss, self.step)
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if average is not None:
            distributed.average_gradients(average)
        if clip > 0:
            self.scaler.unscale_(optimizer)
            params = [p for g in optimizer.param_groups for p in g["params"]]
            nn.utils.clip_grad_norm_(params, clip)
        self.scaler.step(optimizer)
        self.scaler.update()
        if scheduler is not None:
            scheduler.step()

    # -- state --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        objects = {
            name: (distributed.unwrap(obj) if isinstance(obj, nn.Module) else obj).state_dict()
            for name, obj in self._objects.items()
        }
        return {
            "format": FORMAT,
            **self._identity(),
            "step": self.step,
            "objects": objects,
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "history": [dict(h) for h in self._history],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        where = f"{self.run.path('resume.pt')}" if self.run is not None else "resume state"
        if not isinstance(state, Mapping) or state.get("format") != FORMAT:
            raise InputError(f"{where}: not a resume state of this toolkit's trainer")
        mine = self._identity()
        for key in ("tool", "command"):
            if mine.get(key) and state.get(key) != mine[key]:
                raise InputError(
                    f"{where}: written by '{state.get('tool')} {state.get('command')}', not "
                    f"'{mine['tool']} {mine['command']}'; use another --out or --overwrite"
                )
        theirs, ours = state.get("options", {}), mine.get("options", {})
        changed = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
        if changed:
            shown = ", ".join(f"--{k.replace('_', '-')}" for k in changed[:4])
            raise InputError(
                f"{where}: written with other options ({shown}); rerun with the same options "
                "to resume, or use --overwrite to start again"
            )
        missing = sorted(set(self._objects) - set(state["objects"]))
        if missing:
            raise InputError(f"{where}: holds no state for {', '.join(missing)}")
        for name, obj in self._objects.items():
            target = distributed.unwrap(obj) if isinstance(obj, nn.Module) else obj
            target.load_state_dict(state["objects"][name])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self._history = [dict(h) for h in state.get("history", [])]
        self.step = self.start_step = int(state["step"])
        self.resumed = True

    def _identity(self) -> dict[str, Any]:
        if self.run is None:
            return {}
        options = {
            k: v for k, v in getattr(self.run, "options", {}).items() if k not in VOLATILE_OPTIONS
        }
        return {"tool": self.run.tool, "command": self.run.command, "options": options}

    # -- the loop -----------------------------------------------------------------------
    def fit(self, step_fn: Callable[[int], Logs | None]) -> dict[str, float]:
        """Run steps start+1 .. total; returns {"steps": total, "final_<name>": mean of the
        last tenth of each logged value}."""
        console = get_console()
        if self.run is not None:
            state = self.run.load_state()
            if state is not None:
                self.load_state_dict(state)
                console.info(f"resumed at step {self.step} of {self.total}")
        history = self._history
        window = max(1, self.total // 10)
        for model in self._models.values():
            model.train()
        old_int = self._catch_ctrl_c()
        try:
            with console.progress_bar(self.description, self.total) as bar:
                bar.advance(self.step)
                while self.step < self.total:
                    self.step += 1
                    raw = step_fn(self.step) or {}
                    logs = {k: _as_float(v) for k, v in raw.items()}
                    if "loss" in raw and isinstance(raw["loss"], torch.Tensor):
                        check_finite(raw["loss"], self.step)
                    history.append(logs)
                    del history[:-window]
                    bar.advance(1, **dict(list(logs.items())[:3]))
                    self._log(logs)
                    if self.run is not None:
                        self.run.step_done(self.step, self.state_dict)
        finally:
            if old_int is not None:
                signal.signal(signal.SIGINT, old_int)
        for name, model in self._models.items():
            distributed.check_replicas(model, name)
            model.eval()
        keys = history[-1].keys() if history else ()
        final = {f"final_{k}": float(np.mean([h[k] for h in history if k in h])) for k in keys}
        return {"steps": self.total, **final}

    def _log(self, logs: dict[str, float]) -> None:
        if self.run is None or not getattr(self.run, "main", True) or not logs:
            return
        if self.step % self.log_every and self.step != self.total:
            return
        with open(self.run.path("train.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": self.step, **logs}) + "\n")

    def _catch_ctrl_c(self) -> Any:
        """Inside a run, Ctrl-C finishes the step, saves and exits 130; a second one aborts."""
        if self.run is None or not hasattr(self.run, "request_stop"):
            return None
        run = self.run

        def handler(signum: int, frame: Any) -> None:
            if run.stop_reason == "SIGINT":
                raise KeyboardInterrupt
            run.request_stop("SIGINT")

        try:
            return signal.signal(signal.SIGINT, handler)
        except ValueError:  # not the main thread
            return None


def _as_float(value: float | torch.Tensor) -> float:
    return float(value.detach().float().mean()) if isinstance(value, torch.Tensor) else float(value)


def cosine_with_warmup(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """LambdaLR factor: linear warm-up, then cosine decay to zero."""
    import math

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor
