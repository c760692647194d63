"""Codec models: compressai zoo architectures and S2C-Conv from a JSON spec, toolkit
checkpoints (safetensors + spec), foreign compressai checkpoints, and a model fingerprint.

A spec is a small dict, e.g. ``{"name": "mbt2018-mean", "N": 128, "M": 192}``,
``{"name": "s2c-conv", "config": {...}}``, or for a student built by channel selection
``{"name": "mbt2018-mean", "N": 192, "M": 320, "resize": {"g_a.0": [3, 96], ...}}``: the
base architecture, then the listed leaf modules rebuilt with (in, out) channels.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from shared.errors import InputError

__all__ = [
    "LAMBDAS",
    "MODEL_NAMES",
    "build_model",
    "describe",
    "fingerprint",
    "foreign_spec",
    "load_model",
    "make_spec",
    "model_spec",
    "resize_leaf",
    "save_model",
]

# compressai zoo quality -> lambda (MSE), as in compressai's training of the zoo.
LAMBDAS = {1: 0.0018, 2: 0.0035, 3: 0.0067, 4: 0.013, 5: 0.025, 6: 0.0483, 7: 0.0932, 8: 0.18}
MODEL_NAMES = (
    "bmshj2018-hyperprior",
    "mbt2018-mean",
    "mbt2018",
    "cheng2020-anchor",
    "elic2022-official",
    "s2c-conv",
)
_ZOO = ("bmshj2018-hyperprior", "mbt2018-mean", "mbt2018", "cheng2020-anchor")
CHECKPOINT_NAME = "model.safetensors"


def _classes() -> dict[str, type]:
    from compressai.models import (
        Cheng2020Anchor,
        Elic2022Official,
        JointAutoregressiveHierarchicalPriors,
        MeanScaleHyperprior,
        ScaleHyperprior,
    )

    from kdic_cli.s2c import S2CConv

    return {
        "bmshj2018-hyperprior": ScaleHyperprior,
        "mbt2018-mean": MeanScaleHyperprior,
        "mbt2018": JointAutoregressiveHierarchicalPriors,
        "cheng2020-anchor": Cheng2020Anchor,
        "elic2022-official": Elic2022Official,
        "s2c-conv": S2CConv,
    }


def _zoo_widths(name: str, quality: int) -> tuple[int, int]:
    from compressai.zoo.image import cfgs

    if name not in cfgs:
        raise InputError(f"--quality: {name} has no zoo qualities; give --N and --M")
    if quality not in cfgs[name]:
        raise InputError(f"--quality {quality}: valid for {name}: {sorted(cfgs[name])}")
    widths = cfgs[name][quality]
    return int(widths[0]), int(widths[-1])


def make_spec(
    name: str,
    *,
    N: int | None = None,
    M: int | None = None,
    quality: int | None = None,
    s2c: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A spec from a model name and N/M, a zoo quality, or an S2C-Conv config."""
    if name not in MODEL_NAMES:
        raise InputError(f"--teacher {name!r}: unknown model; valid: {', '.join(MODEL_NAMES)}")
    if name == "s2c-conv":
        from kdic_cli.s2c import s2c_config

        cfg = dict(s2c or {})
        if N is not None:
            cfg["N"] = N
        if M is not None:
            cfg["M"] = M
        return {"name": name, "config": s2c_config(**cfg)}
    if quality is not None:
        qn, qm = _zoo_widths(name, quality)
        N, M = N or qn, M or qm
    if name == "cheng2020-anchor":
        return {"name": name, "N": int(N or 128)}
    defaults = {"elic2022-official": (192, 320)}.get(name, (128, 192))
    return {"name": name, "N": int(N or defaults[0]), "M": int(M or defaults[1])}


def build_model(spec: dict[str, Any]) -> nn.Module:
    """A freshly initialised model from a spec (see the module docstring)."""
    classes = _classes()
    name = spec.get("name")
    if name not in classes:
        raise InputError(f"unknown model {name!r} in spec; valid: {', '.join(MODEL_NAMES)}")
    if name == "s2c-conv":
        model = classes[name](**spec["config"])
    elif name == "cheng2020-anchor":
        model = classes[name](N=spec["N"])
    else:
        model = classes[name](N=spec["N"], M=spec["M"])
    for path, shape in (spec.get("resize") or {}).items():
        _set_module(model, path, resize_leaf(model.get_submodule(path), *shape))
    return model


def model_spec(model: nn.Module) -> dict[str, Any]:
    spec = getattr(model, "kdic_spec", None)
    if spec is None:
        raise ValueError("model has no kdic_spec: build it with build_model / load_model")
    return spec


def _set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def resize_leaf(module: nn.Module, c_in: int, c_out: int | None = None) -> nn.Module:
    """An empty module of the same kind with other channel counts (weights to be filled).

    Convolutions take (in, out); GDN and EntropyBottleneck take one channel count."""
    from compressai.entropy_models import EntropyBottleneck
    from compressai.layers import GDN

    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        depthwise = module.groups > 1 and module.groups == module.in_channels
        if module.groups > 1 and not depthwise:
            raise ValueError("grouped convolutions other than depth-wise are not resizable")
        kwargs = {
            "kernel_size": module.kernel_size,
            "stride": module.stride,
            "padding": module.padding,
            "dilation": module.dilation,
            "groups": c_in if depthwise else 1,
            "bias": module.bias is not None,
        }
        if isinstance(module, nn.ConvTranspose2d):
            kwargs["output_padding"] = module.output_padding
        new = copy.deepcopy(module)  # keeps the subclass (e.g. MaskedConv2d) and its extras
        fresh = nn.ConvTranspose2d if isinstance(module, nn.ConvTranspose2d) else nn.Conv2d
        base = fresh(c_in, c_out, **kwargs)
        new.in_channels, new.out_channels, new.groups = c_in, c_out, kwargs["groups"]
        new.weight = base.weight
        new.bias = base.bias
        if hasattr(new, "mask"):  # masked (autoregressive) convs: keep the mask pattern
            new.mask = module.mask[:c_out, : base.weight.shape[1]].clone()
        return new
    if isinstance(module, GDN):
        return GDN(c_in, inverse=module.inverse)
    if isinstance(module, EntropyBottleneck):
        return EntropyBottleneck(
            c_in, filters=module.filters, tail_mass=module.tail_mass,
            init_scale=module.init_scale,
        )  # fmt: skip
    raise ValueError(f"cannot resize a {type(module).__name__}")


def fingerprint(model: nn.Module) -> bytes:
    """16 bytes identifying a model's architecture and every weight and CDF buffer.

    Call after `model.update()`: the bitstream depends on the quantised CDFs too."""
    h = hashlib.sha256()
    h.update(json.dumps(getattr(model, "kdic_spec", None), sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(tensor.shape)).encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.digest()[:16]


def save_model(path: str | Path, model: nn.Module, extra: dict[str, Any] | None = None) -> Path:
    """A toolkit checkpoint: safetensors weights (with CDF buffers) + the spec."""
    from shared.checkpoints import save_checkpoint
    from shared.distributed import unwrap

    model = unwrap(model)
    return save_checkpoint(
        path, model.state_dict(), tool="kdic", architecture=model_spec(model), extra=extra
    )


# Where compressai's `from_state_dict` reads N and M (and, for ELIC, whose loader keeps
# M=320, M from g_a's last convolution): a foreign checkpoint needs no --N/--M.
_WIDTH_KEYS = {
    "bmshj2018-hyperprior": (("N", "g_a.0.weight"), ("M", "g_a.6.weight")),
    "mbt2018-mean": (("N", "g_a.0.weight"), ("M", "g_a.6.weight")),
    "mbt2018": (("N", "g_a.0.weight"), ("M", "g_a.6.weight")),
    "cheng2020-anchor": (("N", "g_a.0.conv1.weight"),),
    "elic2022-official": (("N", "g_a.0.weight"), ("M", "g_a.13.weight")),
}
# entropy coder tables: sized by update(), resized by compressai's load_state_dict
CDF_BUFFERS = ("_quantized_cdf", "_offset", "_cdf_length", "scale_table")


def foreign_spec(arch: dict[str, Any], state: dict[str, torch.Tensor], source: str) -> dict:
    """The spec of a foreign checkpoint of `arch["name"]`: N and M read off its weights
    where `arch` leaves them out (an S2C-Conv spec is taken as given)."""
    name = arch["name"]
    if name not in _WIDTH_KEYS:
        return arch
    widths = {}
    for width, key in _WIDTH_KEYS[name]:
        if arch.get(width) is not None:
            widths[width] = arch[width]
        elif key in state:
            widths[width] = int(state[key].shape[0])
        else:
            raise InputError(f"{source}: no tensor {key}, not a {name} checkpoint")
    return make_spec(name, **widths)


def describe(spec: dict[str, Any]) -> str:
    """E.g. "mbt2018-mean N=128 M=192" (free-width students: "... with resized layers")."""
    parts = [spec.get("name", "?")] + [f"{k}={spec[k]}" for k in ("N", "M") if k in spec]
    return " ".join(parts) + (" with resized layers" if spec.get("resize") else "")


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Check every tensor's name and shape (one line naming the first misfit), then load
    with compressai's own `load_state_dict` (it resizes the CDF buffers)."""
    what = describe(getattr(model, "kdic_spec", None) or {})
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key.endswith(CDF_BUFFERS):
            continue
        if key not in state:
            raise InputError(f"{source}: weights do not fit {what}: no tensor {key} in the file")
        got, want = tuple(state[key].shape), tuple(tensor.shape)
        if got != want:
            raise InputError(
                f"{source}: weights do not fit {what}: {key} is {got} in the file, {want} "
                "in the model"
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise InputError(
            f"{source}: weights do not fit {what}: {extra[0]} (and {len(extra) - 1} more) "
            "not in the model"
        )
    try:
        model.load_state_dict(dict(state), strict=True)
    except (RuntimeError, KeyError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise InputError(f"{source}: weights do not fit {what} ({first})") from None


def _is_toolkit_file(path: Path) -> bool:
    """A safetensors file carrying toolkit metadata (else: plain foreign weights)."""
    from safetensors import SafetensorError, safe_open

    from shared.checkpoints import METADATA_KEY

    if path.suffix != ".safetensors":
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            return METADATA_KEY in (f.metadata() or {})
    except (SafetensorError, OSError, ValueError):  # load_checkpoint names the problem
        return True


def load_model(
    source: str | Path,
    *,
    arch: dict[str, Any] | None = None,
    pretrained: bool = False,
) -> tuple[nn.Module, dict[str, Any]]:
    """A model and its metadata from a toolkit checkpoint (file or run directory), a
    foreign compressai checkpoint (.pth/.pth.tar or plain .safetensors; `arch` names the
    architecture, N and M it leaves out are read off the weights), or, with `pretrained`,
    compressai's zoo download for `arch` (needs a network).

    The model is returned in eval mode with its entropy coder tables up to date."""
    if pretrained:
        model = _zoo_pretrained(arch or {})
        meta: dict[str, Any] = {"architecture": model.kdic_spec, "source": "compressai zoo"}
    else:
        path = Path(source)
        if path.is_dir():
            if not (path / CHECKPOINT_NAME).exists():
                raise InputError(f"{path}: no {CHECKPOINT_NAME} in this directory")
            path = path / CHECKPOINT_NAME
        if not path.exists():
            raise InputError(f"{path}: no such file")
        if _is_toolkit_file(path):
            from shared.checkpoints import load_checkpoint

            state, meta = load_checkpoint(path, tool="kdic")
            spec = meta["architecture"]
        else:
            from shared.checkpoints import load_state_dict

            if arch is None:
                raise InputError(
                    f"{path}: a foreign checkpoint; say its architecture with --arch "
                    "(e.g. --arch mbt2018-mean; N and M are read off the weights)"
                )
            state = load_state_dict(path)
            spec = foreign_spec(arch, state, str(path))
            meta = {"architecture": spec}
        model = build_model(spec)
        model.kdic_spec = spec
        _load_weights(model, state, str(path))
        meta["path"] = str(path)
    model.eval()
    model.update(force=True)
    return model, meta


def new_model(spec: dict[str, Any]) -> nn.Module:
    """A randomly initialised model carrying its spec (for training from scratch)."""
    model = build_model(spec)
    model.kdic_spec = spec
    return model


def _zoo_pretrained(spec: dict[str, Any]) -> nn.Module:
    from compressai.zoo import image_models

    name, quality = spec.get("name"), spec.get("quality")
    if name not in _ZOO or quality is None:
        raise InputError(
            f"--pretrained: compressai has weights for {', '.join(_ZOO)} with --quality 1-8"
        )
    try:
        model = image_models[name](quality=quality, metric="mse", pretrained=True, progress=False)
    except (OSError, RuntimeError, ValueError) as exc:  # URLError is an OSError
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"--pretrained: could not download compressai weights for {name} q{quality} "
            f"({first}); offline, pass a checkpoint file instead"
        ) from None
    N, M = _zoo_widths(name, quality)
    model.kdic_spec = {"name": name, "N": N} if name == "cheng2020-anchor" else {
        "name": name, "N": N, "M": M}  # fmt: skip
    return model
