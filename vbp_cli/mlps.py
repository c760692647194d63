"""Find the prunable MLPs of a network: fc1 -> act -> fc2 with Linear or 1x1-conv layers.

An MLP qualifies when fc2's input is exactly the post-activation hidden vector (timm's
`Mlp`/`ConvMlp` with no normalisation between act and fc2): then replacing a hidden
neuron by its mean and folding it into fc2's bias is exact in expectation.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


class VBPError(ValueError):
    """Input the method cannot work with (unsupported model, mismatched statistics, a ratio
    out of range). A ValueError, so algorithm code stays free of the CLI's error types; the
    api turns it into the CLI's one-line exit 2."""


SUPPORTED = (
    "timm VisionTransformer family (ViT, DeiT, distilled DeiT), Swin, ConvNeXt (both "
    "conv_mlp variants), and any model whose blocks hold an fc1/act/fc2 MLP"
)


@dataclass(frozen=True)
class MlpRef:
    name: str  # qualified module name, e.g. "blocks.3.mlp"
    module: nn.Module

    @property
    def fc1(self) -> nn.Linear | nn.Conv2d:
        return self.module.fc1

    @property
    def fc2(self) -> nn.Linear | nn.Conv2d:
        return self.module.fc2

    @property
    def hidden(self) -> int:
        return _out_features(self.fc1)


def _is_pointwise(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Linear):
        return True
    return (
        isinstance(layer, nn.Conv2d)
        and layer.kernel_size == (1, 1)
        and layer.stride == (1, 1)
        and layer.groups == 1
        and layer.padding in ((0, 0), "valid")
        and layer.dilation == (1, 1)
    )


def _out_features(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _in_features(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


def find_mlps(model: nn.Module) -> list[MlpRef]:
    """All prunable MLPs in module order; raises VBPError (a ValueError) when there are
    none."""
    found: list[MlpRef] = []
    skipped: list[str] = []
    for name, module in model.named_modules():
        fc1, fc2 = getattr(module, "fc1", None), getattr(module, "fc2", None)
        if fc1 is None or fc2 is None or not hasattr(module, "act"):
            continue
        if not (_is_pointwise(fc1) and _is_pointwise(fc2)):
            skipped.append(f"{name} (fc1/fc2 not Linear or 1x1 conv)")
            continue
        if _out_features(fc1) != _in_features(fc2):
            skipped.append(
                f"{name} (gated MLP: fc1 has {_out_features(fc1)} outputs, "
                f"fc2 {_in_features(fc2)} inputs)"
            )
            continue
        norm = getattr(module, "norm", None)
        if norm is not None and not isinstance(norm, nn.Identity):
            skipped.append(f"{name} (normalisation between act and fc2)")
            continue
        found.append(MlpRef(name, module))
    if not found:
        why = f"; skipped: {', '.join(skipped[:3])}" if skipped else ""
        raise VBPError(
            f"no prunable fc1/act/fc2 MLP found in {type(model).__name__}; "
            f"vbp supports {SUPPORTED}{why}"
        )
    return found


def mlp_widths(model: nn.Module) -> dict[str, int]:
    return {ref.name: ref.hidden for ref in find_mlps(model)}


def resize_mlp(ref: MlpRef, width: int) -> None:
    """Replace fc1/fc2 with layers of hidden width `width` (weights to be loaded after)."""
    ref.module.fc1 = resized_layer(ref.fc1, out_features=width)
    ref.module.fc2 = resized_layer(ref.fc2, in_features=width)


def resized_layer(
    layer: nn.Module,
    in_features: int | None = None,
    out_features: int | None = None,
    bias: bool | None = None,
) -> nn.Module:
    """A fresh Linear/1x1 conv like `layer` with other widths (and bias, if given)."""
    fin = in_features if in_features is not None else _in_features(layer)
    fout = out_features if out_features is not None else _out_features(layer)
    bias = layer.bias is not None if bias is None else bias
    kw = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    if isinstance(layer, nn.Linear):
        return nn.Linear(fin, fout, bias=bias, **kw)
    return nn.Conv2d(fin, fout, kernel_size=1, bias=bias, **kw)
