"""One distributed init for torchrun and Slurm, plus the few collectives the tools share.

Every helper degrades to a single-process no-op when no process group is initialised, so
tool code calls them unconditionally (``all_reduce`` returns a copy, ``barrier`` returns,
``wrap_ddp`` returns the model).

Launchers, in order of precedence:
- torchrun (or any launcher that sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/
  ``MASTER_ADDR``/``MASTER_PORT``);
- Slurm ``srun`` (``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``; the master is the
  first host of the node list, the port ``MASTER_PORT`` or one derived from the job id);
- none: one process, rank 0.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from shared.errors import InputError, ToolkitError

__all__ = [
    "DistEnv",
    "all_gather_object",
    "all_reduce",
    "barrier",
    "broadcast_object",
    "cleanup",
    "detect_env",
    "distributed_sampler",
    "first_host",
    "init",
    "is_initialized",
    "is_main",
    "rank",
    "rank0_print",
    "unwrap",
    "world_size",
    "wrap_ddp",
]

# torch's own default when MASTER_PORT is missing under a RANK/WORLD_SIZE launcher.
_DEFAULT_PORT = 29500


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job, as the launcher described it."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    launcher: str  # "torchrun", "slurm" or "none"

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _int_var(environ: Mapping[str, str], name: str, default: int | None = None) -> int:
    raw = environ.get(name)
    if raw is None or raw.strip() == "":
        if default is None:
            raise InputError(f"environment variable {name} is required but not set")
        return default
    # Not bare int(): it would also accept "1_000" and non-ASCII digits.
    if not re.fullmatch(r"-?[0-9]+", raw.strip()):
        raise InputError(f"environment variable {name}={raw!r} is not an integer")
    return int(raw.strip())


def _checked(env: DistEnv, names: tuple[str, str, str, str]) -> DistEnv:
    """Reject impossible combinations now, rather than hang in the rendezvous later."""
    rank_var, world_var, local_var, port_var = names
    if env.world_size < 1:
        raise InputError(f"environment variable {world_var}={env.world_size} must be >= 1")
    if not 0 <= env.rank < env.world_size:
        raise InputError(
            f"environment variable {rank_var}={env.rank} is outside 0..{env.world_size - 1} "
            f"({world_var}={env.world_size})"
        )
    if env.local_rank < 0:
        raise InputError(f"environment variable {local_var}={env.local_rank} must be >= 0")
    if not 0 < env.master_port < 65536:
        raise InputError(f"environment variable {port_var}={env.master_port} is not a TCP port")
    return env


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside [...] (Slurm host lists nest ranges in brackets)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise InputError(f"malformed Slurm node list {text!r}: unbalanced ']'")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise InputError(f"malformed Slurm node list {text!r}: unbalanced '['")
    parts.append(text[start:])
    return parts


_BRACKET = re.compile(r"\[([^\[\]]*)\]")


def first_host(nodelist: str) -> str:
    """First host of a Slurm host list, expanded here so that no `scontrol` call is needed.

    ``node[01-04,07]`` -> ``node01``; ``gpu-a[003,010-012],gpu-b5`` -> ``gpu-a003``. Every
    bracket group contributes its first value as written, so zero padding is kept.
    """
    text = nodelist.strip()
    if not text:
        raise InputError("empty Slurm node list")
    first = _split_top_level(text)[0].strip()

    def _first_of_group(match: re.Match[str]) -> str:
        value = match.group(1).split(",")[0].split("-")[0].strip()
        if not value:
            raise InputError(f"malformed Slurm node list {nodelist!r}: empty range")
        return value

    host = _BRACKET.sub(_first_of_group, first)
    if not host or "[" in host or "]" in host:
        raise InputError(f"malformed Slurm node list {nodelist!r}")
    return host


def detect_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """Read the launcher's variables (torchrun first, then Slurm, else one process)."""
    env = os.environ if environ is None else environ

    if "RANK" in env or "WORLD_SIZE" in env:
        # Both are set by torchrun; one without the other is a broken launch, not a hint.
        rank_ = _int_var(env, "RANK")
        world = _int_var(env, "WORLD_SIZE")
        # Launchers other than torchrun may omit LOCAL_RANK; fall back to Slurm's, then to
        # the global rank (right on a single node).
        if "LOCAL_RANK" in env:
            local = _int_var(env, "LOCAL_RANK")
        else:
            local = _int_var(env, "SLURM_LOCALID", rank_)
        return _checked(
            DistEnv(
                rank=rank_,
                world_size=world,
                local_rank=local,
                master_addr=env.get("MASTER_ADDR", "").strip() or "127.0.0.1",
                master_port=_int_var(env, "MASTER_PORT", _DEFAULT_PORT),
                launcher="torchrun",
            ),
            ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"),
        )

    if "SLURM_PROCID" in env:
        rank_ = _int_var(env, "SLURM_PROCID")
        # Inside an srun step SLURM_STEP_NUM_TASKS is the step's own size (srun -n1 inside a
        # 2-task allocation is one process). A plain sbatch shell only has SLURM_NTASKS:
        # missing or 1 means one process.
        world_var = "SLURM_STEP_NUM_TASKS" if "SLURM_STEP_NUM_TASKS" in env else "SLURM_NTASKS"
        world = _int_var(env, world_var, 1)
        local = _int_var(env, "SLURM_LOCALID", 0)
        addr = env.get("MASTER_ADDR", "").strip()
        if not addr:
            for name in ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"):
                if env.get(name, "").strip():
                    addr = first_host(env[name])
                    break
            else:
                addr = "127.0.0.1"
        if env.get("MASTER_PORT", "").strip():
            port_var = "MASTER_PORT"
            port = _int_var(env, "MASTER_PORT")
        elif env.get("SLURM_JOB_ID", "").strip():
            # Deterministic, so every task of the job agrees without talking; different jobs
            # sharing a node mostly land on different ports.
            port_var = "SLURM_JOB_ID"
            port = 20000 + _int_var(env, "SLURM_JOB_ID") % 10000
        else:
            port_var = "MASTER_PORT"
            port = _DEFAULT_PORT
        return _checked(
            DistEnv(
                rank=rank_,
                world_size=world,
                local_rank=local,
                master_addr=addr,
                master_port=port,
                launcher="slurm",
            ),
            ("SLURM_PROCID", world_var, "SLURM_LOCALID", port_var),
        )

    return DistEnv(
        rank=0,
        world_size=1,
        local_rank=0,
        master_addr="127.0.0.1",
        master_port=_DEFAULT_PORT,
        launcher="none",
    )


def is_initialized() -> bool:
    """True when a process group is live (torch builds without distributed say False)."""
    return dist.is_available() and dist.is_initialized()


def _cuda_index(device: torch.device, local_rank: int) -> int:
    if device.index is not None:
        return device.index
    # With --gpus-per-task=1 Slurm shows each task only its own GPU (index 0) while
    # SLURM_LOCALID is 0, 1, ...; wrap around instead of asking for a GPU that is hidden.
    count = torch.cuda.device_count()
    return local_rank % count if count else local_rank


def init(
    device: torch.device | str | None = None,
    environ: Mapping[str, str] | None = None,
    timeout_s: float = 1800,
) -> DistEnv:
    """Join the process group the launcher described; a no-op for a single process.

    ``device`` picks the backend: NCCL for CUDA, Gloo otherwise. ``None`` means CUDA when
    available. Returns the detected :class:`DistEnv`.
    """
    env = detect_env(environ)
    if env.world_size <= 1 or is_initialized():
        return env
    if not dist.is_available():
        raise ToolkitError("this torch build has no torch.distributed; run a single process")

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)

    # init_method="env://" reads these from os.environ; Slurm does not set them, and a
    # caller-supplied mapping is not os.environ.
    os.environ.update(
        {
            "RANK": str(env.rank),
            "WORLD_SIZE": str(env.world_size),
            "LOCAL_RANK": str(env.local_rank),
            "MASTER_ADDR": env.master_addr,
            "MASTER_PORT": str(env.master_port),
        }
    )

    kwargs: dict[str, Any] = {}
    if dev.type == "cuda":
        backend = "nccl"
        dev = torch.device("cuda", _cuda_index(dev, env.local_rank))
        # Before init, so NCCL's communicator and every later .cuda() use this GPU.
        torch.cuda.set_device(dev)
        # device_id (torch >= 2.3) binds the group to the GPU, avoiding barrier()'s guess.
        if "device_id" in inspect.signature(dist.init_process_group).parameters:
            kwargs["device_id"] = dev
    else:
        backend = "gloo"

    dist.init_process_group(
        backend,
        init_method="env://",
        rank=env.rank,
        world_size=env.world_size,
        timeout=timedelta(seconds=timeout_s),
        **kwargs,
    )
    return env


def cleanup(synchronise: bool = True) -> None:
    """Destroy the process group if there is one (safe to call unconditionally).

    ``synchronise`` (a command that finished on every rank) first waits at a barrier, so
    no rank tears its Gloo/NCCL connections down while another still writes its outputs
    and talks to it. After an error the other ranks may never arrive, so there it is False.
    """
    if is_initialized():
        if synchronise and dist.get_world_size() > 1:
            # a peer that failed and left makes it raise: then there is nobody to wait for
            with contextlib.suppress(RuntimeError):
                dist.barrier()
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if is_initialized() else detect_env().rank


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else detect_env().world_size


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if is_initialized():
        dist.barrier()


_REDUCE_OPS = {"sum": "SUM", "mean": "SUM", "max": "MAX", "min": "MIN"}


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """Reduce a copy of ``tensor`` across ranks; the input is left untouched.

    ``op`` is "sum", "mean", "max" or "min". "mean" sums then divides (ReduceOp.AVG exists
    only for NCCL), so integer inputs come back as floating point.
    """
    if op not in _REDUCE_OPS:
        raise ValueError(f"op must be one of {sorted(_REDUCE_OPS)}, got {op!r}")
    out = tensor.detach().clone()
    world = 1
    if is_initialized():
        world = dist.get_world_size()
        if world > 1:
            reduce_op = getattr(dist.ReduceOp, _REDUCE_OPS[op])
            if dist.get_backend() == "nccl" and out.device.type != "cuda":
                # NCCL reduces only CUDA tensors: round-trip CPU values (flags, counters).
                on_gpu = out.to(torch.device("cuda", torch.cuda.current_device()))
                dist.all_reduce(on_gpu, op=reduce_op)
                out = on_gpu.to(out.device)
            else:
                dist.all_reduce(out, op=reduce_op)
    if op == "mean":
        out = out.div_(world) if out.is_floating_point() else out / world
    return out


def average_gradients(params: Iterable[nn.Parameter]) -> None:
    """Average ``.grad`` across ranks in place, for parameters trained outside DDP (a loss
    DDP does not see). Every rank must pass the same parameters in the same order."""
    if world_size() <= 1:
        return
    for p in params:
        if p.grad is not None:
            p.grad.copy_(all_reduce(p.grad, "mean"))


def check_replicas(model: nn.Module, what: str = "model") -> None:
    """Raise if the ranks' copies of ``model`` have drifted apart (gradients not averaged
    somewhere). A cheap end-of-training guard: one all-reduce of per-tensor sums."""
    if world_size() <= 1:
        return
    sums = torch.stack([t.detach().double().sum() for t in unwrap(model).state_dict().values()
                        if t.is_floating_point()])  # fmt: skip
    spread = all_reduce(sums, "max") - all_reduce(sums, "min")
    scale = sums.abs().clamp_min(1.0)
    if bool((spread > 1e-6 * scale).any()):
        from shared.errors import ToolkitError

        raise ToolkitError(f"the {what} differs between ranks after training (replicas drifted)")


def all_gather_object(obj: Any) -> list[Any]:
    """One picklable object from each rank, in rank order (``[obj]`` for one process)."""
    if not is_initialized():
        return [obj]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s object on every rank (the argument is ignored on the others)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def wrap_ddp(model: nn.Module, device: torch.device | str, **kwargs: Any) -> nn.Module:
    """DistributedDataParallel around ``model`` when distributed, else ``model`` itself."""
    if not is_initialized() or dist.get_world_size() <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    model = model.to(dev)  # DDP broadcasts rank 0's parameters from where they live
    device_ids = [dev.index] if dev.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, **kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under a DDP wrapper (for saving, exporting, profiling)."""
    from torch.nn.parallel import DistributedDataParallel

    while isinstance(model, DistributedDataParallel):
        model = model.module
    return model


def rank0_print(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only, to stderr unless ``file=`` says otherwise."""
    if is_main():
        kwargs.setdefault("file", sys.stderr)
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def distributed_sampler(
    dataset: Any, shuffle: bool, seed: int = 0, drop_last: bool = False
) -> torch.utils.data.DistributedSampler | None:
    """A sampler giving each rank its own shard when distributed, else None.

    Pass it as ``DataLoader(sampler=...)`` (with ``shuffle=False`` there) and call
    ``sampler.set_epoch(epoch)`` each epoch so the shuffle changes.
    """
    if not is_initialized() or dist.get_world_size() <= 1:
        return None
    from torch.utils.data import DistributedSampler

    return DistributedSampler(
        dataset,
        num_replicas=dist.get_world_size(),
        rank=dist.get_rank(),
        shuffle=shuffle,
        seed=seed,
        drop_last=drop_last,
    )
