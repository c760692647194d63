"""Small reference classifiers trained here on offline data, cached on disk.

Tools need real trained models without network access: vbp prunes one, hello uses one as
its teacher, tomerge one to check that generated digits still show their class. They are
trained once per (architecture, data, recipe) and cached under $TOOLKIT_CACHE (default
~/.cache/efficient-learning-toolkit/reference).

A reference that ships in the repository (`references/<tool>/<timm_name>-<key>.safetensors`,
listed in references/MANIFEST.json, see shared.references) is used first: a fresh clone
trains nothing. `key` is the hash of the recipe, so a shipped file is only taken for the
recipe that built it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.checkpoints import load_checkpoint, save_checkpoint


def cache_dir() -> Path:
    from shared.cache import cache_dir as root

    return root("reference")


def recipe_of(
    timm_name: str,
    model_kwargs: dict[str, Any],
    *,
    data: str = "builtin:digits",
    epochs: float = 30,
    lr: float = 1e-3,
    batch_size: int = 64,
    weight_decay: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """The full recipe of a reference classifier (what its key hashes)."""
    return {
        "timm_name": timm_name,
        "model_kwargs": model_kwargs,
        "data": data,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "weight_decay": weight_decay,
        "seed": seed,
    }


def recipe_key(recipe: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def file_name(recipe: dict[str, Any]) -> str:
    """`<timm_name>-<key>.safetensors`: the same name in the cache and in references/."""
    return f"{recipe['timm_name']}-{recipe_key(recipe)}.safetensors"


def shipped_reference(recipe: dict[str, Any]) -> Path | None:
    """The shipped file of this recipe (any tool's references/ folder), when intact."""
    from shared.references import find, manifest

    wanted = file_name(recipe)
    for name, entry in manifest().items():
        if Path(entry["file"]).name == wanted:
            return find(name)
    return None


def reference_classifier(
    timm_name: str, model_kwargs: dict[str, Any], **recipe_args: Any
) -> tuple[Path, dict[str, Any]]:
    """Path of a trained checkpoint (safetensors, loadable as a plain state dict) and its
    metadata (architecture, recipe, val_top1): the shipped one, else the cached one, else
    trained now and cached (`recipe_args`: see `recipe_of`)."""
    recipe = recipe_of(timm_name, model_kwargs, **recipe_args)
    path = shipped_reference(recipe) or cache_dir() / file_name(recipe)
    if not path.exists():
        build_reference(recipe, path)
    _, meta = load_checkpoint(path, tool="reference")
    return path, meta


def build_reference(
    recipe: dict[str, Any], path: Path, *, threads: int | None = None
) -> dict[str, Any]:
    """Train the recipe's classifier and save it to `path`; returns its metadata. `threads`
    pins torch's CPU threads (a fixed count makes a rebuild bit-identical on the same CPU
    type: the reduction order of the kernels depends on it)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        model, val_top1 = _train(recipe)
    finally:
        torch.set_num_threads(previous)
    architecture = {"timm_name": recipe["timm_name"], "model_kwargs": recipe["model_kwargs"]}
    extra = {"recipe": recipe, "val_top1": val_top1}
    save_checkpoint(
        path, model.state_dict(), tool="reference", architecture=architecture, extra=extra
    )
    return {"architecture": architecture, **extra}


def load_reference(path: Path) -> nn.Module:
    """The cached model as a plain timm module in eval mode."""
    import timm

    tensors, meta = load_checkpoint(path, tool="reference")
    arch = meta["architecture"]
    model = timm.create_model(arch["timm_name"], pretrained=False, **arch["model_kwargs"])
    model.load_state_dict(tensors)
    return model.eval()


def _train(recipe: dict[str, Any]) -> tuple[nn.Module, float]:
    import timm

    from shared.classify import FitConfig, evaluate_classifier, fit_classifier
    from shared.console import get_console
    from shared.loaders import make_loader
    from shared.timm_data import classification_data

    torch.manual_seed(recipe["seed"])
    model = timm.create_model(recipe["timm_name"], pretrained=False, **recipe["model_kwargs"])
    train = classification_data(recipe["data"], model, "train", augment=True)
    val = classification_data(recipe["data"], model, "val")
    loader = make_loader(
        train.dataset, recipe["batch_size"], shuffle=True, seed=recipe["seed"], drop_last=True
    )
    cfg = FitConfig(
        epochs=recipe["epochs"],
        lr=recipe["lr"],
        weight_decay=recipe["weight_decay"],
        warmup_fraction=0.1,
        amp=False,
    )
    get_console().info(
        f"training reference model {recipe['timm_name']} on {recipe['data']} "
        f"({recipe['epochs']} epochs; cached for next time)"
    )
    device = torch.device("cpu")
    fit_classifier(model, loader, cfg, device=device, description="reference model")
    acc = evaluate_classifier(
        model, make_loader(val.dataset, 256, shuffle=False), device=device, amp=False
    )
    return model, acc["top1"]
