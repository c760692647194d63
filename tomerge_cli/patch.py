"""apply_patch / remove_patch: token merging on stock diffusers pipelines, through hooks.

Nothing of diffusers is copied or subclassed. Forward hooks on the denoiser (UNet or DiT)
count the steps and take the importance map from each step's output; hooks on every
spatial `BasicTransformerBlock` draw the matching from the block input, and hooks on its
`attn1` / `attn2` / `ff` merge their input and unmerge their output. The block's own
forward (ada_norm_single gates, positional embeddings, GLIGEN...) runs untouched, so
anything diffusers does around the attention keeps working; `remove_patch` drops the
hooks and the model is exactly the stock one again.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import sys
import warnings
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from tomerge_cli.constants import DOWNSAMPLES, MAX_RATIO, MODES
from tomerge_cli.cost import default_min_tokens, merge_pays
from tomerge_cli.merge import (
    Merge,
    Partition,
    check_ratio,
    grid_partition,
    importance_map,
    importance_partition,
    match_tokens,
    resize_importance,
    token_grid,
    tokens_removed,
)

_ATTR = "_tomerge"
# denoisers whose 5-D input and output are (B, F, C, H, W), frames before channels
FRAMES_FIRST = ("UNetSpatioTemporalConditionModel",)


@dataclass
class Settings:
    ratio: float = 0.5
    mode: str = "importance"
    max_downsample: int = 1
    merge_attn: bool = True
    merge_crossattn: bool = False
    merge_mlp: bool = False
    prune_steps: int = 2
    importance_start: int = 2
    blocks: tuple[int, ...] | None = None
    sx: int = 2
    sy: int = 2
    use_rand: bool = True
    dst_choice: str = "random"
    seed: int | None = None
    no_cfg: str = "fallback"
    importance: str = "cfg"
    skip_unprofitable: bool = True
    min_tokens: int | None = None
    frame_window: int = 1


def apply_patch(
    model: Any,
    ratio: float = 0.5,
    max_downsample: int = 1,
    sx: int = 2,
    sy: int = 2,
    use_rand: bool = True,
    merge_attn: bool = True,
    merge_crossattn: bool = False,
    merge_mlp: bool = False,
    *,
    mode: str = "importance",
    prune_steps: int = 2,
    importance_start: int = 2,
    blocks: list[int] | tuple[int, ...] | None = None,
    dst_choice: str = "random",
    seed: int | None = None,
    no_cfg: str = "fallback",
    importance: str = "cfg",
    skip_unprofitable: bool = True,
    min_tokens: int | None = None,
    frame_window: int = 1,
) -> Any:
    """Patch a diffusers pipeline (or its UNet / transformer) to merge tokens.

    A drop-in for `tomesd.apply_patch`: the same positional arguments in the same order
    (model, ratio, max_downsample, sx, sy, use_rand, merge_attn, merge_crossattn,
    merge_mlp), so `import tomerge_cli as tomesd` keeps tomesd's calls working; the
    options tomesd lacks are keyword-only. mode="importance" is the paper's method, "tome"
    our random-grid ToMe baseline, "none" patches nothing (a control). Returns `model`.

    ratio: fraction of tokens removed in each merged layer (0 to 0.75).
    max_downsample: merge blocks whose token grid is at most this many times coarser than
      the finest one (1: full resolution only; SDXL has no attention there, use 2). A
      setting that leaves no block to merge warns (once) instead of silently doing nothing.
    sx, sy: the cell of the random grid (one destination per cell) of the grid steps and
      of mode="tome"; use_rand=False puts the destination at the cell's top-left.
    merge_attn / merge_crossattn / merge_mlp: which layers of a block see merged tokens.
    prune_steps: the first steps drop the grid-matched tokens instead of averaging them
      (importance mode: no map exists yet).
    importance_start: the step from which importance merging starts (needs the previous
      step's map); the steps between prune_steps and it use grid merging.
    blocks: indices of the spatial transformer blocks to patch, in module order (default:
      all for UNets; the middle half for DiTs, e.g. 7-20 of PixArt's 28).
    dst_choice: "random" (default) or "topk" destinations from the importance pool.
    seed: seed of the destination sampling; default derived from the first step's latents,
      so the pipeline's own seed fixes the image.
    no_cfg: without classifier-free guidance there is no importance map: "fallback" (grid
      merging, with a warning) or "error".
    importance: the importance signal. "cfg" (the paper): |eps_cond - eps_uncond| of the
      previous step, needs a CFG batch. "step-delta": |eps_t - eps_{t-1}| per token, how
      much the prediction changed between the two previous steps, for guidance-distilled
      (Flux-dev) and turbo / LCM models that run no CFG batch; the first two steps of a run
      use the grid. "auto": "cfg" when the batch is a CFG pair, else "step-delta".
    skip_unprofitable: leave a block call unmerged where merging would cost more than it
      saves: fewer image tokens in its attention than `min_tokens`, by default the measured
      break-even of the block's width on its device (tomerge_cli.cost). The calls
      skipped are counted in stats["skipped_unprofitable"]. False merges every block.
    min_tokens: a fixed token threshold instead of the width's break-even (0: merge all).
    frame_window: video transformers (Wan): merge within each frame (1, the default) or
      within groups of this many neighbouring frames (a token may merge into a destination
      of another frame of its group); the frame count must be a multiple of it.

    Diffusion transformers (tomerge_cli.dit): SD3 / SD3.5 (JointTransformerBlock), Flux.1
    (FluxTransformerBlock, FluxSingleTransformerBlock), Wan 2.x (WanTransformerBlock) and
    Sana (SanaTransformerBlock) merge image tokens only, around the self-attention (and MLP
    with merge_mlp); rotary rows (Flux, Wan) follow the kept tokens. Other transformer
    blocks raise a ValueError naming the supported families.
    """
    arguments = dict(locals())  # first: the parameters only
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if no_cfg not in ("fallback", "error"):
        raise ValueError(f"no_cfg must be 'fallback' or 'error', got {no_cfg!r}")
    if max_downsample not in DOWNSAMPLES:
        raise ValueError(f"max_downsample must be 1, 2, 4 or 8, got {max_downsample}")
    if prune_steps < 0 or importance_start < 0:
        raise ValueError("prune_steps and importance_start must be >= 0")
    if min_tokens is not None and min_tokens < 0:
        raise ValueError(f"min_tokens must be >= 0, got {min_tokens}")
    if frame_window < 1:
        raise ValueError(f"frame_window must be >= 1, got {frame_window}")
    if sx < 1 or sy < 1:
        raise ValueError(f"sx and sy must be >= 1, got sx={sx}, sy={sy}")
    if ratio > MAX_RATIO and sx * sy > 4:  # tomesd allows 1 - 1 / (sx * sy)
        raise ValueError(
            f"ratio must be in [0, {MAX_RATIO}], got {ratio}: tomerge keeps a quarter of the "
            f"tokens as destinations whatever sx and sy (tomesd allows up to "
            f"{1 - 1 / (sx * sy):.3g} with sx={sx}, sy={sy})"
        )
    # every Settings field is an argument of the same name
    values = {f.name: arguments[f.name] for f in fields(Settings)}
    values.update(ratio=check_ratio(ratio), blocks=tuple(blocks) if blocks is not None else None)
    from tomerge_cli.dit import check_importance, make_merger  # imports this module

    values["importance"] = check_importance(importance)
    settings = Settings(**values)
    remove_patch(model)
    net = denoiser(model)
    patcher = make_merger(net, settings)
    patcher.watch_scheduler(getattr(model, "scheduler", None))
    setattr(net, _ATTR, patcher)
    _forget_compiled_code()
    return model


def remove_patch(model: Any) -> Any:
    """Remove every hook apply_patch added; the model is the stock one again. Takes what
    apply_patch took (a pipeline or its UNet / transformer), like tomesd.remove_patch."""
    net = denoiser(model)
    patcher = getattr(net, _ATTR, None)
    if patcher is not None:
        patcher.remove()
        delattr(net, _ATTR)
        _forget_compiled_code()
    return model


def _forget_compiled_code() -> None:
    """torch.compile does not guard on module hooks (dynamo's skip_nnmodule_hook_guards), so
    code compiled before a patch would run without its hooks, and code compiled with them
    would keep merging after remove_patch: drop compiled code, the next call recompiles."""
    dynamo = sys.modules.get("torch._dynamo")
    if dynamo is not None:
        dynamo.reset()


def get_merger(pipe: Any) -> TokenMerger | None:
    """The active patch (its `stats` say what was merged), or None."""
    return getattr(denoiser(pipe), _ATTR, None)


def _uncompiled(model: nn.Module) -> nn.Module:
    """The module torch.compile(model) wraps (its hooks run inside the compiled call)."""
    return getattr(model, "_orig_mod", model)


def denoiser(pipe: Any) -> nn.Module:
    """The pipeline's UNet or transformer (or the model itself)."""
    for name in ("unet", "transformer"):
        model = getattr(pipe, name, None)
        if isinstance(model, nn.Module):
            return _uncompiled(model)
    if isinstance(pipe, nn.Module):
        return _uncompiled(pipe)
    raise ValueError(
        f"{type(pipe).__name__} has no `unet` or `transformer`: tomerge patches diffusers "
        "pipelines (or their UNet / transformer)"
    )


def unet_levels(model: nn.Module) -> dict[int, int]:
    """id(module) -> downsample level (1 = full resolution) of every module inside a UNet's
    down / mid / up blocks (diffusers' layout); empty for other models."""
    down, up = getattr(model, "down_blocks", None), getattr(model, "up_blocks", None)
    if not isinstance(down, nn.ModuleList) or not isinstance(up, nn.ModuleList):
        return {}
    levels: dict[int, int] = {}
    level = 1
    for block in down:
        levels.update((id(m), level) for m in block.modules())
        if getattr(block, "downsamplers", None):
            level *= 2
    mid = getattr(model, "mid_block", None)
    if isinstance(mid, nn.Module):
        levels.update((id(m), level) for m in mid.modules())
    for block in up:  # an up block upsamples at its end
        levels.update((id(m), level) for m in block.modules())
        if getattr(block, "upsamplers", None):
            level = max(level // 2, 1)
    return levels


def spatial_blocks(model: nn.Module) -> list[nn.Module]:
    """The BasicTransformerBlocks that attend over image tokens, in module order. Temporal
    blocks (AnimateDiff motion modules, video transformers) attend across frames and are
    left alone."""
    from diffusers.models.attention import BasicTransformerBlock

    found = []
    for name, module in model.named_modules():
        if not isinstance(module, BasicTransformerBlock):
            continue
        path = name.lower()
        if "motion_module" in path or "temporal" in path:
            continue
        found.append(module)
    return found


class _Step:
    """What one denoising step shares across blocks."""

    def __init__(self) -> None:
        self.index = -1
        self.timestep: float | None = None
        self.cfg = False
        self.partitions: dict[tuple[int, int], tuple[Partition, bool]] = {}
        self.merged_before = 0  # stats["merged_calls"] when the step started
        self.skipped_before = 0  # stats["skipped_unprofitable"] when the step started
        self.skipped_levels: set[int] = set()  # downsample levels above max_downsample
        self.why_not: set[str] = set()  # other reasons a block was not merged


class TokenMerger:
    """The hooks of one patched model and the state they share."""

    def __init__(self, model: nn.Module, settings: Settings) -> None:
        self.model = model
        self.settings = settings
        self.handles: list[Any] = []
        self.step = _Step()
        self.importance: torch.Tensor | None = None
        self.generator: torch.Generator | None = None
        self.latent_hw: tuple[int, int] | None = None
        config = getattr(model, "config", None)
        patch = getattr(config, "patch_size", None) or 1  # Wan: (frames, height, width)
        self.patch = int(patch[-1] if isinstance(patch, (tuple, list)) else patch)
        self.channels = getattr(config, "in_channels", None)
        # the noisy latents lead the input channels; what follows (SVD's image latents,
        # inpainting masks, Flux Fill's masked image) may differ between the CFG halves
        out_channels = getattr(config, "out_channels", None) or self.channels
        self.latent_channels = min(self.channels or 0, out_channels or 0) or None
        self.frames_first = type(model).__name__ in FRAMES_FIRST
        self.stats: dict[str, Any] = {
            "merged_calls": 0,
            "tokens_in": 0,
            "tokens_kept": 0,
            "partitions": {"importance": 0, "grid": 0, "grid_prune": 0},
            "skipped_unprofitable": 0,
        }
        self._warned: set[str] = set()
        self._signature = inspect.signature(model.forward)
        self._first_parameter = next(iter(self._signature.parameters), None)
        self.blocks = self._select_blocks(spatial_blocks(model))
        if settings.mode == "none" or settings.ratio == 0:
            return  # nothing to merge: leave the model without hooks
        # idle: a call on input of a shape whose every block call the cost model skipped
        # runs none of the per-step work (timestep read, CFG check, importance map: host
        # syncs and kernels that cost a small GPU pipeline a few percent for nothing)
        self._call_shape: tuple | None = None
        self._idle_shape: tuple | None = None
        # the per-step bookkeeping reads values on the host and draws from generators: under
        # torch.compile it runs eagerly instead of breaking the graph at every such read
        step_hook, after_step_hook = map(
            torch.compiler.disable, (self._step_hook, self._after_step_hook)
        )
        self.handles.append(model.register_forward_pre_hook(step_hook, with_kwargs=True))
        self.handles.append(model.register_forward_hook(after_step_hook))
        for block in self.blocks:
            self._hook_block(block)
        self._check_levels()

    # -- which blocks ------------------------------------------------------------
    def _select_blocks(self, blocks: list[nn.Module]) -> list[nn.Module]:
        if not blocks:
            raise ValueError(
                f"{type(self.model).__name__} has no spatial diffusers BasicTransformerBlock; "
                "tomerge merges tokens in the self-attention of those blocks (Stable "
                "Diffusion, SDXL, PixArt, AnimateDiff and other pipelines built from them)"
            )
        wanted = self.settings.blocks
        if wanted is None and self.patch > 1 and len(blocks) >= 8:
            n = len(blocks)  # a DiT: its first and last blocks are the most sensitive
            wanted = tuple(range(n // 4, n - n // 4))
        if wanted is None:
            return blocks
        bad = [i for i in wanted if not 0 <= i < len(blocks)]
        if bad:
            raise ValueError(
                f"blocks {bad} out of range: the model has {len(blocks)} spatial "
                f"transformer blocks (0-{len(blocks) - 1})"
            )
        return [blocks[i] for i in sorted(set(wanted))]

    def _check_levels(self) -> None:
        """Warn now when no patched block runs at a level max_downsample allows: SDXL's
        full-resolution stage has no transformer block, so tomesd's default of 1 merges
        nothing there (tomesd says nothing)."""
        levels = unet_levels(self.model)
        found = sorted({levels[id(b)] for b in self.blocks if id(b) in levels})
        limit = self.settings.max_downsample
        if not found or found[0] <= limit:
            return
        self._warn_once(
            "nomerge",
            f"tomerge: no layer is patched: the transformer blocks of "
            f"{type(self.model).__name__} work at downsample {', '.join(map(str, found))} "
            f"and max_downsample={limit} merges only up to {limit} (SDXL's full-resolution "
            f"stage has no transformer blocks); use max_downsample={found[0]}",
            stacklevel=6,  # apply_patch's caller
        )

    def _hook_matching(self, block: nn.Module, match: Any, state: dict[str, Any]) -> None:
        """`match` (a pre-hook that puts the block's merge in `state`) before the block, and
        the merge dropped when the block is done (`release_merge`)."""
        self.handles.append(block.register_forward_pre_hook(match, with_kwargs=True))
        self.handles.append(block.register_forward_hook(release_merge(state)))

    def _hook_block(self, block: nn.Module) -> None:
        s = self.settings
        state: dict[str, Merge | None] = {"merge": None}
        self._hook_matching(block, self._block_hook(state), state)
        layers = [
            (getattr(block, "attn1", None), s.merge_attn),
            (getattr(block, "attn2", None), s.merge_crossattn),
            (
                getattr(block, "ff", None),
                s.merge_mlp and getattr(block, "_chunk_size", None) is None,
            ),
        ]
        for layer, on in layers:
            if layer is None or not on:
                continue
            self.handles.append(
                layer.register_forward_pre_hook(_merge_input(state), with_kwargs=True)
            )
            self.handles.append(layer.register_forward_hook(_unmerge_output(state)))

    def watch_scheduler(self, scheduler: Any) -> None:
        """A pipeline calls scheduler.set_timesteps once per generation: that starts a new
        run (step 0, no importance map, generator reseeded) even when the timesteps of two
        runs are the same. Without it, a timestep going back up marks the new run."""
        original = getattr(scheduler, "set_timesteps", None)
        if original is None or not self.handles:
            return

        # wraps: pipelines inspect set_timesteps' signature (Flux asks whether it takes
        # `sigmas`), so the wrapper must show the original's parameters
        @functools.wraps(original)
        def set_timesteps(*args: Any, **kwargs: Any) -> Any:
            self.step.timestep = None
            return original(*args, **kwargs)

        scheduler.set_timesteps = set_timesteps
        self._scheduler = scheduler

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        scheduler = getattr(self, "_scheduler", None)
        if scheduler is not None and "set_timesteps" in vars(scheduler):
            del scheduler.set_timesteps  # the class method shows through again

    # -- per step ----------------------------------------------------------------
    def _step_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        # the latents are forward's first parameter (`sample` or `hidden_states`); read
        # directly, so an idle call binds no signature
        sample = args[0] if args else kwargs.get(self._first_parameter)
        shape = (tuple(sample.shape), sample.device) if isinstance(sample, torch.Tensor) else None
        self._call_shape = shape
        if shape is None or shape != self._idle_shape:
            self._on_step(self._signature.bind_partial(*args, **kwargs).arguments)

    def _after_step_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        shape = self._call_shape
        if shape is not None and shape == self._idle_shape:
            return
        self._after_step(module, args, output)
        # merging nothing is decided by shapes alone (cost model, grids, levels), so a step
        # that merged nothing and skipped a block as unprofitable repeats on this shape
        if (
            self.stats["merged_calls"] == self.step.merged_before
            and self.stats["skipped_unprofitable"] > self.step.skipped_before
        ):
            self._idle_shape = shape

    def _on_step(self, call: dict[str, Any]) -> None:
        """A model call that starts a step; `call`: forward's arguments by name."""
        sample = call.get("sample", call.get("hidden_states"))
        t = call.get("timestep")
        t = float(t.max()) if isinstance(t, torch.Tensor) else (float(t) if t is not None else None)
        new_hw = tuple(sample.shape[-2:])
        # a new generation starts when the timestep goes back up (or the size changes)
        new_run = (
            self.step.timestep is None
            or (t is not None and t > self.step.timestep)
            or new_hw != self.latent_hw
        )
        index = -1 if new_run else self.step.index
        if new_run:
            self.importance = None
            self.generator = self._seeded_generator(sample)
        self.step = _Step()
        self.step.index = index + 1
        self.step.timestep = t
        self.step.merged_before = self.stats["merged_calls"]
        self.step.skipped_before = self.stats["skipped_unprofitable"]
        self.latent_hw = new_hw
        self.step.cfg = self._is_cfg_pair(sample)

    def _is_cfg_pair(self, sample: torch.Tensor) -> bool:
        """A CFG batch [uncond; cond]: both halves hold the same noisy latents. Only those
        channels are compared: a pipeline may concatenate conditioning that differs between
        the halves (SVD: zero image latents for uncond) into the channels."""
        b = sample.shape[0]
        if b % 2:
            return False
        noisy = sample
        c = self.latent_channels
        if c is not None:
            dim = 2 if self.frames_first else (-1 if sample.ndim == 3 else 1)
            if sample.shape[dim] > c:
                noisy = sample.narrow(dim, 0, c)
        return torch.equal(noisy[: b // 2], noisy[b // 2 :])

    def _after_step(self, module: nn.Module, args: tuple, output: Any) -> None:
        """The model's prediction of one step: the next step's importance map; and a
        warning when this step merged nothing anywhere."""
        if self.stats["merged_calls"] == self.step.merged_before:
            self._nothing_merged()
        if self.settings.mode != "importance":
            return
        eps = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        if self.frames_first and isinstance(eps, torch.Tensor) and eps.ndim == 5:
            eps = eps.transpose(1, 2)  # (B, F, C, H, W) -> (B, C, F, H, W), AnimateDiff's
        self._on_output(module, args, eps)

    def _nothing_merged(self) -> None:
        step, s = self.step, self.settings
        if step.why_not:  # blocks at a merged level that still merged nothing
            why = "; ".join(sorted(step.why_not))
        elif step.skipped_levels:
            low = min(step.skipped_levels)
            why = (
                f"every patched block works at downsample "
                f"{', '.join(map(str, sorted(step.skipped_levels)))} and max_downsample="
                f"{s.max_downsample} (SDXL's full-resolution stage has no transformer "
                f"blocks); use max_downsample={low}"
            )
        else:
            why = "the patched blocks merged no tokens (see the warnings above)"
        self._warn_once("nomerge", f"tomerge: no layer was merged: {why}")

    def _on_output(self, module: nn.Module, args: tuple, output: Any) -> None:
        if not self.step.cfg:
            self.importance = None
            return
        eps = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        self.importance = importance_map(eps.detach(), self.channels)

    def _seeded_generator(self, sample: torch.Tensor) -> torch.Generator:
        seed = self.settings.seed
        if seed is None:  # the initial latents are a fingerprint of the pipeline's seed
            head = sample.detach().flatten()[:4096].float().cpu().numpy().tobytes()
            seed = int.from_bytes(hashlib.sha256(head).digest()[:8], "little") >> 1
        return torch.Generator(device="cpu").manual_seed(seed)

    def _warn_once(self, key: str, message: str, stacklevel: int = 3) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=stacklevel)

    # -- per block ---------------------------------------------------------------
    def _block_hook(self, state: dict[str, Merge | None]):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            state["merge"] = self._matching(x) if x.ndim == 3 else None

        return hook

    def _matching(self, x: torch.Tensor) -> Merge | None:
        s = self.settings
        n = x.shape[1]
        if self.latent_hw is None:
            return None
        grid = token_grid(n, self.latent_hw, self.patch)
        if grid is None:
            self._warn_once(f"grid{n}", f"tomerge: {n} tokens fit no grid; block not merged")
            self.step.why_not.add(f"{n} tokens fit no grid")
            return None
        level, h, w = grid
        if level > s.max_downsample:
            self.step.skipped_levels.add(level)
            return None
        merge = self._match(x, h, w)
        if merge is None and tokens_removed(n, s.ratio) == 0:
            self.step.why_not.add(f"ratio {s.ratio} removes no token of {n}")
        return merge

    def _match(
        self, x: torch.Tensor, h: int, w: int, attention_tokens: int | None = None
    ) -> Merge | None:
        """The matching of tokens x (B, h * w, C) on the step's partition, counted in the
        stats; None when the ratio removes no token. `attention_tokens`: the image tokens
        of one sample in the merged attention where it is longer than n (a video
        transformer's frames attend jointly)."""
        b, n, width = x.shape
        r = tokens_removed(n, self.settings.ratio)
        if r == 0:
            return None
        tokens = attention_tokens or n
        if not self._pays(tokens, width, b * n // tokens, x.device):  # Wan: frames are rows
            return None
        partition, average = self._partition(n, h, w, b, x.device)
        merge = match_tokens(x, partition, r, average=average)
        self.stats["merged_calls"] += 1
        self.stats["tokens_in"] += n
        self.stats["tokens_kept"] += merge.n_kept
        return merge

    def _pays(self, n: int, width: int, batch: int, device: torch.device) -> bool:
        """The cost model's verdict for an attention over n image tokens per sample of this
        width, `batch` samples, on `device`; a skipped call is counted and named in the
        "nothing merged" warning."""
        s = self.settings
        if not s.skip_unprofitable:
            return True
        least = (
            s.min_tokens
            if s.min_tokens is not None
            else default_min_tokens(width, device, s.ratio, batch)
        )
        if merge_pays(n, least):
            return True
        self.stats["skipped_unprofitable"] += 1
        self.step.why_not.add(
            f"{n} tokens of width {width} (batch {batch}, ratio {s.ratio}) are below the {least} "
            "from which merging is faster than not merging (skip_unprofitable=False merges "
            "anyway)"
        )
        return False

    def _partition(
        self, n: int, h: int, w: int, batch: int, device: torch.device
    ) -> tuple[Partition, bool]:
        """Drawn once per step and token grid, shared by all blocks of that resolution."""
        key = (n, batch)
        if key not in self.step.partitions:
            partition, average = self._draw_partition(h, w, batch)
            partition = partition.to(device)  # once per step, not once per block
            kind = "importance" if partition.forced is not None else "grid"
            self.stats["partitions"][kind if average else "grid_prune"] += 1
            self.step.partitions[key] = partition, average
        return self.step.partitions[key]

    @torch.compiler.disable  # host-side, once per step and resolution (see register)
    def _draw_partition(self, h: int, w: int, batch: int) -> tuple[Partition, bool]:
        s = self.settings
        step = self.step.index
        gen = self.generator if s.use_rand else None
        if s.mode == "importance" and step >= s.importance_start:
            if self.importance is not None and batch % self.importance.shape[0] == 0:
                imp = resize_importance(self.importance, h, w)
                return importance_partition(imp, s.ratio, gen, s.dst_choice), True
            if not self.step.cfg or self.importance is None:
                self._no_cfg()
        # the random grid needs the CFG halves to share it (tomesd: off for odd batches)
        return grid_partition(h, w, gen if batch % 2 == 0 else None, s.sx, s.sy), (
            s.mode == "tome" or step >= s.prune_steps
        )

    def _no_cfg(self) -> None:
        msg = (
            "tomerge: importance mode needs classifier-free guidance (guidance_scale > 1): "
            "the map is |eps_cond - eps_uncond| of the previous step"
        )
        if self.settings.no_cfg == "error":
            raise ValueError(msg + "; use mode='tome' or a guidance scale above 1")
        self._warn_once("nocfg", msg + "; falling back to random-grid merging (mode='tome')")


def release_merge(state: dict[str, Any]):
    """Post-hook of a block: its merge indices are dropped once the block is done, not
    kept alive through the rest of the model (Wan 2.1 at 21 frames: ~0.75 MiB a block)."""

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        state["merge"] = None

    return hook


def _merge_input(state: dict[str, Merge | None]):
    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        merge = state["merge"]
        if merge is None or kwargs.get("attention_mask") is not None:
            state["active"] = None
            return None
        state["active"] = merge
        if args:
            return (merge.merge(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": merge.merge(kwargs["hidden_states"])}

    return hook


def _unmerge_output(state: dict[str, Merge | None]):
    def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        merge = state.get("active")
        if merge is None:
            return None
        state["active"] = None
        return merge.unmerge(output)

    return hook
