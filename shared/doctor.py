"""`<tool> doctor`: what a user (or a bug report) needs to know about this machine."""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import torch

from shared import __version__
from shared.console import Console
from shared.deps import extra_status


def _cuda_facts() -> dict[str, Any]:
    facts: dict[str, Any] = {
        "torch_cuda_build": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "gpus": [],
    }
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(i)
            facts["gpus"].append(
                {
                    "index": i,
                    "name": torch.cuda.get_device_name(i),
                    "free_gib": round(free / 2**30, 2),
                    "total_gib": round(total / 2**30, 2),
                }
            )
    dist = torch.distributed
    facts["nccl_available"] = bool(dist.is_available() and dist.is_nccl_available())
    facts["gloo_available"] = bool(dist.is_available() and dist.is_gloo_available())
    if facts["nccl_available"] and torch.cuda.is_available():
        version = torch.cuda.nccl.version()
        facts["nccl_version"] = (
            ".".join(map(str, version)) if isinstance(version, tuple) else version
        )
    facts["mps_available"] = bool(
        hasattr(torch.backends, "mps") and torch.backends.mps.is_available()
    )
    return facts


def doctor_report(tool: str, device_spec: str = "auto") -> dict[str, Any]:
    from shared.device import select_device
    from shared.distributed import detect_env
    from shared.errors import ToolkitError

    spec = (device_spec or "auto").strip().lower()
    if spec not in ("auto", "cpu", "mps", "cuda") and not spec.startswith("cuda:"):
        select_device(spec)  # raises InputError (exit 2): not a device name at all
    try:
        choice = str(select_device(spec))
    except ToolkitError as exc:  # a real device this machine lacks: report, do not fail
        choice = f"unavailable: {exc}"
    try:
        env = detect_env()
        dist_env: dict[str, Any] = {
            "launcher": env.launcher,
            "rank": env.rank,
            "world_size": env.world_size,
            "local_rank": env.local_rank,
            "master": f"{env.master_addr}:{env.master_port}",
        }
    except ToolkitError as exc:
        dist_env = {"error": str(exc)}
    extras = extra_status(tool)
    return {
        "tool": tool,
        "toolkit_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        **_cuda_facts(),
        "device": choice,
        "distributed": dist_env,
        "extras": extras,
        "extras_complete": all(v is not None for v in extras.values()),
        "hf_hub_offline": os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0"),
    }


def print_doctor(report: dict[str, Any], console: Console) -> None:
    if console.json_mode:
        console.summary(report)
        return
    rows: list[tuple[str, Any]] = []
    for key, value in report.items():
        if key in ("extras", "distributed", "gpus"):
            continue
        rows.append((key, value))
    for gpu in report["gpus"]:
        rows.append(
            (
                f"gpu {gpu['index']}",
                f"{gpu['name']}, {gpu['free_gib']} / {gpu['total_gib']} GiB free",
            )
        )
    for key, value in report["distributed"].items():
        rows.append((f"distributed.{key}", value))
    for dist, version in report["extras"].items():
        rows.append((f"extra: {dist}", version or "MISSING"))
    console.table(f"{report['tool']} doctor", ["item", "value"], rows)
    if not report["extras_complete"]:
        console.warn(
            f"some dependencies of {report['tool']} are missing: "
            f"pip install 'efficient-learning-toolkit[{report['tool']}]'"
        )
