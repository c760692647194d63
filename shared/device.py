"""`--device auto|cpu|cuda|cuda:N|mps`: pick where a command runs and say why."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from shared.errors import InputError


@dataclass(frozen=True)
class DeviceChoice:
    device: torch.device
    reason: str

    def __str__(self) -> str:
        return f"{self.device} ({self.reason})"


def _cuda_free_bytes(index: int) -> int:
    free, _total = torch.cuda.mem_get_info(index)
    return int(free)


def select_device(spec: str = "auto") -> DeviceChoice:
    """Resolve a device flag.

    `auto`: under a launcher (LOCAL_RANK or SLURM_LOCALID set) the GPU of this local rank,
    otherwise the CUDA GPU with the most free memory; then Apple MPS; then CPU.
    """
    spec = (spec or "auto").strip().lower()
    if spec == "auto":
        return _auto()
    if spec == "cpu":
        return DeviceChoice(torch.device("cpu"), "requested")
    if spec == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise InputError("--device mps: MPS is not available on this machine")
        return DeviceChoice(torch.device("mps"), "requested")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {spec}: CUDA is not available on this machine")
        if spec == "cuda":
            return _auto_cuda()
        try:
            index = int(spec.split(":", 1)[1])
        except ValueError:
            raise InputError(f"--device {spec}: expected cuda:N with an integer N") from None
        count = torch.cuda.device_count()
        if not 0 <= index < count:
            raise InputError(f"--device {spec}: this machine has {count} CUDA device(s)")
        return DeviceChoice(torch.device("cuda", index), "requested")
    raise InputError(f"--device {spec!r}: expected auto, cpu, cuda, cuda:N or mps")


def _launcher_local_rank() -> int | None:
    for var in ("LOCAL_RANK", "SLURM_LOCALID"):
        value = os.environ.get(var)
        if value is not None and value.strip().isdigit():
            return int(value)
    return None


def _auto_cuda() -> DeviceChoice:
    count = torch.cuda.device_count()
    local_rank = _launcher_local_rank()
    if local_rank is not None and count > 0:
        # One process per GPU: the launcher's local rank decides, never free memory,
        # or two ranks on one node could pick the same card.
        index = local_rank % count
        return DeviceChoice(torch.device("cuda", index), f"local rank {local_rank}")
    if count == 1:
        return DeviceChoice(torch.device("cuda", 0), "the only CUDA GPU")
    free = [_cuda_free_bytes(i) for i in range(count)]
    index = max(range(count), key=lambda i: free[i])
    gib = free[index] / 2**30
    return DeviceChoice(
        torch.device("cuda", index), f"most free memory of {count} GPUs, {gib:.1f} GiB"
    )


def _auto() -> DeviceChoice:
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return _auto_cuda()
    if hasattr(torch.backends, "mps") and torch.backends.mps.is_available():
        return DeviceChoice(torch.device("mps"), "Apple GPU, no CUDA")
    return DeviceChoice(torch.device("cpu"), "no CUDA or MPS device found")


def autocast(device: torch.device, enabled: bool = True) -> torch.autocast:
    """Mixed precision where it pays: bf16 when the GPU supports it, else fp16; off on CPU."""
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type if device.type != "mps" else "cpu", enabled=False)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels so a timer measures work, not launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
