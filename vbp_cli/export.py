"""Export a (pruned) model to files that run without vbp: ONNX, TorchScript, torch.export
(.pt2), and a folder timm's own loader reads (config.json beside model.safetensors).

Each export is loaded back the way a user without vbp loads it (onnxruntime,
`torch.jit.load`, `torch.export.load`, timm) and compared with the PyTorch model on a batch
size other than the one it was traced with, so a batch axis baked into the graph is caught.
"""

from __future__ import annotations

import io
import json
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from shared.io import atomic_path, atomic_write, write_bytes, write_text

FORMATS = ("onnx", "torchscript", "pt2", "timm")
SUFFIX = {"onnx": ".onnx", "torchscript": ".ts", "pt2": ".pt2", "timm": ""}
TIMM_CONFIG = "config.json"
TIMM_WEIGHTS = "model.safetensors"


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int = 18) -> Path:
    """Export with a dynamic batch axis; atomic (no half-written file if it fails)."""
    model = model.eval()
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return path


def export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """A traced TorchScript module (`torch.jit.load(path)`): no Python class needed to load."""
    model = model.eval()
    with atomic_path(path) as tmp, warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # jit is deprecated in favour of export; still loads
        torch.jit.save(torch.jit.trace(model, example), str(tmp))
    return path


def export_pt2(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """A torch.export program with a dynamic batch axis (`torch.export.load(path).module()`)."""
    from torch.export import Dim

    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(model, (example,), dynamic_shapes=({0: Dim.DYNAMIC},))
    buffer = io.BytesIO()  # torch.export.save warns on a file name not ending in .pt2
    torch.export.save(program, buffer)
    return write_bytes(path, buffer.getvalue())


def export_model(
    model: nn.Module,
    example: torch.Tensor,
    path: Path,
    fmt: str,
    *,
    opset: int = 18,
    timm_name: str = "",
    model_kwargs: dict[str, Any] | None = None,
) -> Path:
    """Write `model` in format `fmt` (see FORMATS; timm needs the model's timm name/kwargs)."""
    if fmt == "timm":
        return export_timm(model, timm_name, model_kwargs or {}, path)
    if fmt == "onnx":
        return export_onnx(model, example, path, opset)
    if fmt == "torchscript":
        return export_torchscript(model, example, path)
    if fmt == "pt2":
        return export_pt2(model, example, path)
    raise ValueError(f"unknown export format {fmt!r}; one of {', '.join(FORMATS)}")


def run_exported(path: Path, fmt: str, images: torch.Tensor) -> np.ndarray:
    """Logits of an exported file, loaded by its own runtime (what a user without vbp runs)."""
    if fmt == "timm":
        with torch.no_grad():
            return load_timm_folder(path)(images).float().numpy()
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"images": images.numpy()})[0]
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(path)) if fmt == "torchscript" else None
        if fmt == "pt2":  # from a buffer: the file may be a temporary one not named .pt2
            module = torch.export.load(io.BytesIO(Path(path).read_bytes())).module()
        if module is None:
            raise ValueError(f"unknown export format {fmt!r}")
        return module(images).float().numpy()


def check_export(model: nn.Module, path: Path, fmt: str, images: torch.Tensor) -> float:
    """Largest absolute difference between the exported file's and PyTorch's logits."""
    with torch.no_grad():
        expected = model.eval()(images).float().numpy()
    return float(np.abs(run_exported(path, fmt, images) - expected).max())


def check_onnx(model: nn.Module, path: Path, example: torch.Tensor) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's outputs."""
    return check_export(model, path, "onnx", example)


# -- timm's own loader -----------------------------------------------------------------------
def uniform_mlp_ratio(model: nn.Module) -> float | None:
    """The one hidden/input ratio of every MLP when they share it (timm's `mlp_ratio` can
    then describe the pruned model), else None (VBP's global ranking usually leaves uneven
    widths, which no timm keyword expresses)."""
    from vbp_cli.mlps import find_mlps, in_features

    ratios = set()
    for ref in find_mlps(model):
        if ref.kind != "plain":
            return None
        ratios.add(Fraction(ref.hidden, in_features(ref.input_layers[0])))
    if len(ratios) != 1:
        return None
    ratio = ratios.pop()
    # timm takes int(dim * mlp_ratio): half a neuron of slack survives float rounding
    return (ratio.numerator + 0.5) / ratio.denominator if ratio.denominator > 1 else float(ratio)


def timm_config(model: nn.Module, timm_name: str, model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The `config.json` timm reads from a folder (`timm.create_model("local-dir:DIR",
    pretrained=True)`, or a Hugging Face Hub repository), plus vbp's per-MLP widths.
    `loads_with_timm` says whether timm's kwargs alone rebuild this architecture."""
    from shared.timm_data import input_size
    from vbp_cli.mlps import find_mlps

    args = dict(model_kwargs)
    ratio = uniform_mlp_ratio(model)
    if ratio is not None:
        args["mlp_ratio"] = ratio
    loads = ratio is not None and _timm_builds_same_shapes(model, timm_name, args)
    if not loads:
        args.pop("mlp_ratio", None)
    base = dict(getattr(model, "pretrained_cfg", None) or {})
    keep = ("interpolation", "mean", "std", "crop_pct", "crop_mode", "first_conv", "classifier")
    pretrained_cfg = {k: base[k] for k in keep if k in base}
    pretrained_cfg["input_size"] = list(input_size(model))
    pretrained_cfg["num_classes"] = int(getattr(model, "num_classes", 0))
    return {
        "architecture": timm_name,
        "num_classes": int(getattr(model, "num_classes", 0)),
        "num_features": int(getattr(model, "num_features", 0)),
        "model_args": args,
        "pretrained_cfg": json.loads(json.dumps(pretrained_cfg, default=list)),
        "vbp": {
            "loads_with_timm": loads,
            "mlp_widths": {ref.name: ref.hidden for ref in find_mlps(model)},
        },
    }


def _timm_builds_same_shapes(model: nn.Module, timm_name: str, args: dict[str, Any]) -> bool:
    import timm

    try:
        with torch.device("meta"):
            rebuilt = timm.create_model(timm_name, pretrained=False, **args)
    except (TypeError, ValueError, RuntimeError):
        return False
    want = {k: v.shape for k, v in model.state_dict().items()}
    return want == {k: v.shape for k, v in rebuilt.state_dict().items()}


def export_timm(
    model: nn.Module, timm_name: str, model_kwargs: dict[str, Any], folder: Path
) -> Path:
    """`folder`/config.json (see `timm_config`) and `folder`/model.safetensors (the plain
    state dict): timm's folder layout, as on the Hugging Face Hub."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(folder / TIMM_WEIGHTS, lambda tmp: save_file(tensors, str(tmp), {"format": "pt"}))
    config = timm_config(model, timm_name, model_kwargs)
    write_text(folder / TIMM_CONFIG, json.dumps(config, indent=2) + "\n")
    return folder


def load_timm_folder(folder: Path) -> nn.Module:
    """What the README shows a user without vbp: timm's loader when its kwargs describe the
    model, else timm's model with each MLP's Linear layers made the recorded widths."""
    import timm
    from safetensors.torch import load_file

    folder = Path(folder)
    config = json.loads((folder / TIMM_CONFIG).read_text())
    if config["vbp"]["loads_with_timm"]:
        return timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    model = timm.create_model(config["architecture"], **config["model_args"])
    for name, width in config["vbp"]["mlp_widths"].items():
        mlp = model.get_submodule(name)
        mlp.fc1 = nn.Linear(mlp.fc1.in_features, width)
        mlp.fc2 = nn.Linear(width, mlp.fc2.out_features)
    model.load_state_dict(load_file(str(folder / TIMM_WEIGHTS)))
    return model.eval()
