"""Models: a timm name (+ weights) or a Hugging Face `transformers` folder (config.json),
and saving/loading pruned models.

A pruned timm model is saved as safetensors plus its architecture (timm name, kwargs and the
hidden width of every MLP), so `load_model(path)` rebuilds a plain dense `nn.Module`:
standard timm modules with smaller fc1/fc2, no masks, nothing from vbp needed to run it. A
pruned transformers model is saved as a folder (`vbp_cli.hf`): config.json, the weights with
the same header, and the tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.checkpoints import load_checkpoint, load_state_dict, read_metadata, save_checkpoint
from shared.errors import InputError, ToolkitError
from vbp_cli.mlps import find_mlps, resize_mlp

MODEL_FILE = "model.safetensors"


@dataclass
class Architecture:
    timm_name: str  # "" for a transformers model
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    mlp_widths: dict[str, int] | None = None  # None: unpruned
    hf: dict[str, Any] | None = None  # transformers: source folder, class, model_type

    def to_dict(self) -> dict[str, Any]:
        out = {
            "timm_name": self.timm_name,
            "model_kwargs": self.model_kwargs,
            "mlp_widths": self.mlp_widths,
        }
        return out | ({"hf": self.hf} if self.hf else {})


def example_input(model: nn.Module, batch: int = 1) -> torch.Tensor:
    """A positional example input: images for timm models and HF ViT, token ids for
    transformers language models and encoders."""
    from vbp_cli import hf

    if hf.is_hf_model(model):
        return hf.example_input(model, batch)
    from shared.timm_data import example_input as timm_example

    return timm_example(model, batch)


def saved_model_path(spec: str) -> Path | None:
    path = Path(spec).expanduser()
    if path.is_dir():
        candidate = path / MODEL_FILE
        if not candidate.exists():
            raise InputError(f"--model {path}: a directory without {MODEL_FILE}")
        return candidate
    if path.is_file():
        return path
    if spec.endswith((".safetensors", ".pth", ".pt", ".bin")) or "/" in spec:
        raise InputError(f"--model {spec}: no such file or directory")
    return None


def create_timm_model(name: str, kwargs: dict[str, Any], pretrained: bool = False) -> nn.Module:
    import timm

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:5]
        hint = f"; similar: {', '.join(close)}" if close else ""
        raise InputError(f"--model {name}: not a timm model name or a file{hint}")
    try:
        # Random initialisation is seeded, so that a model given without weights is the same
        # model in collect-stats, prune and evaluate (useful for tests and speed checks).
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as exc:
        raise InputError(f"--model-kwargs for {name}: {exc}") from None
    except (OSError, RuntimeError, ValueError) as exc:
        if pretrained:
            raise ToolkitError(
                f"could not load pretrained weights for {name} ({type(exc).__name__}; offline?): "
                "download them where there is network and pass --checkpoint PATH"
            ) from None
        raise


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a foreign checkpoint (.pth/.safetensors) strictly, with a one-line mismatch."""
    state = load_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            k = shapes[0]
            parts.append(
                f"{k} is {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the model"
            )
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise InputError(f"--checkpoint {path} does not match the model: {'; '.join(parts)}")
    model.load_state_dict(state)


def build_model(
    spec: str,
    *,
    checkpoint: Path | None = None,
    pretrained: bool = False,
    model_kwargs: dict[str, Any] | None = None,
) -> tuple[nn.Module, Architecture]:
    """`spec` is a timm model name, a transformers folder (config.json) or the path of a model
    that vbp wrote."""
    from vbp_cli import hf

    if hf.is_hf_folder(spec):
        if checkpoint or pretrained or model_kwargs:
            raise InputError(
                f"--model {spec} is a transformers folder: drop "
                "--checkpoint/--pretrained/--model-kwargs"
            )
        return load_model_with_arch(spec)
    saved = saved_model_path(spec)
    if saved is not None:
        if checkpoint or pretrained or model_kwargs:
            raise InputError(
                f"--model {spec} is a saved model: drop --checkpoint/--pretrained/--model-kwargs"
            )
        return load_model_with_arch(saved)
    kwargs = dict(model_kwargs or {})
    model = create_timm_model(spec, kwargs, pretrained=pretrained and checkpoint is None)
    if checkpoint is not None:
        load_weights(model, Path(checkpoint))
    return model.eval(), Architecture(spec, kwargs)


def save_model(
    model: nn.Module, arch: Architecture, path: Path, extra: dict[str, Any] | None = None
) -> Path:
    """Write `model`: a timm model to `path` (safetensors); a transformers model as a folder
    (`path` itself, or its parent when `path` names the model.safetensors inside it)."""
    arch.mlp_widths = {ref.name: ref.hidden for ref in find_mlps(model)}
    if arch.hf:
        from vbp_cli import hf

        path = Path(path)
        folder = path.parent if path.suffix == ".safetensors" else path
        hf.save_hf(model, arch.to_dict(), folder, extra)
        return folder / MODEL_FILE
    return save_checkpoint(
        path, model.state_dict(), tool="vbp", architecture=arch.to_dict(), extra=extra
    )


def load_model_with_arch(path: str | Path) -> tuple[nn.Module, Architecture]:
    from vbp_cli import hf

    path = Path(path)
    if not hf.is_hf_folder(path) and path.name == MODEL_FILE and hf.is_hf_folder(path.parent):
        path = path.parent
    if hf.is_hf_folder(path):
        model, spec, widths = hf.load_hf(path)
        return model, Architecture("", {}, widths, hf=spec)
    if path.is_dir():
        path = path / MODEL_FILE
    meta = read_metadata(path)
    if meta.get("tool") != "vbp" or "timm_name" not in meta.get("architecture", {}):
        raise InputError(f"{path}: not a model written by vbp")
    spec = meta["architecture"]
    arch = Architecture(spec["timm_name"], spec.get("model_kwargs") or {}, spec.get("mlp_widths"))
    model = create_timm_model(arch.timm_name, dict(arch.model_kwargs))
    if arch.mlp_widths:
        refs = {ref.name: ref for ref in find_mlps(model)}
        for name, width in arch.mlp_widths.items():
            if name not in refs:
                raise InputError(f"{path}: MLP {name} is not in {arch.timm_name}")
            resize_mlp(refs[name], int(width))
    tensors, _ = load_checkpoint(path, tool="vbp")
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise InputError(f"{path}: weights do not fit the stored architecture ({first})") from None
    return model.eval(), arch


def load_model(path: str | Path) -> nn.Module:
    """A model that vbp wrote (or any supported transformers folder), as a plain `nn.Module`
    (timm or transformers modules, dense, smaller MLPs)."""
    return load_model_with_arch(path)[0]
