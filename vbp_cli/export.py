"""ONNX export of a (pruned) model, checked against PyTorch with onnxruntime."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from shared.io import atomic_path


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


def check_onnx(model: nn.Module, path: Path, example: torch.Tensor) -> float:
    """Largest absolute difference between onnxruntime's and PyTorch's outputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = model.eval()(example).float().numpy()
    got = session.run(None, {"images": example.numpy()})[0]
    return float(np.abs(got - expected).max())
