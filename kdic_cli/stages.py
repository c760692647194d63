"""Stage partition of a codec, from its structure: analysis stages (g_a split at each
resolution change, or S2C-Conv's own stages), hyper-analysis, hyper-synthesis, synthesis
stages, and the entropy model (everything else: entropy bottleneck, context model,
entropy parameters). Every parameter belongs to exactly one stage."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from kdic_cli.student import find_transforms

__all__ = ["Stage", "check_partition", "partition"]


@dataclass(frozen=True)
class Stage:
    name: str  # e.g. "g_a.1", "h_a", "entropy"
    transform: str | None  # path of the Sequential it cuts, None for the entropy stage
    start: int = 0
    stop: int = 0
    params: tuple[str, ...] = ()


def _resamples(m: nn.Module) -> bool:
    for sub in m.modules():
        if isinstance(sub, (nn.ConvTranspose2d, nn.PixelShuffle)):
            return True
        if isinstance(sub, nn.Conv2d) and max(sub.stride) > 1:
            return True
    return False


def _split(seq: nn.Sequential) -> list[tuple[int, int]]:
    """Cut before each resolution change once the current piece already has one."""
    cuts, has = [0], False
    for i, child in enumerate(seq):
        if _resamples(child):
            if has:
                cuts.append(i)
            has = True
    cuts.append(len(seq))
    return list(zip(cuts[:-1], cuts[1:], strict=True))


def partition(model: nn.Module) -> list[Stage]:
    """Stages in training order: analysis, hyper-analysis, hyper-synthesis, synthesis,
    entropy model."""
    names = [n for n, _ in model.named_parameters()]
    stages: list[Stage] = []
    taken: set[str] = set()
    for path, seq in find_transforms(model).items():
        key = path.split(".")[-1]
        pieces = _split(seq) if key in ("g_a", "g_s") else [(0, len(seq))]
        for k, (a, b) in enumerate(pieces):
            prefixes = tuple(f"{path}.{i}." for i in range(a, b))
            params = tuple(n for n in names if n.startswith(prefixes))
            taken.update(params)
            label = f"{key}.{k}" if len(pieces) > 1 else key
            stages.append(Stage(label, path, a, b, params))
    rest = tuple(n for n in names if n not in taken)
    if rest:
        stages.append(Stage("entropy", None, 0, 0, rest))
    return stages


def check_partition(model: nn.Module, stages: list[Stage]) -> None:
    """Raise ValueError unless every parameter is in exactly one stage."""
    seen: dict[str, str] = {}
    for st in stages:
        for p in st.params:
            if p in seen:
                raise ValueError(f"parameter {p} is in stages {seen[p]} and {st.name}")
            seen[p] = st.name
    missing = [n for n, _ in model.named_parameters() if n not in seen]
    if missing:
        raise ValueError(f"parameters in no stage: {missing[:5]}")
