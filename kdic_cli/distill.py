"""Stage-wise modular distillation (SMoDi) with implicit or explicit supervision.

For student stage k, the *hybrid* codec is the frozen teacher with its stage k replaced
by the student's (teacher channels gathered at the stage input, the student's output
scattered back into the teacher's width with zeros for the channels the student does not
have, exactly what the assembled student's next stage sees). Only stage k trains:

- implicit (default): the codec's rate-distortion loss of the hybrid,
  ``lambda * 255^2 * MSE(x, x_hat) + bpp``;
- explicit: MSE between the student stage's output and the teacher stage's output on
  the kept channels, with the teacher's own stage input.

The entropy-model stage has no feature target: it is trained on the RD loss in both
modes. The aux loss of the student's entropy bottleneck (its quantiles) trains alongside.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from kdic_cli.stages import Stage

__all__ = [
    "Hybrid",
    "bpp_from_likelihoods",
    "explicit_loss",
    "make_hybrid",
    "make_optimizers",
    "rd_loss",
    "stage_modules",
]


def _tensors(obj: Any) -> Iterator[Tensor]:
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def bpp_from_likelihoods(likelihoods: Any, num_pixels: int) -> Tensor:
    """Estimated bits per pixel: sum of -log2 likelihoods over every latent."""
    total = sum(torch.log(lk).sum() for lk in _tensors(likelihoods))
    return total / (-math.log(2) * num_pixels)


@functools.cache
def _criterion(lmbda: float) -> nn.Module:
    from compressai.losses import RateDistortionLoss

    return RateDistortionLoss(lmbda=lmbda)


def rd_loss(out: dict[str, Any], x: Tensor, lmbda: float) -> dict[str, Tensor]:
    """compressai's MSE rate-distortion loss (its own `RateDistortionLoss`: bpp from the
    likelihoods + lmbda * 255^2 * MSE on images in [0, 1]), with short key names."""
    res = _criterion(float(lmbda))(out, x)
    return {"loss": res["loss"], "mse": res["mse_loss"], "bpp": res["bpp_loss"]}


class _Swap(nn.Module):
    """A student piece inside the teacher: gather the kept input channels, scatter the
    output back to the teacher's width (zeros elsewhere)."""

    def __init__(
        self, part: nn.Module, in_idx: list[int] | None, out_idx: list[int] | None,
        out_channels: int,
    ) -> None:  # fmt: skip
        super().__init__()
        self.part = part
        self.out_channels = out_channels
        self.register_buffer("in_idx", None if in_idx is None else torch.tensor(in_idx))
        self.register_buffer("out_idx", None if out_idx is None else torch.tensor(out_idx))

    def forward(self, x: Tensor) -> Tensor:
        if self.in_idx is not None:
            x = x.index_select(1, self.in_idx)
        y = self.part(x)
        if self.out_idx is None:
            return y
        full = y.new_zeros(y.shape[0], self.out_channels, *y.shape[2:])
        return full.index_copy(1, self.out_idx, y)


class _EBSwap(nn.Module):
    """The student's entropy bottleneck on the kept hyper-latent channels."""

    def __init__(self, eb: nn.Module, idx: list[int] | None, channels: int) -> None:
        super().__init__()
        self.eb = eb
        self.channels = channels
        self.register_buffer("idx", None if idx is None else torch.tensor(idx))

    def forward(self, z: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if self.idx is None:
            return self.eb(z, *args, **kwargs)
        z_hat, lk = self.eb(z.index_select(1, self.idx), *args, **kwargs)
        full = z_hat.new_zeros(z.shape)
        return full.index_copy(1, self.idx, z_hat), lk

    def _get_medians(self) -> Tensor:
        """The medians at the teacher's width (zero on the dropped channels): compressai's
        HyperLatentCodec re-quantises z around them (its straight-through path)."""
        med = self.eb._get_medians()
        if self.idx is None:
            return med
        return med.new_zeros(self.channels, *med.shape[1:]).index_copy(0, self.idx, med)


class _KeepChannels(nn.Module):
    """Zero the channels a narrower student drops (of z, after the teacher's h_a): a codec
    that re-quantises z itself, rather than taking the bottleneck's z_hat, must not pass
    the teacher's values of the dropped channels on to h_s."""

    def __init__(self, idx: list[int], channels: int) -> None:
        super().__init__()
        mask = torch.zeros(1, channels, 1, 1)
        mask[:, idx] = 1.0
        self.register_buffer("mask", mask)

    def forward(self, z: Tensor) -> Tensor:
        return z * self.mask.to(z.dtype)


def _has(model: nn.Module, path: str) -> bool:
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def _stage_out_channels(teacher: nn.Module, stage: Stage) -> int:
    seq = teacher.get_submodule(stage.transform)
    for m in reversed(list(seq[stage.start : stage.stop].modules())):
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            return m.out_channels
    raise ValueError(f"stage {stage.name} has no convolution")


def stage_modules(student: nn.Module, stage: Stage) -> list[str]:
    """Paths of the student modules that directly own the stage's parameters."""
    return sorted({p.rpartition(".")[0] for p in stage.params})


class Hybrid(nn.Module):
    """Teacher with one student stage inside; `trainable` are the student's parameters."""

    def __init__(self, codec: nn.Module, trainable: list[nn.Parameter]) -> None:
        super().__init__()
        self.codec = codec
        self._trainable = trainable

    def forward(self, x: Tensor) -> dict[str, Any]:
        return self.codec(x)

    def aux_loss(self) -> Tensor:
        return self.codec.aux_loss()


def make_hybrid(
    teacher: nn.Module, student: nn.Module, stage: Stage, maps: dict[str, Any]
) -> Hybrid:
    """The hybrid codec T_1..S_k..T_K for `stage` (student modules shared, not copied:
    training the hybrid trains the student). `maps` is build_student's info."""
    codec = copy.deepcopy(teacher)
    for p in codec.parameters():
        p.requires_grad_(False)
    if stage.transform is not None:
        bounds = maps.get("boundaries", {}).get(stage.transform)
        in_idx = bounds[stage.start] if bounds else None
        out_idx = bounds[stage.stop] if bounds else None
        part = nn.Sequential(*student.get_submodule(stage.transform)[stage.start : stage.stop])
        seq = codec.get_submodule(stage.transform)
        seq[stage.start] = _Swap(part, in_idx, out_idx, _stage_out_channels(teacher, stage))
        for i in range(stage.start + 1, stage.stop):
            seq[i] = nn.Identity()
    else:
        from compressai.entropy_models import EntropyBottleneck

        for path in stage_modules(student, stage):
            module = student.get_submodule(path)
            if isinstance(module, EntropyBottleneck):
                t_eb = teacher.get_submodule(path)
                idx = maps.get("eb", {}).get(path)
                module = _EBSwap(module, idx, t_eb.channels)
                parent = path.rpartition(".")[0]
                h_a = f"{parent}.h_a" if parent else "h_a"
                if idx is not None and _has(codec, h_a):
                    keep = _KeepChannels(idx, t_eb.channels)
                    _set(codec, h_a, nn.Sequential(codec.get_submodule(h_a), keep))
            _set(codec, path, module)
    names = set(stage.params)
    trainable = [p for n, p in student.named_parameters() if n in names]
    for p in trainable:
        p.requires_grad_(True)
    return Hybrid(codec, trainable)


def explicit_loss(
    teacher: nn.Module, student: nn.Module, stage: Stage, maps: dict[str, Any], x: Tensor
) -> Tensor:
    """Feature MSE of the student stage against the teacher stage, on the kept channels,
    both fed the teacher's own input to that stage."""
    seq = teacher.get_submodule(stage.transform)
    got: dict[str, Tensor] = {}
    h1 = seq[stage.start].register_forward_pre_hook(
        lambda _m, a: got.__setitem__("in", a[0].detach())
    )
    h2 = seq[stage.stop - 1].register_forward_hook(
        lambda _m, _a, o: got.__setitem__("out", o.detach())
    )
    try:
        with torch.no_grad():
            teacher(x)
    finally:
        h1.remove()
        h2.remove()
    bounds = maps.get("boundaries", {}).get(stage.transform)
    inp, target = got["in"], got["out"]
    if bounds and bounds[stage.start] is not None:
        inp = inp.index_select(1, torch.tensor(bounds[stage.start], device=inp.device))
    if bounds and bounds[stage.stop] is not None:
        target = target.index_select(1, torch.tensor(bounds[stage.stop], device=inp.device))
    part = student.get_submodule(stage.transform)[stage.start : stage.stop]
    return nn.functional.mse_loss(part(inp), target)


def make_optimizers(
    params: list[tuple[str, nn.Parameter]], lr: float, aux_lr: float
) -> tuple[torch.optim.Optimizer | None, torch.optim.Optimizer | None]:
    """compressai's split: Adam on the network, Adam on the entropy bottleneck quantiles."""
    net = [p for n, p in params if not n.endswith(".quantiles") and p.requires_grad]
    aux = [p for n, p in params if n.endswith(".quantiles")]
    return (
        torch.optim.Adam(net, lr=lr) if net else None,
        torch.optim.Adam(aux, lr=aux_lr) if aux else None,
    )
