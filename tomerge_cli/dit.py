"""Token merging in diffusion transformers (SD3 / SD3.5, Flux.1) and importance without CFG.

`patch.apply_patch` hands a model here (`make_merger`). The step bookkeeping, the per-step
partition and the matching are `patch.TokenMerger`'s and `merge.py`'s; this module adds:

- the hooks of the multimodal blocks. Only IMAGE tokens are merged, just before the block's
  attention, and unmerged right after it (and around its MLP with merge_mlp):
  - `JointTransformerBlock` (SD3 / SD3.5): the joint attention takes the image tokens as
    `hidden_states` and the text as `encoder_hidden_states`; only the former is merged.
    SD3.5's second (image-only) attention `attn2` sees the same merged tokens.
  - `FluxTransformerBlock` (double stream): as SD3, plus the rotary embeddings.
  - `FluxSingleTransformerBlock`: text and image tokens share one sequence; the text part
    (the first T tokens) passes through untouched.
  Flux's rotary embeddings (`image_rotary_emb`, one row per text + image token) are merged
  with the tokens: the text rows stay, and every kept image token (an unmerged source or a
  destination) keeps its own row, so the attention sees the true position of each token it
  computes. When the images of a batch keep different tokens, each image gets its own rows
  and the attention runs once per image (`_per_image_attention`); one image (Flux's usual
  batch) or equal choices need no loop.
- importance without classifier-free guidance (`importance=` of apply_patch):
  - "cfg" (the default): |eps_cond - eps_uncond| of the previous step (the paper); needs
    CFG, as a batch [uncond; cond] or as two calls per step (below).
  - "step-delta": |eps_t - eps_{t-1}| per token, how much the prediction moved between the
    two previous steps: the signal a guidance-distilled model (Flux-dev) or a turbo / LCM
    student gives for free. Needs two previous steps, so the first two steps use the grid.
    With two calls per step it compares the first (conditional) calls only.
  - "auto": "cfg" when the step runs CFG (a batch pair or two calls), else "step-delta".
- CFG as two calls per step (`DiTTokenMerger._second_call`, every family here): a call on
  the same latents at the same timestep with other conditioning, right after the step's
  first call, is the same step (its counter, partition and prune / importance schedule),
  and the CFG map is |first - second| of their outputs. SD3's skip-layer guidance call (the
  conditional half of the CFG batch again) also belongs to its step and leaves the batch's
  map alone. A call at that timestep on other latents (a second-order sampler) or the same
  call repeated (a timing loop) is a step of its own.
- the signal each pipeline gets, with the default importance="cfg" / with "auto":
  - SD3 / SD3.5, Sana (a CFG batch when guidance_scale > 1): the CFG map from the batch;
    without CFG, the random grid (with a warning) / step-delta.
  - Wan 2.x (guidance_scale > 1: two calls per step): the CFG map from the two calls.
  - Flux.1 with true CFG (true_cfg_scale > 1 and a negative prompt: two calls per step,
    conditional first): the CFG map from the two calls, either way.
  - Flux.1 without true CFG (dev / schnell, guidance embedded, one call per step): no CFG
    map, so the random grid (with a warning; no_cfg="error" raises) / step-delta.

- video and linear-attention transformers (`WanTokenMerger`):
  - `WanTransformerBlock` (Wan 2.x text-to-video): tokens are frames x height x width in
    frame-major order. Each frame is matched on its own (`frame_window=1`), or groups of
    `frame_window` neighbouring frames together, so that a token may merge into a
    destination of another frame of its group (static backgrounds). The 3D rotary rows
    (cos, sin of shape (1, S, 1, D)) follow the kept tokens; when the images of a batch keep
    different tokens they become (B, S', 1, D), which Wan's attention broadcasts as is.
    Wan's pipeline runs the conditional and unconditional passes as two calls with the same
    timestep (see "CFG as two calls per step" above).
  - `SanaTransformerBlock` (Sana): linear attention, whose cost is linear in N, so merging
    saves in proportion to the tokens removed (projections and the attention alike), not a
    quadratic term; its MLP is a convolution over the token grid and is never merged.
Any other transformer block gets a ValueError naming the supported families.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from tomerge_cli.constants import IMPORTANCE
from tomerge_cli.merge import Merge, importance_map, row_positions
from tomerge_cli.patch import Settings, TokenMerger, spatial_blocks

SUPPORTED = (
    "BasicTransformerBlock (Stable Diffusion 1.x/2.x, SDXL, PixArt, AnimateDiff), "
    "JointTransformerBlock (SD3, SD3.5), FluxTransformerBlock and FluxSingleTransformerBlock "
    "(Flux.1), WanTransformerBlock (Wan 2.x text-to-video), SanaTransformerBlock (Sana)"
)


def check_importance(importance: str) -> str:
    if importance not in IMPORTANCE:
        raise ValueError(f"importance must be one of {', '.join(IMPORTANCE)}, got {importance!r}")
    return importance


def step_delta_map(
    eps: torch.Tensor, previous: torch.Tensor, channels: int | None = None
) -> torch.Tensor:
    """|eps_t - eps_{t-1}| averaged over channels: (B, C, H, W) -> (B, H, W), a video
    (B, C, F, H, W) -> (B * F, H, W) like `merge.importance_map`. Tokens whose prediction
    still moves are the ones the image is being decided on; settled ones merge first."""
    if channels is not None:
        eps, previous = eps[:, :channels], previous[:, :channels]
    imp = (eps.float() - previous.float()).abs().mean(dim=1)
    return imp.flatten(0, 1) if imp.ndim == 4 else imp


def _dit_classes() -> dict[type, str]:
    """Block class -> family ("joint", "flux", "flux_single", "wan", "sana")."""
    from diffusers.models.attention import JointTransformerBlock
    from diffusers.models.transformers.sana_transformer import SanaTransformerBlock
    from diffusers.models.transformers.transformer_flux import (
        FluxSingleTransformerBlock,
        FluxTransformerBlock,
    )
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    return {
        JointTransformerBlock: "joint",
        FluxTransformerBlock: "flux",
        FluxSingleTransformerBlock: "flux_single",
        WanTransformerBlock: "wan",
        SanaTransformerBlock: "sana",
    }


def dit_blocks(model: nn.Module) -> list[nn.Module]:
    """The SD3 / Flux / Wan / Sana blocks of a model in execution order (Flux: double then
    single)."""
    classes = tuple(_dit_classes())
    return [m for m in model.modules() if isinstance(m, classes)]


def _unsupported_block(model: nn.Module) -> str | None:
    """The class name of the model's repeated transformer block, when there is one."""
    for module in model.modules():
        name = type(module).__name__
        if name.endswith("TransformerBlock") or name.endswith("DiTBlock"):
            return name
    return None


def make_merger(model: nn.Module, settings: Settings) -> TokenMerger:
    """The patcher for `model`: DiT blocks here, BasicTransformerBlock models in patch.py
    (with this module's importance signals when importance is not "cfg")."""
    check_importance(settings.importance)
    found = dit_blocks(model)
    if found and _dit_classes()[type(found[0])] in ("wan", "sana"):
        return WanTokenMerger(model, settings)
    if found:
        return DiTTokenMerger(model, settings)
    if not spatial_blocks(model):
        block = _unsupported_block(model)
        if block is not None:
            raise ValueError(
                f"{type(model).__name__} is built from {block}, which tomerge does not "
                f"support yet; supported blocks: {SUPPORTED}"
            )
    if settings.importance == "cfg":
        return TokenMerger(model, settings)  # the paper's setting, unchanged
    return ImportanceTokenMerger(model, settings)


class _ImportanceSignals:
    """Mixin over TokenMerger: the importance map from CFG or from the step-to-step change
    of the model's prediction (`Settings.importance`)."""

    settings: Settings
    step: Any
    channels: int | None
    importance: torch.Tensor | None

    def _on_step(self, call: dict[str, Any]) -> None:
        super()._on_step(call)  # type: ignore[misc]
        if self.step.index == 0:  # a new generation: the previous prediction is another's
            self._previous_eps: torch.Tensor | None = None

    def _uses_cfg(self) -> bool:
        mode = self.settings.importance
        return mode == "cfg" or (mode == "auto" and self.step.cfg)

    def _prediction(self, output: Any) -> torch.Tensor:
        eps = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        return eps.detach()

    def _on_output(self, module: nn.Module, args: tuple, output: Any) -> None:
        eps = self._prediction(output)
        if self._uses_cfg():
            self.importance = importance_map(eps, self.channels) if self.step.cfg else None
            return
        previous = getattr(self, "_previous_eps", None)
        self._previous_eps = eps
        if previous is None or previous.shape != eps.shape:
            self.importance = None  # first step of a run: grid partition
        else:
            self.importance = step_delta_map(eps, previous, self.channels)

    def _no_cfg(self) -> None:
        if not self._uses_cfg():
            return  # step-delta: the first steps have no map yet and use the grid, by design
        if self.settings.no_cfg == "error":
            raise ValueError(
                "importance='cfg' needs classifier-free guidance; use importance="
                "'step-delta' or 'auto', mode='tome' or a guidance scale above 1"
            )
        self._warn_once(  # type: ignore[attr-defined]
            "nocfg",
            "tomerge: importance='cfg' needs classifier-free guidance (a batch of "
            "[uncond; cond] pairs); falling back to random-grid merging. Guidance-"
            "distilled and turbo models: use importance='step-delta' or 'auto'",
        )


class ImportanceTokenMerger(_ImportanceSignals, TokenMerger):
    """UNet / PixArt / AnimateDiff merging with importance="step-delta" or "auto"."""


class Fingerprint:
    """A tensor's shape and up to `VALUES` evenly spaced values of each batch row (a copy):
    enough to tell a step's second call on the same latents, or with the same conditioning,
    from a call on other tensors (other latents differ everywhere), without keeping a whole
    copy of a step's latents and conditioning (Wan 2.1 at 21 frames: 16 MiB)."""

    VALUES = 4096

    def __init__(self, t: torch.Tensor) -> None:
        self.shape = tuple(t.shape)
        flat = t.detach().reshape(t.shape[0], -1) if t.ndim else t.detach().reshape(1, 1)
        stride = max(1, -(-flat.shape[1] // self.VALUES))  # ceil: at most VALUES per row
        self.values = flat[:, ::stride].clone()

    def same(self, other: Fingerprint) -> bool:
        return self.shape == other.shape and torch.equal(self.values, other.values)


class DiTTokenMerger(_ImportanceSignals, TokenMerger):
    """Hooks on SD3 / Flux blocks: image tokens merged around attention (and MLP)."""

    def __init__(self, model: nn.Module, settings: Settings) -> None:
        self.grid: tuple[int, int] | None = None
        self._forwards: list[tuple[nn.Module, Any]] = []  # attention forwards we wrapped
        self._packed = "img_ids" in _parameters(model)  # Flux: (B, N, C) token latents
        # pipelines that run CFG as two calls per step (see `_second_call`)
        self.second_pass = False  # the current call is the second of its step
        # fingerprints of the step's first input and its conditioning (see `_second_call`)
        self._step_sample: Fingerprint | None = None
        self._step_context: Fingerprint | None = None
        self._first: torch.Tensor | None = None  # the step's first prediction
        super().__init__(model, settings)

    # -- which blocks ------------------------------------------------------------
    def _select_blocks(self, blocks: list[nn.Module]) -> list[nn.Module]:
        found = dit_blocks(self.model)
        if self.settings.blocks is None and len(found) >= 8:
            n = len(found)  # as for PixArt: the first and last blocks are the most sensitive
            return found[n // 4 : n - n // 4]
        return super()._select_blocks(found)

    # -- per step ----------------------------------------------------------------
    def _on_step(self, call: dict[str, Any]) -> None:
        sample = call["hidden_states"]
        if self._second_call(call):
            self.second_pass = True  # same step: its partitions, grid and counter stay
            return
        self._first = None  # the previous step's prediction: its caller has let it go
        super()._on_step(call)
        self.second_pass = False
        # copies of a few values: a pipeline may update its tensors in place
        self._step_sample = Fingerprint(sample)
        context = call.get("encoder_hidden_states")
        self._step_context = Fingerprint(context) if isinstance(context, torch.Tensor) else None
        if self._packed:
            self.grid = _grid_from_ids(call.get("img_ids"), sample.shape[1])
            if self.grid is None:  # e.g. Kontext's reference-image tokens after the latents
                self._warn_once("nogrid", "tomerge: image tokens form no single grid; not merged")
        else:
            self.grid = (sample.shape[-2] // self.patch, sample.shape[-1] // self.patch)

    def _second_call(self, bound: dict[str, Any]) -> bool:
        """Whether this call is a second pass of the current step, on the same latents at
        the same timestep: the unconditional prediction of a pipeline that runs CFG as two
        calls (Wan; Flux with true_cfg_scale > 1 and a negative prompt), with other
        conditioning than the first call's, or SD3's skip-layer guidance call on the
        conditional half of the step's CFG batch. A call on other latents at that timestep
        (a second-order sampler's correction), the same call again (a timing loop) and a
        third call are steps of their own."""
        t = bound.get("timestep")
        t = float(t.max()) if isinstance(t, torch.Tensor) else t
        first = self._step_sample
        if self.second_pass or t is None or t != self.step.timestep or first is None:
            return False
        sample = Fingerprint(bound["hidden_states"])
        if first.shape == sample.shape:
            context, before = bound.get("encoder_hidden_states"), self._step_context
            same_context = (
                isinstance(context, torch.Tensor)
                and before is not None
                and before.same(Fingerprint(context))
            )
            return not self.step.cfg and not same_context and first.same(sample)
        b = sample.shape[0]
        return (
            self.step.cfg
            and first.shape == (2 * b, *sample.shape[1:])
            and torch.equal(first.values[b:], sample.values)
        )

    def _on_output(self, module: nn.Module, args: tuple, output: Any) -> None:
        eps = self._prediction(output)
        if not self.second_pass:
            self._first = eps
            # a CFG batch's map or step-delta; a second call of this step replaces it
            super()._on_output(module, args, output)
        elif self.settings.importance != "step-delta" and not self.step.cfg:
            # |eps_cond - eps_uncond| of the two calls (either order: the absolute value)
            self.importance = step_delta_map(eps, self._first, self.channels)
            # the map is all the next step needs: holding either prediction past this step
            # would add one to every later call's peak memory (the pipeline lets them go)
            self._first = self._previous_eps = None
        else:
            return  # step-delta compares the steps' first calls; a CFG batch gave its map
        if self.importance is not None:
            self.importance = self._map_layout(self.importance, eps)

    def _map_layout(self, imp: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """The map in the layout `_draw_partition` reads: (P, H, W) as is for images."""
        return imp

    def _prediction(self, output: Any) -> torch.Tensor:
        eps = super()._prediction(output)
        if self._packed and self.grid is not None and eps.ndim == 3:
            h, w = self.grid  # (B, N, C) tokens in row-major order -> (B, C, h, w)
            if eps.shape[1] == h * w:
                eps = eps.transpose(1, 2).reshape(eps.shape[0], -1, h, w)
        return eps

    def _dit_matching(self, x: torch.Tensor) -> Merge | None:
        """The matching of one block from its image tokens (B, N, C)."""
        if self.grid is None or x.ndim != 3:
            return None
        n = x.shape[1]
        h, w = self.grid
        if h * w != n:
            self._warn_once(f"grid{n}", f"tomerge: {n} image tokens fit no grid; not merged")
            return None
        return self._match(x, h, w)

    # -- per block ---------------------------------------------------------------
    def _hook_block(self, block: nn.Module) -> None:
        s = self.settings
        family = _dit_classes()[type(block)]
        state: dict[str, Any] = {"merge": None, "text": 0}
        self._hook_matching(block, self._dit_block_hook(state), state)
        single = family == "flux_single"
        rotary = family != "joint"  # Flux attention takes rotary rows for every token
        # (layer, takes rotary rows, text tokens first in its input)
        layers: list[tuple[nn.Module | None, bool, bool]] = []
        if s.merge_attn:
            layers.append((block.attn, rotary, single))
            layers.append((getattr(block, "attn2", None), False, False))  # SD3.5 dual attn
        if s.merge_mlp:
            mlp = block.proj_mlp if single else block.ff
            if getattr(block, "_chunk_size", None) is None:  # chunked FF calls ff per chunk
                layers.append((mlp, False, single))
        for layer, with_rotary, has_text in layers:
            if layer is None:
                continue
            self.handles.append(
                layer.register_forward_pre_hook(
                    _merge_images(state, has_text, with_rotary), with_kwargs=True
                )
            )
            self.handles.append(layer.register_forward_hook(_unmerge_images(state, has_text)))
            if with_rotary:
                self._wrap_attention(layer)

    def _dit_block_hook(self, state: dict[str, Any]):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = _argument(args, kwargs, 0, "hidden_states")
            text = _argument(args, kwargs, 1, "encoder_hidden_states")
            state["text"] = text.shape[1] if isinstance(text, torch.Tensor) else 0
            state["merge"] = self._dit_matching(x) if isinstance(x, torch.Tensor) else None

        return hook

    def _wrap_attention(self, attn: nn.Module) -> None:
        """Instance-level forward that runs per image when the images kept different
        tokens (per-image rotary rows); removed by `remove`, the class forward shows again."""
        previous = vars(attn).get("forward")
        inner = attn.forward
        attn.forward = lambda *a, **k: _per_image_attention(inner, *a, **k)
        self._forwards.append((attn, previous))

    def remove(self) -> None:
        super().remove()
        for attn, previous in reversed(self._forwards):
            if previous is None:
                del attn.forward
            else:
                attn.forward = previous
        self._forwards.clear()


class WanTokenMerger(DiTTokenMerger):
    """Wan 2.x (video, 3D rotary) and Sana (linear attention): the self-attention input is
    merged per frame (or per group of `frame_window` frames); cross-attention queries with
    merge_crossattn, Wan's MLP with merge_mlp."""

    def __init__(self, model: nn.Module, settings: Settings) -> None:
        self.frames = 1  # token frames of the current call (1 for images)
        patch = getattr(model.config, "patch_size", None)
        self.frame_patch = int(patch[0]) if isinstance(patch, (tuple, list)) else 1
        super().__init__(model, settings)

    def _on_step(self, call: dict[str, Any]) -> None:
        super()._on_step(call)
        sample = call["hidden_states"]
        self.frames = sample.shape[2] // self.frame_patch if sample.ndim == 5 else 1

    def _map_layout(self, imp: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        return self._stacked(imp) if imp.ndim == 3 and eps.ndim == 5 else imp

    def _stacked(self, imp: torch.Tensor) -> torch.Tensor:
        """(B * F, H, W) per latent frame -> (B * F' / window, window * H, W): the frames of
        one token frame averaged, and each group of `frame_window` frames stacked."""
        pt, window = self.frame_patch, self.settings.frame_window
        frames = imp.shape[0]
        if pt > 1:
            imp = imp.view(frames // pt, pt, *imp.shape[1:]).mean(1)
        return imp.reshape(imp.shape[0] // window, window * imp.shape[1], imp.shape[2])

    def _dit_matching(self, x: torch.Tensor) -> Merge | None:
        if self.grid is None or x.ndim != 3:
            return None
        (h, w), window = self.grid, self.settings.frame_window
        b, n, c = x.shape
        if n != self.frames * h * w or self.frames % window:
            self._warn_once(
                f"frames{n}",
                f"tomerge: {n} tokens are not {self.frames} frames of {h}x{w} in groups of "
                f"frame_window={window}; not merged",
            )
            return None
        units = self.frames // window
        merge = self._match(x.reshape(b * units, window * h * w, c), window * h, w, n)
        return None if merge is None else FrameMerge(merge, b, units)

    def _hook_block(self, block: nn.Module) -> None:
        from tomerge_cli.patch import _merge_input, _unmerge_output

        s = self.settings
        state: dict[str, Any] = {"merge": None, "text": 0}
        self._hook_matching(block, self._dit_block_hook(state), state)
        mlp = getattr(block, "ffn", None)  # Wan's; Sana's `ff` is a convolution on the grid
        layers = [
            (block.attn1, s.merge_attn, _wan_rotary(_merge_input(state), state)),
            (block.attn2, s.merge_crossattn, _merge_input(state)),
            (mlp, s.merge_mlp, _merge_input(state)),
        ]
        for layer, on, pre in layers:
            if layer is not None and on:
                self.handles.append(layer.register_forward_pre_hook(pre, with_kwargs=True))
                self.handles.append(layer.register_forward_hook(_unmerge_output(state)))


class FrameMerge:
    """A `Merge` drawn on (B * U, n) frame groups, applied to the (B, U * n, C) sequence."""

    def __init__(self, merge: Merge, batch: int, units: int) -> None:
        self.inner, self.batch, self.units = merge, batch, units

    @property
    def n_kept(self) -> int:
        return self.inner.n_kept * self.units

    @property
    def kept(self) -> torch.Tensor:
        """Kept token indices in the whole sequence, (B, U * k): the inner merge's flat
        rows over (B * U) groups of n tokens are already positions in (B, U * n)."""
        return row_positions(self.inner.flat_kept, self.batch, self.units * self.inner.tokens)

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        b, s, c = x.shape
        out = self.inner.merge(x.reshape(b * self.units, s // self.units, c))
        return out.reshape(b, -1, c)

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        b, s, c = y.shape
        out = self.inner.unmerge(y.reshape(b * self.units, s // self.units, c))
        return out.reshape(b, -1, c)


def merge_frame_rotary(emb: tuple[torch.Tensor, ...], kept: torch.Tensor) -> tuple:
    """Wan's rotary (cos, sin), each (1, S, 1, D), at the kept tokens `kept` (B, S'): the
    row of every kept token is its own position, (B, S', 1, D) (the attention broadcasts
    over the batch). Not shared when the images happen to keep the same tokens: finding
    that out reads the indices back, a host sync per block on a GPU."""
    return tuple(e[0][kept.to(e.device)] for e in emb)


def _wan_rotary(merge_hook: Any, state: dict[str, Any]):
    """Wrap a merging pre-hook of Wan's self-attention: its rotary rows (argument 4 or
    `rotary_emb`) follow the kept tokens."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        result = merge_hook(module, args, kwargs)
        if result is None:
            return None
        args, kwargs = result
        merge = state["active"]
        if len(args) > 3 and args[3] is not None:
            args = (*args[:3], merge_frame_rotary(args[3], merge.kept), *args[4:])
        elif kwargs.get("rotary_emb") is not None:
            kwargs = {**kwargs, "rotary_emb": merge_frame_rotary(kwargs["rotary_emb"], merge.kept)}
        return args, kwargs

    return hook


def _parameters(model: nn.Module) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def _grid_from_ids(ids: torch.Tensor | None, n: int) -> tuple[int, int] | None:
    """(h, w) of Flux's packed image tokens from `img_ids` rows (0, y, x), row-major; a
    square grid when ids are missing. None when the tokens are no single grid (e.g. the
    reference-image tokens Kontext appends)."""
    if ids is not None:
        ids = ids[0] if ids.ndim == 3 else ids
        h = int(ids[:, 1].max() - ids[:, 1].min()) + 1
        w = int(ids[:, 2].max() - ids[:, 2].min()) + 1
        return (h, w) if h * w == n and ids.shape[0] == n else None
    side = math.isqrt(n)
    return (side, side) if side * side == n else None


def _argument(args: tuple, kwargs: dict, index: int, name: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(name)


def _merge_images(state: dict[str, Any], has_text: bool, rotary: bool):
    """Pre-hook: merge the image tokens of `hidden_states` (after the first `text` tokens
    when text and image share the sequence), and the rotary rows with them."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        merge: Merge | None = state["merge"]
        state["active"] = None
        if merge is None or kwargs.get("attention_mask") is not None:
            return None  # a mask over all tokens would need merging too: leave it whole
        state["active"] = merge
        x = _argument(args, kwargs, 0, "hidden_states")
        t = state["text"] if has_text else 0
        merged = merge.merge(x[:, t:]) if t else merge.merge(x)
        if t:
            merged = torch.cat([x[:, :t], merged], dim=1)
        kwargs = dict(kwargs)
        if args:
            args = (merged, *args[1:])
        else:
            kwargs["hidden_states"] = merged
        emb = kwargs.get("image_rotary_emb")
        if rotary and emb is not None:
            text = kwargs.get("encoder_hidden_states")  # double stream: text rows first
            t_rows = text.shape[1] if text is not None else state["text"]
            kwargs["image_rotary_emb"] = merge_rotary(emb, merge, t_rows)
        return args, kwargs

    return hook


def _unmerge_images(state: dict[str, Any], has_text: bool):
    """Post-hook: copy each kept image token's output back to the tokens merged into it.
    Joint attention returns (image, text[, ip-adapter image]); the text is untouched."""

    def hook(module: nn.Module, args: tuple, output: Any) -> Any:
        merge: Merge | None = state.get("active")
        if merge is None:
            return None
        state["active"] = None
        t = state["text"] if has_text else 0
        if isinstance(output, tuple):
            out = list(output)
            out[0] = merge.unmerge(out[0])
            if len(out) == 3:  # Flux IP-adapter: a second image-token output
                out[2] = merge.unmerge(out[2])
            return tuple(out)
        if t:
            return torch.cat([output[:, :t], merge.unmerge(output[:, t:])], dim=1)
        return merge.unmerge(output)

    return hook


def merge_rotary(emb: Any, merge: Merge, text: int) -> Any:
    """Rotary rows for the merged sequence [text; kept image tokens]: the `text` rows
    unchanged, then the row of every kept image token (its own position). Rows (S, D) for
    one image, (B, S, D) for a batch (see `_per_image_attention`): images keep different
    tokens, and checking whether they happen not to would read the indices back to the
    host, a sync per block on a GPU."""
    kept = merge.kept
    if isinstance(emb, (tuple, list)):
        return type(emb)(merge_rotary(e, merge, text) for e in emb)
    texts = torch.arange(text, device=kept.device)
    if kept.shape[0] == 1:
        return emb.index_select(0, torch.cat([texts, kept[0] + text]).to(emb.device))
    rows = torch.cat([texts.expand(kept.shape[0], -1), kept + text], dim=1)
    return emb[rows.to(emb.device)]


def _per_image_attention(inner: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a Flux attention once per image when its rotary rows are per image (B, S, D):
    diffusers applies one (S, D) table to the whole batch. Tensors (and lists of them) with
    the batch as first dimension are sliced per image, anything else passed as is."""
    emb = kwargs.get("image_rotary_emb")
    first = emb[0] if isinstance(emb, (tuple, list)) else emb
    if first is None or first.ndim == 2:
        return inner(*args, **kwargs)
    x = _argument(args, kwargs, 0, "hidden_states")
    b = x.shape[0]

    def pick(v: Any, i: int) -> Any:
        if isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == b:
            return v[i : i + 1]
        if isinstance(v, (tuple, list)):
            return type(v)(pick(u, i) for u in v)
        return v

    outs = []
    for i in range(b):
        k = {name: pick(v, i) for name, v in kwargs.items() if name != "image_rotary_emb"}
        rows = type(emb)(e[i] for e in emb) if isinstance(emb, (tuple, list)) else emb[i]
        outs.append(inner(*(pick(a, i) for a in args), image_rotary_emb=rows, **k))
    if isinstance(outs[0], tuple):
        return tuple(torch.cat(parts, dim=0) for parts in zip(*outs, strict=True))
    return torch.cat(outs, dim=0)
