"""Hugging Face `transformers` models: read a local folder (config.json + weights), write a
pruned one.

A pruned model is written as a folder: config.json, model.safetensors (with vbp's header:
the hidden width of every MLP and where the model came from) and the source folder's
tokenizer / processor files. `vbp_cli.load_model` reads any such folder. When every MLP has
the same width (`--uniform`), config.json states it (intermediate_size, GPT-2's n_inner), so
`transformers`' own `from_pretrained` reads the folder too; a compensated LLaMA gets
`mlp_bias: true` (and zero gate/up biases). Qwen2 and Mistral have no MLP-bias option: their
compensated down_proj bias is kept by vbp's loader only (from_pretrained would drop it with an
"unexpected keys" warning), so the metrics say `transformers_loadable: false` then.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.errors import InputError

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"

# model_type -> (MLP width key in config.json, config key of an MLP bias or None)
FAMILIES: dict[str, tuple[str, str | None]] = {
    "llama": ("intermediate_size", "mlp_bias"),
    "qwen2": ("intermediate_size", None),
    "mistral": ("intermediate_size", None),
    "gpt2": ("n_inner", None),
    "bert": ("intermediate_size", None),
    "vit": ("intermediate_size", None),
}
SUPPORTED_HF = (
    "LLaMA (llama), Qwen2 (qwen2), Mistral (mistral), GPT-2 (gpt2), BERT (bert), ViT (vit)"
)
CAUSAL_LM = ("llama", "qwen2", "mistral", "gpt2")
# files of the source folder that a pruned folder keeps (tokenizer, processor, generation)
KEEP_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "preprocessor_config.json",
    "generation_config.json",
)


def is_hf_folder(spec: str | Path) -> bool:
    """A folder with a transformers config.json (one with a model_type: the config.json
    that vbp writes beside a pruned timm model, for timm, has none)."""
    path = Path(spec).expanduser() / CONFIG_FILE
    if not path.is_file():
        return False
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(config, dict) and "model_type" in config


def read_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"--model {folder}: unreadable {CONFIG_FILE} ({exc})") from None
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise InputError(
            f"--model {folder}: transformers model_type {model_type!r} is not supported; "
            f"vbp reads {SUPPORTED_HF}"
        )
    return config


def _model_class(config: dict[str, Any]) -> type:
    import transformers

    for name in config.get("architectures") or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    auto = transformers.AutoModelForCausalLM if config["model_type"] in CAUSAL_LM else None
    return auto or transformers.AutoModel


def _vbp_header(folder: Path) -> dict[str, Any] | None:
    """vbp's metadata when the folder's weights were written by vbp, else None."""
    from safetensors import safe_open

    from shared.checkpoints import METADATA_KEY

    path = folder / MODEL_FILE
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as f:
        raw = (f.metadata() or {}).get(METADATA_KEY)
    meta = json.loads(raw) if raw else None
    return meta if isinstance(meta, dict) and meta.get("tool") == "vbp" else None


def load_hf(folder: str | Path) -> tuple[nn.Module, dict[str, Any], dict[str, int] | None]:
    """The model of a transformers folder, its vbp architecture entry and its MLP widths
    (None: as the config says). A folder vbp wrote is rebuilt from its config with the
    recorded widths; any other goes through `from_pretrained` (local files only)."""
    import transformers

    from shared.checkpoints import load_checkpoint
    from vbp_cli.mlps import VBPError, find_mlps

    folder = Path(folder).expanduser()
    config = read_config(folder)
    cls = _model_class(config)
    spec = {"path": str(folder), "class": cls.__name__, "model_type": config["model_type"]}
    meta = _vbp_header(folder)
    widths = (meta or {}).get("architecture", {}).get("mlp_widths")
    if meta is None:
        try:
            model = cls.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, RuntimeError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise InputError(
                f"--model {folder}: transformers could not load it ({first})"
            ) from None
        return model.eval(), spec, None
    hf_config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = cls._from_config(hf_config) if hasattr(cls, "_from_config") else cls(hf_config)
    tensors, _ = load_checkpoint(folder / MODEL_FILE, tool="vbp")
    if widths:
        try:
            refs = {ref.name: ref for ref in find_mlps(model)}
        except VBPError as exc:
            raise InputError(f"--model {folder}: {exc}") from None
        for name, width in widths.items():
            if name not in refs:
                raise InputError(f"--model {folder}: MLP {name} is not in {cls.__name__}")
            ref = refs[name]
            ref.resize(int(width), down_bias=f"{name}.{ref.down}.bias" in tensors)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise InputError(
            f"{folder}: weights do not fit the stored architecture ({first})"
        ) from None
    return model.eval(), spec, widths


def save_hf(
    model: nn.Module,
    architecture: dict[str, Any],
    folder: Path,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write a (pruned) transformers model as a folder; returns what was written and whether
    `transformers.from_pretrained` reads it as the same model."""
    from shared.checkpoints import save_checkpoint
    from shared.io import write_bytes, write_json
    from vbp_cli.mlps import find_mlps

    folder = Path(folder)
    source = Path(architecture["hf"]["path"])
    model_type = architecture["hf"]["model_type"]
    width_key, bias_key = FAMILIES[model_type]
    refs = find_mlps(model)
    widths = {ref.name: ref.hidden for ref in refs}
    config = model.config.to_dict()
    tensors = dict(model.state_dict())
    info = loadability(model)
    uniform, added_bias = info["uniform"], info["added_mlp_bias"]
    if uniform:
        config[width_key] = next(iter(widths.values()))
    if added_bias and bias_key is not None:
        config[bias_key] = True
        for ref in refs:  # the config's MLP bias covers gate and up too: zero, exact
            for path, layer in zip(ref.inputs, ref.input_layers, strict=True):
                if layer.bias is None:
                    key = f"{ref.name}.{path}.bias"
                    tensors[key] = torch.zeros(layer.weight.shape[0], dtype=layer.weight.dtype)
        for ref in refs:  # a down projection left without a bias needs a zero one as well
            if ref.down_layer.bias is None:
                w = ref.down_layer.weight
                tensors[f"{ref.name}.{ref.down}.bias"] = torch.zeros(w.shape[0], dtype=w.dtype)
    architecture = {**architecture, "mlp_widths": widths}
    write_json(folder / CONFIG_FILE, config)
    save_checkpoint(
        folder / MODEL_FILE, tensors, tool="vbp", architecture=architecture, extra=extra
    )
    for name in KEEP_FILES:
        if (source / name).is_file() and source.resolve() != folder.resolve():
            write_bytes(folder / name, (source / name).read_bytes())
    return {"folder": str(folder), **info}


def loadability(model: nn.Module) -> dict[str, Any]:
    """Whether the folder of this (pruned) model loads with `transformers.from_pretrained`
    as the same model: every MLP the same width, and any bias compensation added to a down
    projection expressible in the config."""
    from vbp_cli.mlps import find_mlps

    model_type = model.config.model_type
    refs = find_mlps(model)
    uniform = len({ref.hidden for ref in refs}) == 1
    added = any(ref.down_layer.bias is not None for ref in refs) and not _config_has_bias(
        model.config, model_type
    )
    loadable = uniform and (not added or FAMILIES[model_type][1] is not None)
    why = None
    if not uniform:
        why = "MLP widths differ per layer (prune with --uniform)"
    elif not loadable:
        why = f"transformers' {model_type} has no MLP-bias option (use --no-compensation)"
    return {
        "uniform": uniform,
        "added_mlp_bias": added,
        "transformers_loadable": loadable,
        "transformers_note": why,
    }


def _config_has_bias(config: Any, model_type: str) -> bool:
    _, bias_key = FAMILIES[model_type]
    if model_type in ("gpt2", "bert", "vit"):
        return True  # these MLPs have biases already
    return bool(bias_key and getattr(config, bias_key, False))


def example_input(model: nn.Module, batch: int = 1, tokens: int = 32) -> torch.Tensor:
    """A positional input for a transformers model: token ids, or images for ViT."""
    config = model.config
    if config.model_type == "vit":
        size = config.image_size
        return torch.randn(batch, config.num_channels, size, size)
    tokens = min(tokens, getattr(config, "max_position_embeddings", None) or tokens)
    tokens = min(tokens, getattr(config, "n_positions", None) or tokens)
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, config.vocab_size, (batch, tokens), generator=gen)


def is_hf_model(model: nn.Module) -> bool:
    config = getattr(model, "config", None)
    return getattr(config, "model_type", None) in FAMILIES and hasattr(model, "save_pretrained")


def is_causal_lm(model: nn.Module) -> bool:
    return is_hf_model(model) and model.config.model_type in CAUSAL_LM
