"""Model files: safetensors tensors plus JSON metadata; foreign `.pth` files without pickle code.

A toolkit checkpoint holds only tensors and a JSON header (tool, version, architecture
spec), so loading one never runs code. Foreign PyTorch files are read with
`torch.load(weights_only=True)`; one that needs arbitrary unpickling is refused.
"""

from __future__ import annotations

import argparse
import json
import pickle
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from shared import __version__
from shared.errors import InputError
from shared.io import atomic_write

METADATA_KEY = "toolkit"


def save_checkpoint(
    path: str | Path,
    tensors: dict[str, torch.Tensor],
    *,
    tool: str,
    architecture: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write `tensors` and a JSON header atomically. `architecture` must let the tool rebuild
    the module (e.g. timm name, kwargs, pruned widths)."""
    meta = {"tool": tool, "version": __version__, "architecture": architecture, **(extra or {})}
    # safetensors refuses shared storage and non-contiguous views: store plain copies.
    plain = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    header = {METADATA_KEY: json.dumps(meta)}
    return atomic_write(path, lambda tmp: save_file(plain, str(tmp), metadata=header))


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The JSON header of a toolkit checkpoint, without loading its tensors."""
    from safetensors import safe_open

    path = _existing(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    if not raw:
        raise InputError(f"{path}: a safetensors file without toolkit metadata")
    from shared.config import parse_json_object

    return parse_json_object(raw, f"{path}: damaged toolkit metadata")


def load_checkpoint(
    path: str | Path, *, tool: str | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and metadata of a toolkit checkpoint; `tool` checks which tool wrote it."""
    path = _existing(path)
    meta = read_metadata(path)
    if tool is not None and meta.get("tool") != tool:
        raise InputError(f"{path}: written by {meta.get('tool')!r}, not by {tool!r}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: corrupt checkpoint ({exc})") from None
    return tensors, meta


def load_state_dict(path: str | Path, *, ema: bool = True) -> dict[str, torch.Tensor]:
    """Weights from a foreign file: `.safetensors`, or a PyTorch `.pth/.pt/.bin` read with
    `weights_only=True`. Common wrappers (`state_dict`, `model`, `module.` prefixes) are
    unwrapped; a timm `train.py` checkpoint gives its EMA weights when it has them and `ema`
    is true (timm's own default), else its raw weights."""
    path = _existing(path)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise InputError(f"{path}: corrupt safetensors file ({exc})") from None
    return unwrap_state_dict(safe_torch_load(path), path, ema=ema)


# Classes that plain training scripts pickle beside their tensors and that carry no code:
# timm's train.py stores its argparse.Namespace of arguments (timm allow-lists it the same way).
_SAFE_GLOBALS = (argparse.Namespace,)


def safe_torch_load(path: str | Path) -> Any:
    """`torch.load` that never runs code: the one loader for every foreign PyTorch file
    (weights, metric networks, encoders). A file that needs code to unpickle is refused
    naming what it wanted; random bytes are reported as not a PyTorch file."""
    path = _existing(path)
    try:
        with torch.serialization.safe_globals(list(_SAFE_GLOBALS)):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        # a global the safe unpickler will not import = code it would have to run; anything
        # else (unknown opcodes, bad keys) = bytes that are no pickle at all
        wanted = re.search(r"GLOBAL ([\w.]+)", text)
        if wanted is not None or re.search(r"Unsupported (global|class)", text):
            what = f" ({wanted.group(1)})" if wanted else ""
            raise InputError(
                f"{path}: refused, loading it would run code{what}; re-save its state_dict "
                "with torch.save, or convert it to .safetensors"
            ) from None
        raise InputError(f"{path}: not a PyTorch file (unreadable pickle)") from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{path}: not a readable PyTorch file ({first})") from None


# Where training scripts keep their weights in a saved dict: raw, and averaged (EMA).
RAW_KEYS = ("state_dict", "model_state_dict", "model")
EMA_KEYS = ("state_dict_ema", "model_ema")


def unwrap_state_dict(obj: Any, path: str | Path, ema: bool = True) -> dict[str, torch.Tensor]:
    """The tensors of a loaded checkpoint object (see `load_state_dict`): a bare state_dict,
    or the one under a training script's key, EMA weights first when `ema`; DDP's `module.`
    prefix removed. For callers that also need the object's other entries."""
    for key in (*EMA_KEYS, *RAW_KEYS) if ema else (*RAW_KEYS, *EMA_KEYS):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path}: holds no state_dict of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if all(k.startswith("module.") for k in tensors):  # saved from DDP
        tensors = {k[len("module.") :]: v for k, v in tensors.items()}
    return tensors


def artefact_file(path: str | Path, name: str, what: str) -> Path:
    """`path` itself, or `path/name` when it is a run folder; one line when neither exists
    (`what` says which tool's output was expected, e.g. "a projector folder from hello")."""
    path = Path(path)
    if path.is_dir():
        path = path / name
    if not path.exists():
        raise InputError(f"{path}: not found (expected {what}, or its {name})")
    return path


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, expected a file")
    return path
