"""tomerge speed on the real block geometries of today's diffusion transformers: Flux.1
(double- and single-stream blocks, width 3072, 24 heads x 128, 1024^2 = 4096 image tokens
+ 512 text tokens, rotary embeddings), SD3.5-medium (joint blocks, width 1536, 24 heads x
64, 4096 image + 333 text tokens, CFG batch 2, one block with the second image-only
attention), Wan 2.1 1.3B (width 1536, 12 heads x 128, 480p = 30x52 tokens per latent
frame, 3D rotary; Wan 2.1 generates 21 latent frames, fewer are timed on a CPU: --frames)
and Sana 1.6B (width 2240, linear self-attention of 70 heads x 32, a convolutional MLP;
1024^2 = 32x32 tokens after its 32x autoencoder + 300 text tokens, CFG batch 2: only the
self-attention is merged, whose cost is linear in the tokens).

    python -m benchmarks.tomerge_dit_speed                 # ratios 0.3 0.5 0.7, 5 repeats
    python -m benchmarks.tomerge_dit_speed --quick         # small grids: checks the run
    python -m benchmarks.tomerge_dit_speed --device cuda --dtype bf16 --frames 21

Each family is its diffusers transformer built from the real config with random weights
(speed does not depend on the values) and one or two blocks (the full models do not fit
this CPU's time). Variants share the weights and the inputs and are timed interleaved,
round-robin with the order rotating each round (as shared.profiling.compare_speed does), so
every round gives paired ratios: unmerged, importance and tome (tomerge's `apply_patch`
with its defaults, attention merged) and the zero-cost bound: the same patch with the
matching replaced by a slice (the merged layers see the first N - r tokens, no similarity,
no averaging; the output is copied back to all N by one index_select), the speed no
matching scheme can beat. Each block is timed by hooks around it (CUDA events on a
GPU); the parts outside the blocks (patch embedding, time and text embedders, output
layer, and the VAE and text encoders of a pipeline) are not counted.

Per step-equivalent: an extrapolation of the block times to the full model from its block
counts (Flux 19 double + 38 single; SD3.5-medium 13 joint blocks with the second attention
+ 11 without; Wan 1.3B 30; Sana 1.6B 20), with every block merged and with apply_patch's default for
DiTs of 8 or more blocks (the middle half merged, the rest unmerged).

Peak memory: on a CPU, peak RSS of one subprocess per variant on the Wan geometry
(/proc's VmHWM, which tracemalloc would miss), 3 interleaved rounds, as it moves by a few %
between identical runs; on a GPU, torch.cuda.max_memory_allocated of one call per variant,
every family (all variants in one process: what one keeps between calls, e.g. step-delta's
previous prediction, counts in every row; the CPU children keep it apart). Each CPU child
first runs every variant once on a tiny Wan model, so the same code (libtorch's kernels,
our modules) is resident in every child and the peaks differ by data only, then samples as
WanPipeline does: with CFG ("cfg"), a conditional and an unconditional call per step, the
caller holding the conditional prediction during the second, 2 steps; without ("no-cfg",
where importance is step-delta's), one call per step, 3 steps. Each row is paired with the
unmerged child of its own sampling loop. With CFG one more row, "importance+mlp", merges
the feed-forward input as well (merge_mlp): the peak of a Wan block is its MLP's activation,
which attention-only merging leaves at full length.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from benchmarks import common
from shared.profiling import round_order

RATIOS = (0.3, 0.5, 0.7)
FAMILIES = ("flux", "sd35", "wan", "sana")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
TARGET_SPEEDUP = 1.20  # Flux at 1024^2, ratio 0.5, per step-equivalent (issue 18)
TARGET_BOUND_GAP = 0.05  # within 5% of the zero-cost bound
WAN_FRAME = (30, 52)  # 480x832 px: 60x104 latent, patch 2


@dataclass
class Settings:
    """What one run measures (the command-line flags, also the test's entry point)."""

    families: tuple[str, ...] = FAMILIES
    ratios: tuple[float, ...] = RATIOS
    repeats: int = 5
    size: int = 1024  # image side in pixels (Flux, SD3.5)
    frames: int = 5  # Wan latent frames
    wan_grid: tuple[int, int] = WAN_FRAME  # Wan tokens per latent frame (height, width)
    device: str = "cpu"
    dtype: str = "fp32"
    memory: bool = True  # peak memory (CPU: Wan subprocesses; GPU: every family)
    memory_ratios: tuple[float, ...] = (0.5,)
    memory_repeats: int = 3  # CPU peak-RSS rounds
    # glibc's mmap threshold for the peak-RSS children (MALLOC_MMAP_THRESHOLD_; None: its
    # default, which rises as mid-sized blocks are freed and then keeps freed heap resident)
    mmap_threshold: int | None = None
    # how the peak-RSS children sample (see the module docstring): "cfg", "no-cfg"
    memory_loops: tuple[str, ...] = ("cfg", "no-cfg")
    methods: tuple[str, ...] = ("importance", "tome", "bound")
    warmup: int = 1  # calls per variant before timing (importance: at least 2)
    tiny: bool = False  # tiny widths (tests): the cost model's threshold is lifted
    threads: int = 1
    compile: bool = False  # whole-step runs: every variant, unmerged too, under torch.compile


@dataclass
class Geometry:
    """One family: the reduced model, its inputs and how its blocks extrapolate."""

    model: nn.Module
    inputs: dict[str, Any]
    kinds: list[str]  # kind of each block of the reduced model, in execution order
    full: list[str]  # kinds of the full model's blocks, in execution order
    image_tokens: int
    text_tokens: int
    batch: int
    describe: str
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.counts = {k: self.full.count(k) for k in dict.fromkeys(self.full)}


# diffusers configs of the real models with one or two blocks (SD3.5: block 0 has the second,
# image-only attention of SD3.5-medium's first 13 blocks; block 1, the last, has none)
CONFIGS: dict[str, dict[str, Any]] = {
    "flux": {  # Flux.1-dev: guidance-distilled, no CFG batch
        "in_channels": 64,
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 128,
        "num_attention_heads": 24,
        "joint_attention_dim": 4096,
        "pooled_projection_dim": 768,
        "guidance_embeds": True,
        "axes_dims_rope": (16, 56, 56),
    },
    "sd35": {
        "sample_size": 128,
        "patch_size": 2,
        "in_channels": 16,
        "num_layers": 2,
        "attention_head_dim": 64,
        "num_attention_heads": 24,
        "joint_attention_dim": 4096,
        "caption_projection_dim": 1536,
        "pooled_projection_dim": 2048,
        "out_channels": 16,
        "pos_embed_max_size": 384,
        "dual_attention_layers": (0,),
        "qk_norm": "rms_norm",
    },
    "sana": {  # Sana 1600M at 1024^2 (linear self-attention, a convolutional MLP)
        "in_channels": 32,
        "out_channels": 32,
        "num_attention_heads": 70,
        "attention_head_dim": 32,
        "num_layers": 1,
        "num_cross_attention_heads": 20,
        "cross_attention_head_dim": 112,
        "cross_attention_dim": 2240,
        "caption_channels": 2304,
        "mlp_ratio": 2.5,
        "sample_size": 32,
        "patch_size": 1,
    },
    "wan": {
        "patch_size": (1, 2, 2),
        "num_attention_heads": 12,
        "attention_head_dim": 128,
        "in_channels": 16,
        "out_channels": 16,
        "text_dim": 4096,
        "freq_dim": 256,
        "ffn_dim": 8960,
        "num_layers": 1,
        "cross_attn_norm": True,
        "qk_norm": "rms_norm_across_heads",
        "eps": 1e-6,
    },
}
# the tests' tiny widths (2 heads x 16), over the real configs
_TINY_WIDTH = {"attention_head_dim": 16, "num_attention_heads": 2}
TINY: dict[str, dict[str, Any]] = {
    "flux": {**_TINY_WIDTH, "joint_attention_dim": 32, "pooled_projection_dim": 16},
    "sd35": {**_TINY_WIDTH, "joint_attention_dim": 32, "pooled_projection_dim": 16},
    "wan": {**_TINY_WIDTH, "text_dim": 32, "ffn_dim": 64},
    "sana": {
        **_TINY_WIDTH,
        "num_cross_attention_heads": 2,
        "cross_attention_head_dim": 16,
        "cross_attention_dim": 32,
        "caption_channels": 32,
    },
}
TINY["flux"]["axes_dims_rope"] = (2, 6, 8)  # sums to the head width
TINY["sd35"]["caption_projection_dim"] = 32
# T5 512; SD3: CLIP 77 + T5 256; Sana: Gemma-2, 300
TEXT_TOKENS = {"flux": 512, "sd35": 333, "wan": 512, "sana": 300}
# per family: the model class, block kinds of the reduced model (execution order) and of
# the full model, the batch, and how the pipeline calls it
LAYOUT: dict[str, tuple[str, list[str], list[str], int, str]] = {
    "flux": (
        "FluxTransformer2DModel",
        ["double", "single"],
        ["double"] * 19 + ["single"] * 38,
        1,
        "guidance-distilled, no CFG batch",
    ),
    "sd35": (
        "SD3Transformer2DModel",
        ["joint + attn2", "joint"],
        ["joint + attn2"] * 13 + ["joint"] * 11,
        2,
        "a CFG batch",
    ),
    "wan": (
        "WanTransformer3DModel",
        ["wan"],
        ["wan"] * 30,
        1,
        "the pipeline runs CFG as two calls",
    ),
    "sana": ("SanaTransformer2DModel", ["sana"], ["sana"] * 20, 2, "a CFG batch"),
}
NAMES = {"flux": "Flux.1", "sd35": "SD3.5-medium", "wan": "Wan 2.1 1.3B", "sana": "Sana 1.6B"}


def _inputs(
    family: str, config: dict[str, Any], text: int, s: Settings
) -> tuple[dict[str, torch.Tensor], str, int]:
    """The call's arguments as the pipeline passes them, the size in words, image tokens."""
    ctx = config.get("joint_attention_dim") or config.get("text_dim") or config["caption_channels"]
    pooled = config.get("pooled_projection_dim")
    if family == "flux":
        side = s.size // 16  # VAE 8x, then 2x2 latent patches packed into one token
        ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        ids = torch.stack([torch.zeros_like(ys), ys, xs], -1).reshape(-1, 3).float()
        return (
            {
                "hidden_states": torch.randn(1, side * side, 64),
                "encoder_hidden_states": torch.randn(1, text, ctx),
                "pooled_projections": torch.randn(1, pooled),
                "timestep": torch.tensor([0.9]),  # the pipeline passes sigma in [0, 1]
                "img_ids": ids,
                "txt_ids": torch.zeros(text, 3),
                "guidance": torch.tensor([3.5]),
            },
            f"{s.size}^2",
            side * side,
        )
    if family == "sd35":
        latent = s.size // 8
        return (
            {
                "hidden_states": torch.randn(1, 16, latent, latent).repeat(2, 1, 1, 1),  # CFG
                "encoder_hidden_states": torch.randn(2, text, ctx),  # uncond, cond
                "pooled_projections": torch.randn(2, pooled),
                "timestep": torch.tensor([900.0, 900.0]),
            },
            f"{s.size}^2",
            (latent // 2) ** 2,
        )
    if family == "sana":
        side = 6 if s.tiny else s.size // 32  # DC-AE: 32x downsampling, patch 1
        return (
            {
                "hidden_states": torch.randn(1, 32, side, side).repeat(2, 1, 1, 1),  # CFG
                "encoder_hidden_states": torch.randn(2, text, ctx),  # uncond, cond
                "timestep": torch.tensor([900.0, 900.0]),
            },
            f"{s.size}^2",
            side * side,
        )
    h, w = (4, 6) if s.tiny else s.wan_grid
    return (
        {
            "hidden_states": torch.randn(1, 16, s.frames, 2 * h, 2 * w),
            "encoder_hidden_states": torch.randn(1, text, ctx),
            "timestep": torch.tensor([900.0]),
        },
        f"{s.frames} latent frames x {h}x{w}",
        s.frames * h * w,
    )


def build(family: str, s: Settings) -> Geometry:
    """The family's reduced model (seeded weights) and inputs, on the run's device / dtype."""
    import diffusers

    cls, kinds, full, batch, how = LAYOUT[family]
    config = {**CONFIGS[family], **(TINY[family] if s.tiny else {})}
    text = 7 if s.tiny else TEXT_TOKENS[family]
    torch.manual_seed(0)
    model = getattr(diffusers, cls)(**config)
    inputs, grid, n = _inputs(family, config, text, s)
    heads, dim = config["num_attention_heads"], config["attention_head_dim"]
    describe = (
        f"{NAMES[family]} (width {heads * dim}, {heads} heads x {dim}), {grid}: {n} image + "
        f"{text} text tokens, batch {batch} ({how})"
    )
    geo = Geometry(model, inputs, kinds, full, n, text, batch, describe)
    geo.model, geo.inputs = place(geo.model, geo.inputs, s)
    return geo


def place(
    model: nn.Module, inputs: dict[str, torch.Tensor], s: Settings
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Model (in eval mode) and inputs on the run's device and dtype, the model's
    `_keep_in_fp32_modules` in float32 as from_pretrained(torch_dtype=) leaves them."""
    dtype = DTYPES[s.dtype]
    model = model.eval().to(s.device, dtype)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, module in model.named_modules():
        if any(k in name.split(".") for k in keep):
            module.float()
    inputs = {
        k: v.to(
            s.device, dtype if v.is_floating_point() and k not in ("img_ids", "txt_ids") else None
        )
        for k, v in inputs.items()
    }
    return model, inputs


def twin(base: nn.Module) -> nn.Module:
    """A second model object on the same parameter and buffer tensors (no memory copy), so
    each variant patches its own instance."""
    with torch.device("meta"):
        model = type(base).from_config(base.config)
    model.load_state_dict(base.state_dict(), assign=True)
    for name, buf in base.named_buffers():  # non-persistent ones (rotary tables)
        owner, _, attr = name.rpartition(".")
        model.get_submodule(owner).register_buffer(attr, buf, persistent=False)
    return model.eval()


# -- the variants -------------------------------------------------------------------------
class SliceMerge:
    """The zero-cost bound's `Merge`: keep the first N - r tokens (a slice), and copy the
    output of token i % (N - r) back to token i. No similarity, no averaging."""

    def __init__(self, batch: int, n: int, r: int, device: torch.device) -> None:
        k = n - r
        self.batch, self.tokens = batch, n
        self.kept = torch.arange(k, device=device).expand(batch, k)
        self.slot = (torch.arange(n, device=device) % k).expand(batch, n)
        self._slot = self.slot[0]

    @property
    def n_kept(self) -> int:
        return self.kept.shape[1]

    @property
    def flat_kept(self) -> torch.Tensor:  # for Wan's rotary rows, as `Merge.flat_kept`
        rows = torch.arange(self.batch, device=self.kept.device)[:, None]
        return (self.kept + rows * self.tokens).flatten()

    def merge(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, : self.n_kept]

    def unmerge(self, y: torch.Tensor) -> torch.Tensor:
        return y.index_select(1, self._slot)


def patch_variant(model: nn.Module, method: str, ratio: float, s: Settings, **options: Any) -> None:
    """Patch `model` for one timed variant: importance, tome or the zero-cost bound;
    `options` go to apply_patch (e.g. blocks, skip_unprofitable)."""
    import tomerge_cli
    from tomerge_cli.merge import tokens_removed

    if s.tiny:
        options.setdefault("min_tokens", 0)
    if method == MLP_VARIANT:  # importance with the feed-forward merged too (the peak's op)
        method = "importance"
        options["merge_mlp"] = True
    if method == "importance":
        # steady state from the warm-up calls: no pruned steps, importance from step 1 (the
        # map is CFG's where the batch is a CFG pair, else the step-to-step change)
        options.update(importance="auto", prune_steps=0, importance_start=1)
    tomerge_cli.apply_patch(
        model, ratio=ratio, mode="tome" if method == "bound" else method, **options
    )
    if method == "bound":
        merger = tomerge_cli.get_merger(model)

        def free(
            x: torch.Tensor, h: int, w: int, attention_tokens: int | None = None
        ) -> SliceMerge:
            b, n, _ = x.shape
            merger.stats["merged_calls"] += 1  # a merged call, for the step's bookkeeping
            return SliceMerge(b, n, tokens_removed(n, ratio), x.device)

        merger._match = free  # the same hooks; only the matching is gone


METHODS = ("importance", "tome", "bound")
# memory only: importance with the MLP merged as well. Attention-only merging cannot lower
# Wan's peak, which is the unmerged MLP's activation; this row shows what merging it saves.
MLP_VARIANT = "importance+mlp"
IMPORTANCE_WARMUP = 2  # step-delta needs two previous steps (Wan: one CFG pair)


def warmup_calls(name: str, s: Settings) -> int:
    return max(s.warmup, IMPORTANCE_WARMUP) if name.startswith("importance") else s.warmup


def variant_names(s: Settings) -> list[str]:
    return ["unmerged"] + [f"{m} {r}" for r in s.ratios for m in s.methods]


def make_variant(base: nn.Module, name: str, s: Settings) -> nn.Module:
    if name == "unmerged":
        return base
    method, ratio = name.split()
    model = twin(base)
    patch_variant(model, method, float(ratio), s)
    return model


# -- timing -------------------------------------------------------------------------------
def _dit_blocks(model: nn.Module) -> list[nn.Module]:
    from tomerge_cli.dit import dit_blocks

    return dit_blocks(model)


class BlockClock:
    """Hooks that time every block of a model and count the tokens into its attention.

    On the CPU, wall-clock seconds around each block. On a GPU, CUDA events recorded before
    and after each block, read once the call has finished: the GPU's time from the block's
    first kernel (the matching included) to its last, with the host free to run ahead as in
    a pipeline, so idle gaps count only where the host cannot keep the GPU busy (a
    synchronise around every block would add the launch latency of each block instead)."""

    def __init__(self, model: nn.Module, device: str) -> None:
        self.cuda = torch.device(device).type == "cuda"
        self.times: list[list[float]] = []  # per block, one entry per call
        self.tokens: list[int] = []  # per block: sequence length into the attention
        self._events: list[tuple[int, Any, Any]] = []
        for i, block in enumerate(_dit_blocks(model)):
            self.times.append([])
            self.tokens.append(0)
            block.register_forward_pre_hook(self._start, prepend=True)  # before the matching
            block.register_forward_hook(self._stop(i))
            attn = block.attn1 if hasattr(block, "attn1") else block.attn  # Wan, else Flux / SD3
            attn.register_forward_pre_hook(self._count(i), with_kwargs=True)  # after merging

    def _start(self, module: nn.Module, args: tuple) -> None:
        if self.cuda:
            self._t0 = torch.cuda.Event(enable_timing=True)
            self._t0.record()
        else:
            self._t0 = time.perf_counter()

    def _stop(self, i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, output: Any) -> None:
            if self.cuda:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                self._events.append((i, self._t0, end))
            else:
                self.times[i].append(time.perf_counter() - self._t0)

        return hook

    def collect(self) -> None:
        """After a call: the GPU times of its blocks (waits for the GPU)."""
        if self._events:
            torch.cuda.synchronize()
            for i, start, end in self._events:
                self.times[i].append(start.elapsed_time(end) / 1000)
            self._events.clear()

    def _count(self, i: int) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else kwargs["hidden_states"]
            self.tokens[i] = int(x.shape[1])

        return hook

    def clear(self) -> None:
        for t in self.times:
            t.clear()


def time_family(
    geo: Geometry, s: Settings, log: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Every variant warmed up, then `repeats` interleaved rounds; per variant and block,
    the seconds of each round, and the tokens into each block's attention."""
    names = variant_names(s)
    models = {n: make_variant(geo.model, n, s) for n in names}
    clocks = {n: BlockClock(m, s.device) for n, m in models.items()}
    partitions: dict[str, dict[str, int]] = {}

    def call(name: str) -> None:
        models[name](**geo.inputs)
        clocks[name].collect()

    with torch.inference_mode():
        for n in names:
            for _ in range(warmup_calls(n, s)):
                call(n)
            clocks[n].clear()
        before = {n: _partition_counts(models[n]) for n in names}
        for r in range(s.repeats):
            for n in round_order(names, r):
                call(n)
                log(f"round {r} {n}: " + ", ".join(f"{t[-1]:.3f}" for t in clocks[n].times))
        for n in names:
            after = _partition_counts(models[n])
            partitions[n] = {k: after[k] - before[n][k] for k in after}
    memory = cuda_memory(models, geo) if s.memory and s.device.startswith("cuda") else None
    return {
        "blocks": {n: c.times for n, c in clocks.items()},
        "attention_tokens": {n: c.tokens for n, c in clocks.items()},
        "partitions_in_timed_calls": partitions,
        "cuda_peak_bytes": memory,
    }


def _partition_counts(model: nn.Module) -> dict[str, int]:
    import tomerge_cli

    merger = tomerge_cli.get_merger(model)
    return dict(merger.stats["partitions"]) if merger is not None else {}


def cuda_memory(models: dict[str, nn.Module], geo: Geometry) -> dict[str, int]:
    """torch.cuda.max_memory_allocated of one call per variant (weights included)."""
    out = {}
    with torch.inference_mode():
        for name, model in models.items():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            model(**geo.inputs)
            torch.cuda.synchronize()
            out[name] = int(torch.cuda.max_memory_allocated())
    return out


# -- peak RSS (CPU) -------------------------------------------------------------------------
def memory_child(family: str, name: str, s: Settings, loop: str = "cfg") -> dict[str, int]:
    """In a fresh process: every variant once on a tiny model (the same code resident in
    every child), then build, patch and sample `loop` (`wan_sampling`); the RSS after
    building, the peak RSS and the file-backed RSS at the end (KiB)."""
    torch.set_num_threads(s.threads)
    warm = Settings(families=(family,), frames=2, tiny=True, memory_ratios=s.memory_ratios)
    tiny = build(family, warm)
    for variant in memory_variants(s):
        wan_sampling(make_variant(tiny.model, variant[1], warm), tiny.inputs, variant[2])
    del tiny
    geo = build(family, s)
    model = make_variant(geo.model, name, s)
    built = _rss_now_kib()
    wan_sampling(model, geo.inputs, loop)
    return {
        "rss_built_kib": built,
        "rss_peak_kib": _status_kib("VmHWM"),
        "rss_file_kib": _status_kib("RssFile"),
    }


def wan_sampling(model: nn.Module, inputs: dict[str, torch.Tensor], loop: str) -> None:
    """Euler steps as WanPipeline takes them: with "cfg" two calls per step (conditional,
    then unconditional while the conditional prediction is held), 2 steps, importance's map
    from the first step's pair; with "no-cfg" one call per step, 3 steps (step-delta's map
    needs two earlier predictions). Every variant of a loop makes the same calls."""
    x, context = inputs["hidden_states"], inputs["encoder_hidden_states"]
    contexts = [context, torch.randn_like(context)] if loop == "cfg" else [context]
    with torch.inference_mode():
        for t in (900.0, 700.0, 500.0)[: 2 if loop == "cfg" else 3]:
            call = {
                **inputs,
                "hidden_states": x,
                "timestep": torch.full_like(inputs["timestep"], t),
            }
            preds = [model(**{**call, "encoder_hidden_states": c}).sample for c in contexts]
            x = x - 0.2 * (preds[-1] + 5.0 * (preds[0] - preds[-1]))
            del preds


NO_CFG = " (no CFG)"  # label suffix of the rows sampled without CFG


def memory_variants(s: Settings) -> list[tuple[str, str, str]]:
    """(row label, variant, sampling loop) of the peak-RSS children, each loop's unmerged
    child first."""
    merging = [m for m in s.methods if m != "bound"]
    out = []
    for loop in s.memory_loops:
        methods = [*merging, MLP_VARIANT] if loop == "cfg" and "importance" in merging else merging
        names = ["unmerged"] + [f"{m} {r}" for r in s.memory_ratios for m in methods]
        if loop == "no-cfg":  # without CFG only importance changes (its map: step-delta)
            names = [n for n in names if not n.startswith("tome")]
        out += [(n if loop == "cfg" else n + NO_CFG, n, loop) for n in names]
    return out


def _status_kib(key: str) -> int:
    """A /proc/self/status field in KiB: VmRSS now, VmHWM the peak of this process's own
    memory (getrusage's ru_maxrss would start from the parent's peak at the fork)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _rss_now_kib() -> int:
    return _status_kib("VmRSS")


def peak_rss(family: str, s: Settings) -> dict[str, dict[str, list[int]]]:
    """memory_child of unmerged and each merging method at `memory_ratios`, one subprocess
    each, `memory_repeats` interleaved rounds (peak RSS moves by a few % between identical
    runs: the allocator's history); per variant the lists of each round's values. With
    `mmap_threshold` every block at least that large is mapped and unmapped on its own, so
    the peak follows the live tensors rather than the heap's history."""
    env = dict(os.environ)
    if s.mmap_threshold is not None:
        env["MALLOC_MMAP_THRESHOLD_"] = str(s.mmap_threshold)
    variants = memory_variants(s)
    out: dict[str, dict[str, list[int]]] = {label: {} for label, _, _ in variants}
    for _ in range(s.memory_repeats):
        for label, name, loop in variants:
            cmd = [sys.executable, "-m", "benchmarks.tomerge_dit_speed", "--memory-child"]
            cmd += [family, name, loop, "--settings", json.dumps(asdict(s))]
            done = subprocess.run(
                cmd, capture_output=True, text=True, check=True, cwd=common.REPO, env=env
            )
            for key, value in json.loads(done.stdout.strip().splitlines()[-1]).items():
                out[label].setdefault(key, []).append(value)
    return out


# -- statistics ---------------------------------------------------------------------------
def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def step_seconds(
    geo_kinds: list[str], counts: dict[str, int], blocks: list[list[float]], r: int
) -> float:
    """Round r's seconds of the full model's blocks, each kind at its measured time."""
    per_kind = {k: blocks[i][r] for i, k in enumerate(geo_kinds)}
    return sum(counts[k] * per_kind[k] for k in counts)


def default_merged(full: list[str]) -> dict[str, int]:
    """Blocks of each kind apply_patch merges by default: the middle half of a DiT with 8
    or more blocks (tomerge_cli.dit.DiTTokenMerger), all of a smaller one."""
    n = len(full)
    chosen = full[n // 4 : n - n // 4] if n >= 8 else full
    return {k: chosen.count(k) for k in dict.fromkeys(full)}


def summarise(geo: Geometry, timed: dict[str, Any], s: Settings) -> dict[str, Any]:
    """Per block kind and per step-equivalent: medians, spreads and paired ratios."""
    blocks = timed["blocks"]
    base = blocks["unmerged"]
    merged_counts = default_merged(geo.full)
    rounds = range(s.repeats)
    step_all = {
        n: [step_seconds(geo.kinds, geo.counts, b, r) for r in rounds] for n, b in blocks.items()
    }
    step_default = {}
    for n, b in blocks.items():
        rest = {k: geo.counts[k] - merged_counts[k] for k in geo.counts}
        step_default[n] = [
            step_seconds(geo.kinds, merged_counts, b, r) + step_seconds(geo.kinds, rest, base, r)
            for r in rounds
        ]
    out: dict[str, Any] = {"per_block": {}, "per_step": {}}
    for n, b in blocks.items():
        out["per_block"][n] = {
            kind: {
                "seconds": spread(b[i]),
                "speedup": spread([base[i][r] / b[i][r] for r in rounds]),
                "attention_tokens": timed["attention_tokens"][n][i],
            }
            for i, kind in enumerate(geo.kinds)
        }
        out["per_step"][n] = {
            label: {
                "seconds": spread(steps[n]),
                "speedup": spread([steps["unmerged"][r] / steps[n][r] for r in rounds]),
                **(
                    {
                        "over_bound": spread(
                            [steps[n][r] / steps[f"bound {n.split()[1]}"][r] for r in rounds]
                        )
                    }
                    if n.split()[0] in ("importance", "tome") and "bound" in s.methods
                    else {}
                ),
            }
            for label, steps in (("all", step_all), ("default", step_default))
        }
    out["default_merged_blocks"] = merged_counts
    return out


# -- report -------------------------------------------------------------------------------
def _interval(d: dict[str, float], fmt: str = "{:.3f}") -> str:
    return f"{fmt.format(d['median'])} [{fmt.format(d['min'])}, {fmt.format(d['max'])}]"


def _over_bound(d: dict[str, Any]) -> str:
    return _interval(d["over_bound"]) if "over_bound" in d else ""


def targets(summary: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """Flux at ratio 0.5 per step-equivalent: >= 1.20x, and within 5% of the bound."""
    rows = []
    per_step = summary["per_step"]
    for method in ("importance", "tome"):
        name = f"{method} 0.5"
        if name not in per_step:
            continue
        for label in ("all", "default"):
            d = per_step[name][label]
            speed = d["speedup"]["median"]
            gap = d["over_bound"]["median"] - 1 if "over_bound" in d else float("nan")
            rows.append(
                (
                    f"{method}, {'every block' if label == 'all' else 'default blocks'}",
                    f"{speed:.3f}x: {'met' if speed >= TARGET_SPEEDUP else 'missed'}",
                    f"{gap * 100:+.1f}%: {'met' if gap <= TARGET_BOUND_GAP else 'missed'}",
                    _over_bound(d),
                )
            )
    return rows


def report(data: dict[str, Any]) -> list[tuple[str, str]]:
    """The markdown sections of a run's `data` (see main)."""
    s = Settings(**{**data["settings"], "families": tuple(data["settings"]["families"])})
    how = (
        "Nothing timed (--memory-only): peak RSS of one subprocess per variant and round; "
        "each first runs every variant on a tiny model (the same code resident in all), then "
        "builds one block and samples as WanPipeline does: rows without a suffix with CFG "
        "(two calls per step, the conditional prediction held during the second; importance "
        "from CFG), '(no CFG)' rows one call per step (importance from step-delta). Ratios "
        "are paired per round with the unmerged child of the same sampling."
    )
    sections = [
        (
            "How to read",
            how
            if not data["families"]
            else "Seconds are medians over "
            f"{s.repeats} interleaved rounds, [min, max] over rounds; speed-ups are the median "
            "[min, max] of the paired per-round ratios unmerged / variant. tomerge merges the "
            "image tokens into each block's attention (apply_patch's default layers); "
            "'bound' is the zero-cost bound (the same patch, the matching replaced by a "
            "slice). Per step-equivalent is an EXTRAPOLATION: the measured seconds of each "
            "block kind times the full model's block count, with every block merged ('all') "
            "or apply_patch's default for DiTs (the middle half merged, 'default'); the "
            "parts outside the blocks (embedders, output layer, VAE, text encoders) are not "
            f"timed. {s.device}, {s.dtype}, {s.threads} torch thread(s), SDPA attention.",
        )
    ]
    for family, fam in data["families"].items():
        summary = fam["summary"]
        rows = []
        for n, kinds in summary["per_block"].items():
            for kind, d in kinds.items():
                rows.append(
                    (
                        n,
                        kind,
                        d["attention_tokens"],
                        _interval(d["seconds"]),
                        _interval(d["speedup"]),
                    )
                )
        sections.append(
            (
                f"{family}: seconds per block; {fam['describe']}",
                common.markdown_table(
                    ["variant", "block", "tokens into attention", "s / block", "speed-up"], rows
                ),
            )
        )
        counts = ", ".join(f"{c} {k}" for k, c in fam["counts"].items())
        default = ", ".join(f"{c} {k}" for k, c in summary["default_merged_blocks"].items())
        step_rows = []
        for n, labels in summary["per_step"].items():
            a, d = labels["all"], labels["default"]
            step_rows.append(
                (
                    n,
                    _interval(a["seconds"], "{:.1f}"),
                    _interval(a["speedup"]),
                    _over_bound(a),
                    _interval(d["speedup"]),
                    _over_bound(d),
                )
            )
        sections.append(
            (
                f"{family}: per step-equivalent (extrapolated: {counts}; default merges {default})",
                common.markdown_table(
                    [
                        "variant",
                        "s / step, all merged",
                        "speed-up, all",
                        "time / bound, all",
                        "speed-up, default",
                        "time / bound, default",
                    ],
                    step_rows,
                ),
            )
        )
        if fam.get("partitions"):
            rows = [(n, json.dumps(p)) for n, p in fam["partitions"].items() if p]
            sections.append(
                (
                    f"{family}: partitions drawn during the timed calls (importance merged from "
                    "its map in every timed step)",
                    common.markdown_table(["variant", "partitions"], rows),
                )
            )
    if "flux" in data["families"]:
        rows = targets(data["families"]["flux"]["summary"])
        sections.append(
            (
                f"Targets (Flux, {s.size}^2, ratio 0.5, per step-equivalent): >= "
                f"{TARGET_SPEEDUP:.2f}x and within {TARGET_BOUND_GAP:.0%} of the zero-cost bound",
                common.markdown_table(
                    [
                        "method, blocks merged",
                        "speed-up",
                        "time over bound",
                        "time / bound [min, max]",
                    ],
                    rows,
                ),
            )
        )
    allocator = (
        f", glibc mmap threshold fixed at {s.mmap_threshold} bytes"
        if s.mmap_threshold is not None
        else ""
    )
    for family, mem in data.get("memory", {}).items():
        sections.append((f"{family}: peak memory of one step{allocator}", _memory_table(mem)))
    return sections


def _memory_table(mem: dict[str, dict[str, Any]]) -> str:
    """Peak memory per variant: median [min, max] over rounds and the paired per-round
    ratios to the unmerged child of the same sampling loop (CPU: RSS in MiB, also counted
    above the built model, and the file-backed part at the end, which shows the same code
    resident in every child; GPU: one call, bytes allocated by torch)."""
    cpu = "rss_peak_kib" in mem["unmerged"]
    key = "rss_peak_kib" if cpu else "cuda_peak_bytes"

    def rounds(m: dict[str, Any], k: str) -> list[float]:
        v = m[k]
        return [float(x) for x in (v if isinstance(v, list) else [v])]

    def ratios(m: dict[str, Any], base: dict[str, Any], above: bool) -> str:
        num, den = rounds(m, key), rounds(base, key)
        if above:
            num = [a - b for a, b in zip(num, rounds(m, "rss_built_kib"), strict=True)]
            den = [a - b for a, b in zip(den, rounds(base, "rss_built_kib"), strict=True)]
        return _interval(spread([a / max(b, 1.0) for a, b in zip(num, den, strict=True)]))

    def mib(m: dict[str, Any], k: str) -> str:
        return _interval(spread([v / 1024 for v in rounds(m, k)]), "{:,.0f}")

    def added(m: dict[str, Any], base: dict[str, Any]) -> str:
        d = [(a - b) / 1024 for a, b in zip(rounds(m, key), rounds(base, key), strict=True)]
        return _interval(spread(d), "{:+.1f}")

    rows = []
    for name, m in mem.items():
        base = mem.get("unmerged" + NO_CFG) if name.endswith(NO_CFG) else None
        base = base or mem["unmerged"]
        if cpu:
            file = mib(m, "rss_file_kib") if "rss_file_kib" in m else "n/a"
            over = added(m, base)
            rows.append(
                (name, mib(m, key), over, ratios(m, base, False), ratios(m, base, True), file)
            )
        else:
            peak = spread([v / 1024**3 for v in rounds(m, key)])
            rows.append((name, _interval(peak, "{:.2f}"), "", ratios(m, base, False), "", ""))
    n = len(rounds(mem["unmerged"], key))
    unit = f"MiB peak RSS, median [min, max] of {n}" if cpu else "GiB max allocated"
    cols = [
        "variant",
        unit,
        "MiB over unmerged",
        "ratio to unmerged",
        "above the built model, ratio",
        "file-backed MiB at the end",
    ]
    return common.markdown_table(cols, rows)


# -- run ----------------------------------------------------------------------------------
def measure(s: Settings, log: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """Everything a run writes (data of the JSON; `report` makes the markdown)."""
    torch.set_num_threads(s.threads)
    data: dict[str, Any] = {"settings": asdict(s), "families": {}, "memory": {}}
    for family in s.families:
        start = time.perf_counter()
        geo = build(family, s)
        timed = time_family(geo, s, log)
        data["families"][family] = {
            "describe": geo.describe,
            "image_tokens": geo.image_tokens,
            "text_tokens": geo.text_tokens,
            "batch": geo.batch,
            "kinds": geo.kinds,
            "counts": geo.counts,
            "blocks_seconds": timed["blocks"],
            "partitions": timed["partitions_in_timed_calls"],
            "summary": summarise(geo, timed, s),
            "wall_s": time.perf_counter() - start,
        }
        if timed["cuda_peak_bytes"]:
            data["memory"][family] = {
                n: {"cuda_peak_bytes": v} for n, v in timed["cuda_peak_bytes"].items()
            }
        log(f"{family}: {time.perf_counter() - start:.0f} s")
        del geo, timed
    if s.memory and not s.device.startswith("cuda"):  # Wan's geometry, also when not timed
        start = time.perf_counter()
        data["memory"]["wan"] = peak_rss("wan", s)
        log(f"wan peak RSS: {time.perf_counter() - start:.0f} s")
    return data


def plot(data: dict[str, Any], path: Any) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fams = list(data["families"])
    fig, axes = plt.subplots(1, len(fams), figsize=(4.5 * len(fams), 3.6), squeeze=False)
    ratios = data["settings"]["ratios"]
    methods = data["settings"]["methods"]
    for ax, family in zip(axes[0], fams, strict=True):
        steps = data["families"][family]["summary"]["per_step"]
        shown = [m for m in (("importance", "tab:blue"), ("tome", "tab:orange")) if m[0] in methods]
        for j, (method, color) in enumerate(shown):
            meds = [steps[f"{method} {r}"]["all"]["speedup"] for r in ratios]
            width = 0.7 / len(shown)
            xs = [i + (j - (len(shown) - 1) / 2) * width for i in range(len(ratios))]
            err = [[m["median"] - m["min"] for m in meds], [m["max"] - m["median"] for m in meds]]
            ax.bar(xs, [m["median"] for m in meds], width, yerr=err, color=color, label=method)
        if "bound" in methods:
            bound = [steps[f"bound {r}"]["all"]["speedup"]["median"] for r in ratios]
            ax.scatter(
                range(len(ratios)),
                bound,
                marker="_",
                s=900,
                color="k",
                zorder=3,
                label="zero-cost bound",
            )
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(range(len(ratios)), [str(r) for r in ratios])
        ax.set_xlabel("ratio")
        ax.set_title(family)
        ax.set_ylabel("speed-up per step (all blocks merged)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    common.save_figure(fig, path)


def parse(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, Settings]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="256^2, one quarter-size Wan frame, ratio 0.5, 2 repeats",
    )
    p.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    p.add_argument("--ratios", nargs="+", type=float, default=None)
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 5)")
    p.add_argument("--size", type=int, default=None, help="Flux / SD3.5 image side in px")
    p.add_argument("--frames", type=int, default=None, help="Wan latent frames (Wan 2.1: 21)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=list(DTYPES), default=None, help="default fp32 (cuda: bf16)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    p.add_argument("--memory-ratios", nargs="+", type=float, default=[0.5])
    p.add_argument("--memory-repeats", type=int, default=3, help="CPU peak-RSS rounds")
    p.add_argument(
        "--memory-only", action="store_true", help="time nothing: the CPU peak-RSS runs alone"
    )
    p.add_argument(
        "--mmap-threshold",
        type=int,
        default=None,
        metavar="BYTES",
        help="fix glibc's mmap threshold in the peak-RSS runs (e.g. 65536), so that the peak "
        "follows the live tensors, not the heap's history",
    )
    p.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    p.add_argument("--warmup", type=int, default=1, help="calls per variant before timing")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--name", default=None, help="results file name")
    p.add_argument(
        "--memory-loops",
        nargs="+",
        choices=["cfg", "no-cfg"],
        default=["cfg", "no-cfg"],
        help="how the peak-RSS children sample Wan: two calls per step (CFG) and/or one",
    )
    p.add_argument(
        "--memory-child", nargs=3, metavar=("FAMILY", "VARIANT", "LOOP"), help=argparse.SUPPRESS
    )
    p.add_argument("--settings", help=argparse.SUPPRESS)
    common.add_common_args(p)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    s = Settings(
        families=() if args.memory_only else tuple(args.families),
        ratios=tuple(args.ratios or ([0.5] if args.quick else RATIOS)),
        repeats=args.repeats or (2 if args.quick else 5),
        size=args.size or (256 if args.quick else 1024),
        frames=args.frames or (1 if args.quick else 5),
        wan_grid=(WAN_FRAME[0] // 2, WAN_FRAME[1] // 2) if args.quick else WAN_FRAME,
        device=args.device,
        dtype=args.dtype or ("bf16" if cuda else "fp32"),
        memory=not args.no_memory,
        memory_ratios=tuple(args.memory_ratios),
        memory_repeats=args.memory_repeats,
        mmap_threshold=args.mmap_threshold,
        memory_loops=tuple(args.memory_loops),
        methods=tuple(args.methods),
        warmup=args.warmup,
        threads=args.threads,
    )
    return args, s


def main(argv: Sequence[str] | None = None) -> None:
    args, s = parse(argv)
    if args.memory_child:
        child = Settings(
            **{
                k: tuple(v) if isinstance(v, list) else v
                for k, v in json.loads(args.settings).items()
            }
        )
        family, name, loop = args.memory_child
        print(json.dumps(memory_child(family, name, child, loop)))
        return
    common.check_tree(args)
    if s.threads == 1 and os.environ.get("OMP_NUM_THREADS") != "1":
        print("note: OMP_NUM_THREADS is not 1; torch is set to 1 thread", file=sys.stderr)
    start = time.perf_counter()
    data = measure(s, log=lambda m: print(m, file=sys.stderr, flush=True))
    data["wall_s"] = time.perf_counter() - start
    name = args.name or "dit_speed" + ("-quick" if args.quick else "") + (
        f"-{s.device.split(':')[0]}-{s.dtype}" if s.device != "cpu" else ""
    )
    path = common.write_results(
        "tomerge",
        name,
        "tomerge speed on diffusion-transformer blocks ("
        + ", ".join(NAMES[f] for f in s.families or ("wan",))
        + ")",
        report(data),
        data,
    )
    if data["families"]:
        plot(data, common.RESULTS / "tomerge" / f"{name}.png")
    print(path.read_text())


if __name__ == "__main__":
    main()
