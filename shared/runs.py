"""A command's output directory: config.yaml, metrics.json, log.txt, artefacts, resume state.

Everything is written atomically. Bad input found mid-run removes what this run created,
so a failed command leaves nothing half-written. SIGTERM/SIGUSR1 (Slurm's warning before
a time limit or preemption) make long loops save their state and exit with code 75;
rerunning the same command with `--resume` continues from that state.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import torch

from shared import __version__
from shared.console import Console, get_console
from shared.errors import InputError, MissingExtraError, Preempted
from shared.io import atomic_path, write_json, write_yaml

STATE_FILE = "resume.pt"
_SIGNALS = tuple(
    s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR1", None)) if s
)


class Run:
    def __init__(
        self,
        out: str | Path,
        *,
        tool: str,
        command: str,
        options: dict[str, Any] | None = None,
        resume: bool = False,
        checkpoint_every: int = 0,
        overwrite: bool = False,
    ) -> None:
        self.dir = Path(out)
        self.overwrite = overwrite
        self.tool = tool
        self.command = command
        self.options = options or {}
        self.resume = resume
        self.checkpoint_every = checkpoint_every
        self._signal: str | None = None
        self._old_handlers: dict[int, Any] = {}
        self._existed = self.dir.exists()
        self._before: set[Path] = set()
        self._state: dict[str, Any] | None = None
        self.started = time.time()

    # -- lifecycle -------------------------------------------------------------
    def __enter__(self) -> Run:
        from shared.distributed import is_main

        self._claim()
        self._before = set(self.dir.rglob("*")) if self._existed else set()
        self.main = is_main()
        if self.main:
            get_console().attach_log(self.dir / "log.txt")
        if self.main and not (self.resume and (self.dir / "config.yaml").exists()):
            write_yaml(
                self.dir / "config.yaml",
                {
                    "tool": self.tool,
                    "command": self.command,
                    "version": __version__,
                    **self.options,
                },
            )
        for sig in _SIGNALS:
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._old_handlers.items():
            signal.signal(sig, handler)
        get_console().detach_log()
        if exc_type is not None and issubclass(exc_type, (InputError, MissingExtraError)):
            self._remove_created()  # nothing ran: leave no folder behind
        elif exc is not None and self.main and not isinstance(exc, KeyboardInterrupt):
            status = "preempted" if isinstance(exc, Preempted) else "failed"
            write_json(self.dir / "metrics.json", self._header(status) | {"error": str(exc)})

    def _claim(self) -> None:
        """Make --out this run's own: new, empty, this command's to resume, or --overwrite.
        Refusals happen before anything is written, so an earlier run is never touched."""
        from shared.distributed import detect_env

        d = self.dir
        if detect_env().rank != 0:
            # under torchrun/srun rank 0 claims the folder (and starts writing into it at
            # once): the other ranks only make sure it exists
            d.mkdir(parents=True, exist_ok=True)
            return
        if d.exists() and not d.is_dir():
            raise InputError(f"--out {d}: exists and is not a directory")
        if d.is_dir() and any(d.iterdir()):
            if self.overwrite:
                if self.resume:
                    raise InputError("--resume and --overwrite: choose one")
                if not os.access(d, os.W_OK | os.X_OK):
                    raise InputError(f"--out {d}: not writable")
                for child in d.iterdir():
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            elif self.resume:
                self._check_owner()
            else:
                raise InputError(
                    f"--out {d}: not empty (an earlier run's folder); use --resume to continue "
                    "it, --overwrite to replace it, or another folder"
                )
        elif self.resume:
            get_console().warn(f"--resume: no {STATE_FILE} in {d}, starting fresh")
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"--out {d}: cannot create it ({exc.strerror or exc})") from None
        if not os.access(d, os.W_OK | os.X_OK):
            raise InputError(f"--out {d}: not writable")

    def _check_owner(self) -> None:
        import yaml

        cfg = self.dir / "config.yaml"
        try:
            written = yaml.safe_load(cfg.read_text(encoding="utf-8")) if cfg.exists() else None
        except (OSError, yaml.YAMLError):
            written = None
        if not isinstance(written, dict):
            raise InputError(f"--resume: {self.dir} holds no run of this toolkit (no config.yaml)")
        if (written.get("tool"), written.get("command")) != (self.tool, self.command):
            raise InputError(
                f"--resume: {self.dir} holds a '{written.get('tool')} {written.get('command')}' "
                f"run, not '{self.tool} {self.command}'"
            )
        from shared.console import _plain
        from shared.train import VOLATILE_OPTIONS

        mine = _plain({k: v for k, v in self.options.items() if k not in VOLATILE_OPTIONS})
        changed = sorted(k for k in mine if k in written and written[k] != mine[k])
        if changed:
            shown = ", ".join(f"--{k.replace('_', '-')}" for k in changed[:4])
            raise InputError(
                f"--resume: {self.dir} was written with other options ({shown}); rerun with "
                "the same options to resume, or use --overwrite to start again"
            )
        state = self.dir / STATE_FILE
        if not state.exists():
            # e.g. a job requeued before its first checkpoint: nothing to continue from
            get_console().warn(f"--resume: no {STATE_FILE} in {self.dir} yet, starting fresh")
            return
        from shared.checkpoints import safe_torch_load

        # read (safely) before anything is written: a damaged state leaves the folder as it was
        self._state = safe_torch_load(state)
        if not isinstance(self._state, dict):
            raise InputError(f"{state}: not a resume state of this toolkit")

    def _remove_created(self) -> None:
        if not self._existed:
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        for path in sorted(self.dir.rglob("*"), reverse=True):
            if path not in self._before:
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signal = signal.Signals(signum).name

    def request_stop(self, reason: str) -> None:
        """Stop after the current step, saving state (signal handlers call this)."""
        self._signal = reason

    @property
    def stop_reason(self) -> str | None:
        return self._signal

    # -- outputs ---------------------------------------------------------------
    @property
    def console(self) -> Console:
        return get_console()

    def path(self, name: str) -> Path:
        return self.dir / name

    def _header(self, status: str) -> dict[str, Any]:
        from shared import distributed

        return {
            "tool": self.tool,
            "command": self.command,
            "version": __version__,
            "status": status,
            "seconds": round(time.time() - self.started, 3),
            "world_size": distributed.world_size(),  # processes that ran it (torchrun/srun)
        }

    def save_metrics(self, metrics: dict[str, Any]) -> dict[str, Any]:
        full = self._header("ok") | metrics
        if self.main:
            write_json(self.dir / "metrics.json", full)
        return full

    # -- resume state and preemption --------------------------------------------
    def stop_requested(self) -> bool:
        """True on every rank once any rank got SIGTERM/SIGUSR1 (ranks must stop together)."""
        from shared import distributed

        flag = torch.tensor([1.0 if self._signal else 0.0])
        if distributed.world_size() > 1:
            flag = distributed.all_reduce(flag, "max")
        if flag.item() > 0 and self._signal is None:
            self._signal = "signal on another rank"
        return bool(flag.item() > 0)

    def load_state(self) -> dict[str, Any] | None:
        """The saved training state when resuming, else None."""
        if self._state is not None:  # read when the folder was claimed
            state, self._state = self._state, None
            return state
        path = self.dir / STATE_FILE
        if not (self.resume and path.exists()):
            return None
        from shared.checkpoints import safe_torch_load

        return safe_torch_load(path)  # never runs code; one line when unreadable

    def save_state(self, state: dict[str, Any]) -> None:
        if not self.main:
            return
        with atomic_path(self.dir / STATE_FILE) as tmp:
            torch.save(state, tmp)

    def step_done(self, step: int, make_state: Callable[[], dict[str, Any]]) -> None:
        """Call after each step: saves every `checkpoint_every` steps, and on a signal saves
        and raises Preempted (exit 75) so the batch script can requeue with --resume."""
        stop = self.stop_requested()
        due = self.checkpoint_every > 0 and step % self.checkpoint_every == 0
        if stop or due:
            self.save_state(make_state())
        if stop and self._signal == "SIGINT":
            from shared.train import Interrupted

            raise Interrupted(
                f"interrupted: state saved at step {step} to {self.dir / STATE_FILE}; rerun "
                "the same command with --resume"
            )
        if stop:
            raise Preempted(
                f"{self._signal} received: state saved at step {step} to "
                f"{self.dir / STATE_FILE}; rerun the same command with --resume"
            )


from shared.train import check_finite, rng_state, set_rng_state  # noqa: E402,F401
