"""Find the prunable MLPs of a network, and check each against its real structure.

Three kinds of MLP; in each the down projection's input is the vector of hidden neurons h:
- plain:  h = act(up(x))                  timm Mlp/ConvMlp, GPT-2 (Conv1D), BERT / HF ViT
- gated:  h = act(gate(x)) * up(x)        timm SwiGLU (fc1_g, fc1_x), LLaMA / Qwen2 / Mistral
- packed: h = act(a) * b, [a | b] = fc1(x)    timm GluMlp / SwiGLUPacked (one fc1, two halves)
Removing neuron i removes output i of every input layer (row i of both halves of a packed
fc1) and input i of the down projection; replacing h_i by its mean and folding that into the
down projection's bias is then exact in expectation.

That only holds when nothing sits between h and the down projection, so every candidate is
checked before anything is pruned: no parameters or buffers besides its projections (a GRN,
a LayerNorm over h, a router...), an element-wise activation, and, run on a random input,
exactly the output its kind's formula gives. A candidate that fails is refused with the
reason (never skipped, never pruned wrongly); mixture-of-experts layers are refused too.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn


class VBPError(ValueError):
    """Input the method cannot work with (unsupported model, mismatched statistics, a ratio
    out of range). A ValueError, so algorithm code stays free of the CLI's error types; the
    api turns it into the CLI's one-line exit 2."""


SUPPORTED = (
    "timm VisionTransformer family (ViT, DeiT, distilled DeiT, SwiGLU/GLU ViTs), Swin, "
    "ConvNeXt (both conv_mlp variants), Hugging Face transformers LLaMA/Qwen2/Mistral, GPT-2, "
    "BERT-style encoders and ViT, and any model whose blocks hold an fc1/act/fc2 MLP"
)

KINDS = ("plain", "gated", "packed")


# -- layers: Linear, 1x1 Conv2d, transformers' Conv1D (weight stored as (in, out)) -----------
def _is_conv1d(layer: nn.Module) -> bool:
    return type(layer).__name__ == "Conv1D" and hasattr(layer, "nf") and hasattr(layer, "nx")


def is_projection(layer: nn.Module) -> bool:
    """A layer vbp can slice: Linear, GPT-2's Conv1D, or a plain 1x1 convolution."""
    if isinstance(layer, nn.Linear) or _is_conv1d(layer):
        return True
    return (
        isinstance(layer, nn.Conv2d)
        and layer.kernel_size == (1, 1)
        and layer.stride == (1, 1)
        and layer.groups == 1
        and layer.padding in ((0, 0), "valid")
        and layer.dilation == (1, 1)
    )


def weight_matrix(layer: nn.Module) -> torch.Tensor:
    """The weight as an (out, in) matrix (a view, detached)."""
    w = layer.weight.detach()
    if _is_conv1d(layer):
        return w.t()
    return w.reshape(w.shape[0], -1)


# each side's width as (nn.Linear, GPT-2 Conv1D, 1x1 convolution) name it
_WIDTH_ATTRS = {
    "in": ("in_features", "nx", "in_channels"),
    "out": ("out_features", "nf", "out_channels"),
}


def _width(layer: nn.Module, side: str) -> int:
    linear, conv1d, conv = _WIDTH_ATTRS[side]
    if isinstance(layer, nn.Linear):
        return getattr(layer, linear)
    if _is_conv1d(layer):
        return int(getattr(layer, conv1d))
    return getattr(layer, conv)


def out_features(layer: nn.Module) -> int:
    return _width(layer, "out")


def in_features(layer: nn.Module) -> int:
    return _width(layer, "in")


def resized_layer(
    layer: nn.Module,
    in_features: int | None = None,
    out_features: int | None = None,
    bias: bool | None = None,
) -> nn.Module:
    """A fresh layer of `layer`'s type with other widths (and bias, if given)."""
    fin = in_features if in_features is not None else _width(layer, "in")
    fout = out_features if out_features is not None else _width(layer, "out")
    bias = layer.bias is not None if bias is None else bias
    kw = {"device": layer.weight.device, "dtype": layer.weight.dtype}
    if isinstance(layer, nn.Linear):
        return nn.Linear(fin, fout, bias=bias, **kw)
    if _is_conv1d(layer):
        if not bias:
            raise VBPError("a Conv1D layer always has a bias")
        new = type(layer)(fout, fin)
        return new.to(**kw)
    return nn.Conv2d(fin, fout, kernel_size=1, bias=bias, **kw)


def _set_matrix(layer: nn.Module, matrix: torch.Tensor) -> None:
    """Copy an (out, in) matrix into `layer`'s weight, whatever its layout."""
    if _is_conv1d(layer):
        layer.weight.copy_(matrix.t())
    else:
        layer.weight.copy_(matrix.reshape(layer.weight.shape))


# -- one MLP ---------------------------------------------------------------------------------
def _get(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path)


def _set(root: nn.Module, path: str, layer: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(_get(root, parent) if parent else root, leaf, layer)


@dataclass(frozen=True)
class MlpRef:
    """One prunable MLP: its module, its kind and where its layers are (paths relative to
    `module`). `inputs` are the layers whose outputs make the neurons (plain: (up,), gated:
    (gate, up), packed: (fc1,)); `down` reads the neurons."""

    name: str  # qualified module name, e.g. "blocks.3.mlp" or "model.layers.0.mlp"
    module: nn.Module
    kind: str = "plain"
    inputs: tuple[str, ...] = ("fc1",)
    down: str = "fc2"
    act: str = "act"

    @property
    def input_layers(self) -> list[nn.Module]:
        return [_get(self.module, p) for p in self.inputs]

    @property
    def down_layer(self) -> nn.Module:
        return _get(self.module, self.down)

    @property
    def fc1(self) -> nn.Module:
        """The first input layer (plain: up, gated: gate, packed: fc1)."""
        return _get(self.module, self.inputs[0])

    @property
    def fc2(self) -> nn.Module:
        return self.down_layer

    @property
    def hidden(self) -> int:
        return in_features(self.down_layer)

    def rows(self, keep: torch.Tensor) -> torch.Tensor:
        """Output rows of each input layer that belong to neurons `keep`."""
        if self.kind == "packed":
            return torch.cat([keep, keep + self.hidden])
        return keep

    @torch.no_grad()
    def slice(self, keep: torch.Tensor, down_bias: torch.Tensor | None) -> None:
        """Keep neurons `keep` (sorted indices) in place; the down projection gets the bias
        `down_bias` (None: no bias)."""
        dev = self.fc1.weight.device
        idx = keep.to(torch.long).to(dev)
        rows = self.rows(idx)
        for path, layer in zip(self.inputs, self.input_layers, strict=True):
            new = resized_layer(layer, out_features=rows.numel())
            _set_matrix(new, weight_matrix(layer).index_select(0, rows))
            if layer.bias is not None:
                new.bias.copy_(layer.bias.detach().index_select(0, rows))
            _set(self.module, path, new)
        down = self.down_layer
        new = resized_layer(down, in_features=idx.numel(), bias=down_bias is not None)
        _set_matrix(new, weight_matrix(down).index_select(1, idx.to(down.weight.device)))
        if down_bias is not None:
            new.bias.copy_(down_bias.to(new.bias))
        _set(self.module, self.down, new)

    def resize(self, width: int, *, down_bias: bool | None = None) -> None:
        """Replace the layers with ones of hidden width `width` (weights loaded after)."""
        per = 2 if self.kind == "packed" else 1
        for path, layer in zip(self.inputs, self.input_layers, strict=True):
            _set(self.module, path, resized_layer(layer, out_features=per * width))
        down = self.down_layer
        _set(self.module, self.down, resized_layer(down, in_features=width, bias=down_bias))


def resize_mlp(ref: MlpRef, width: int, *, down_bias: bool | None = None) -> None:
    ref.resize(width, down_bias=down_bias)


# -- finding and checking --------------------------------------------------------------------
def _candidate(name: str, module: nn.Module) -> MlpRef | None:
    """The MLP `module` looks like, from its attribute names alone (checked afterwards)."""
    has = lambda *attrs: all(hasattr(module, a) for a in attrs)  # noqa: E731
    if has("gate_proj", "up_proj", "down_proj", "act_fn"):  # LLaMA, Qwen2, Mistral
        return MlpRef(name, module, "gated", ("gate_proj", "up_proj"), "down_proj", "act_fn")
    if has("fc1_g", "fc1_x", "fc2", "act"):  # timm SwiGLU
        return MlpRef(name, module, "gated", ("fc1_g", "fc1_x"), "fc2", "act")
    if has("c_fc", "c_proj", "act"):  # GPT-2
        return MlpRef(name, module, "plain", ("c_fc",), "c_proj", "act")
    act = "act" if has("act") else "activation_fn"  # timm / HF ViT, CLIP
    if has("fc1", "fc2", act):  # timm Mlp / ConvMlp / GluMlp, HF ViTMLP, look-alikes
        fc1, fc2 = module.fc1, module.fc2
        if not (is_projection(fc1) and is_projection(fc2)):
            return MlpRef(name, module, act=act)  # refused by the check, with the reason
        kind = "packed" if out_features(fc1) == 2 * in_features(fc2) else "plain"
        return MlpRef(name, module, kind, act=act)
    inter, out = getattr(module, "intermediate", None), getattr(module, "output", None)
    if (
        inter is not None
        and out is not None
        and hasattr(inter, "dense")
        and hasattr(inter, "intermediate_act_fn")
        and hasattr(out, "dense")
    ):  # BERT-style encoders and HF ViT: the MLP spans two modules of the layer
        return MlpRef(
            name, module, "plain", ("intermediate.dense",), "output.dense",
            "intermediate.intermediate_act_fn",
        )  # fmt: skip
    return None


def _is_moe(module: nn.Module) -> bool:
    cls = type(module).__name__.lower()
    return hasattr(module, "experts") or any(
        k in cls for k in ("sparsemoe", "moeblock", "moelayer")
    )


def _tolerance(t: torch.Tensor) -> float:
    return 1e-2 if t.dtype in (torch.float16, torch.bfloat16) else 1e-4


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    tol = _tolerance(b)
    return bool(torch.allclose(a.float(), b.float(), rtol=tol, atol=tol * (1 + b.abs().max())))


def _elementwise(act: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> bool:
    """Does changing one neuron's input leave every other neuron's output alone?"""
    y = act(x)
    x2 = x.clone()
    x2[..., 0] += 1.0
    y2 = act(x2)
    return torch.equal(y[..., 1:], y2[..., 1:]) and y.shape == x.shape


@torch.no_grad()
def _check(ref: MlpRef) -> str | None:
    """Why `ref` is not the MLP its kind says, or None when it is."""
    layers = [*ref.input_layers, ref.down_layer]
    if not all(is_projection(layer) for layer in layers):
        return "its projections are not Linear, Conv1D or 1x1 convolutions"
    hidden = ref.hidden
    per = 2 if ref.kind == "packed" else 1
    if any(out_features(layer) != per * hidden for layer in ref.input_layers):
        return (
            f"input layers with {[out_features(x) for x in ref.input_layers]} outputs and a "
            f"down projection with {hidden} inputs"
        )
    act = _get(ref.module, ref.act)
    if not callable(act):
        return "its activation is not callable"
    # everything that holds parameters must be one of the projections: a GRN, a norm over
    # the hidden vector, a router or a learned activation between them changes the neurons
    allowed = {id(p) for layer in layers for p in layer.parameters()}
    unit = [ref.module] if ref.kind != "plain" or "." not in ref.down else []
    if not unit:  # BERT / HF ViT: the intermediate module and the output's dense layer
        unit = [_get(ref.module, ref.inputs[0].rpartition(".")[0])]
        post = _get(ref.module, ref.down.rpartition(".")[0])
        norm = getattr(post, "LayerNorm", None)
        allowed |= {id(p) for p in (norm.parameters() if norm is not None else [])}
        unit.append(post)
    for part in unit:
        for pname, p in [*part.named_parameters(), *part.named_buffers()]:
            if id(p) not in allowed:
                return f"it holds {pname} besides its projections (e.g. a GRN or a norm)"
    dev, dtype = ref.down_layer.weight.device, ref.down_layer.weight.dtype
    gen = torch.Generator().manual_seed(0)
    conv = isinstance(ref.fc1, nn.Conv2d)
    fin = in_features(ref.fc1)
    shape = (1, fin, 2, 3) if conv else (2, 3, fin)
    x = torch.randn(shape, generator=gen).to(dev, dtype)
    probe = torch.randn((2, 3, hidden), generator=gen).to(dev, dtype)
    if not _elementwise(act, probe):
        return "its activation is not element-wise"
    was = [m.training for m in unit]
    # the probe must not reach the user's hooks (a statistics collector, a profiler)
    hooked = [m for part in unit for m in part.modules()]
    saved = [(m._forward_hooks, m._forward_pre_hooks) for m in hooked]
    for m in hooked:
        m._forward_hooks, m._forward_pre_hooks = OrderedDict(), OrderedDict()
    for m in unit:
        m.eval()
    try:
        inputs = [layer(x) for layer in ref.input_layers]
        if ref.kind == "plain":
            h = act(inputs[0])
        elif ref.kind == "gated":
            h = act(inputs[0]) * inputs[1]
        else:
            dim = getattr(ref.module, "chunk_dim", -1)
            a, b = inputs[0].chunk(2, dim=dim)
            h = a * act(b) if getattr(ref.module, "gate_last", True) else act(a) * b
        expected = ref.down_layer(h)
        if len(unit) == 1:
            got = ref.module(x)
        else:  # intermediate(x), then output(h, residual) = [LayerNorm](dense(h) + residual)
            got_h = unit[0](x)
            if not _close(got_h, h):
                return "something sits between its activation and its down projection"
            residual = torch.randn(expected.shape, generator=gen).to(dev, dtype)
            got = unit[1](h, residual)
            norm = getattr(unit[1], "LayerNorm", None)
            expected = expected + residual
            expected = norm(expected) if norm is not None else expected
    except Exception as exc:  # noqa: BLE001 (any failure to run the formula: not this kind)
        return f"it does not run as a {ref.kind} MLP ({type(exc).__name__})"
    finally:
        for m, w in zip(unit, was, strict=True):
            m.train(w)
        for m, (fwd, pre) in zip(hooked, saved, strict=True):
            m._forward_hooks, m._forward_pre_hooks = fwd, pre
    if isinstance(got, tuple):
        got = got[0]
    if not isinstance(got, torch.Tensor) or not _close(got, expected):
        return f"its output is not down({_formula(ref.kind)}): something sits in between"
    return None


def _formula(kind: str) -> str:
    return {"plain": "act(up(x))", "gated": "act(gate(x)) * up(x)"}.get(kind, "act(a) * b")


def find_mlps(model: nn.Module) -> list[MlpRef]:
    """All prunable MLPs in module order. Raises VBPError (a ValueError) when there are none,
    when the model has mixture-of-experts layers, or when anything that looks like an MLP is
    not exactly one of the supported kinds (it would be pruned wrongly)."""
    found: list[MlpRef] = []
    claimed: set[int] = set()
    for name, module in model.named_modules():
        if _is_moe(module):
            raise VBPError(
                f"{name or type(model).__name__} is a mixture-of-experts layer "
                f"({type(module).__name__}): vbp does not prune experts; it supports {SUPPORTED}"
            )
        if id(module) in claimed:
            continue
        ref = _candidate(name, module)
        if ref is None:
            continue
        why = _check(ref)
        if why is not None:
            raise VBPError(
                f"{name} ({type(module).__name__}) cannot be pruned: {why}; vbp supports "
                f"{SUPPORTED}"
            )
        claimed.update(id(m) for m in ref.module.modules())
        found.append(ref)
    if not found:
        raise VBPError(
            f"no prunable MLP (fc1/act/fc2, gate/up/down or Conv1D) found in "
            f"{type(model).__name__}; vbp supports {SUPPORTED}"
        )
    return found


def mlp_widths(model: nn.Module) -> dict[str, int]:
    return {ref.name: ref.hidden for ref in find_mlps(model)}
