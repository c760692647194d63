"""tomerge speed on whole diffusion-transformer steps at full depth (for a GPU).

    python -m benchmarks.tomerge_dit_step --device cuda              # bf16, 1024^2, Wan 21 frames
    python -m benchmarks.tomerge_dit_step --families flux --ratios 0.3 0.5 0.7

`benchmarks.tomerge_dit_speed` times one or two blocks of each family and extrapolates to
the full model, since the full models do not fit a CPU run; on a GPU they fit. This builds
Flux.1 (19 double + 38 single blocks), SD3.5-medium (24 joint blocks, the first 13 with the
second attention), Wan 2.1 1.3B (30 blocks) and Sana 1.6B (20 blocks) from the same
diffusers configs at full
depth with random weights (the work does not depend on the values) and times one whole
transformer call, a denoising step without the scheduler, VAE and text encoders:
unmerged, and per ratio importance and tome merging with `apply_patch`'s defaults (the
middle half of the blocks, the cost model on) and on every block with the cost model off,
beside the zero-cost bound on every block. The variants share one set of weights.

Timing: `shared.profiling.compare_speed`, interleaved rounds with the order rotating, each
call between two synchronises (the host launches ahead within the call, as in a pipeline);
median time per variant and the median [min, max] of the paired per-round ratios. Importance
is timed in its steady state (its warm-up calls make the map: the CFG map for SD3.5's CFG
batch, the step-to-step change for Flux and Wan).

`--compile`: every variant, unmerged included, is `torch.compile`d (inductor; the warm-up
calls compile), so the merged blocks' matching, merge and unmerge are fused into the
blocks' graphs and launched as fewer kernels; the per-step bookkeeping stays eager.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from benchmarks import common
from benchmarks import tomerge_dit_speed as blocks
from shared.profiling import compare_speed

# the full models' block counts, over the reduced configs of tomerge_dit_speed
FULL_DEPTH: dict[str, dict[str, Any]] = {
    "flux": {"num_layers": 19, "num_single_layers": 38},
    "sd35": {"num_layers": 24, "dual_attention_layers": tuple(range(13))},
    "wan": {"num_layers": 30},
    "sana": {"num_layers": 20},
}
TINY_DEPTH: dict[str, dict[str, Any]] = {  # tests: 8 blocks, so the default is a middle half
    "flux": {"num_layers": 4, "num_single_layers": 4},
    "sd35": {"num_layers": 8, "dual_attention_layers": (0, 1)},
    "wan": {"num_layers": 8},
    "sana": {"num_layers": 8},
}


class Call(nn.Module):
    """The transformer called with the pipeline's keyword arguments (compare_speed passes
    positional ones)."""

    def __init__(self, model: nn.Module, inputs: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.inputs = inputs

    def forward(self, _: torch.Tensor) -> Any:
        return self.model(**self.inputs)


def build(family: str, s: blocks.Settings) -> tuple[nn.Module, dict[str, torch.Tensor], str]:
    """The full-depth model on the run's device and dtype, its inputs and a description."""
    import diffusers

    cls = blocks.LAYOUT[family][0]
    depth = TINY_DEPTH if s.tiny else FULL_DEPTH
    config = {
        **blocks.CONFIGS[family],
        **(blocks.TINY[family] if s.tiny else {}),
        **depth[family],
    }
    text = 7 if s.tiny else blocks.TEXT_TOKENS[family]
    torch.manual_seed(0)
    dtype = blocks.DTYPES[s.dtype]
    default = torch.get_default_dtype()
    # initialised where it runs and in its dtype: a 12 B model in seconds on a GPU, 24 GB
    torch.set_default_dtype(dtype)
    try:
        with torch.device(s.device):
            model = getattr(diffusers, cls)(**config)
    finally:
        torch.set_default_dtype(default)
    inputs, grid, n = blocks._inputs(family, config, text, s)
    model, inputs = blocks.place(model, inputs, s)
    depth_words = ", ".join(
        f"{k} {v if isinstance(v, int) else len(v)}" for k, v in depth[family].items()
    )
    params = sum(p.numel() for p in model.parameters()) / 1e9
    describe = (
        f"{blocks.NAMES[family]} ({depth_words}; {params:.2f} B parameters), {grid}: "
        f"{n} image + {text} text tokens"
    )
    return model, inputs, describe


def variants(model: nn.Module, s: blocks.Settings) -> dict[str, nn.Module]:
    """unmerged, then per ratio and method: apply_patch's defaults (the middle half of the
    blocks, the cost model on: what a user gets) and every block merged with the cost model
    off (what merging itself costs and saves); the zero-cost bound on every block."""
    from tomerge_cli.dit import dit_blocks

    every = list(range(len(dit_blocks(model))))
    out = {"unmerged": model}
    for ratio in s.ratios:
        for method in s.methods:
            for label, options in (
                ("default", {}),
                ("every block", {"blocks": every, "skip_unprofitable": False}),
            ):
                if method == "bound" and not options:
                    continue  # the bound is the target of merging every block
                m = blocks.twin(model)
                blocks.patch_variant(m, method, ratio, s, **options)
                out[f"{method} {ratio}, {label}"] = m
    return out


def _compiled_apart(n: int) -> Any:
    """Dynamo settings for the timed calls only: each of `n` variants runs its own compiled
    code, none falling back to eager (they are instances of one class that differ only in
    their hooks, which dynamo does not guard by default)."""
    limit = max(torch._dynamo.config.recompile_limit, 4 * n)
    return torch._dynamo.config.patch(skip_nnmodule_hook_guards=False, recompile_limit=limit)


def measure(s: blocks.Settings, log: Any = lambda _: None) -> dict[str, Any]:
    import tomerge_cli

    torch.set_num_threads(s.threads)
    out: dict[str, Any] = {
        "settings": {
            k: getattr(s, k)
            for k in (
                "families",
                "ratios",
                "repeats",
                "size",
                "frames",
                "device",
                "dtype",
                "methods",
                "compile",
            )
        },
        "families": {},
    }
    for family in s.families:
        model, inputs, describe = build(family, s)
        log(f"{family}: {describe}")
        patched = variants(model, s)
        models = {n: Call(torch.compile(m) if s.compile else m, inputs) for n, m in patched.items()}
        warmup = max(s.warmup, blocks.IMPORTANCE_WARMUP + 1)
        with _compiled_apart(len(models)) if s.compile else contextlib.nullcontext():
            rows = compare_speed(
                models,
                lambda bs: torch.zeros(1),
                batch_sizes=[1],
                warmup=warmup,
                iters=1,
                repeats=s.repeats,
                device=s.device,
            )
        stats = {}
        for n, m in patched.items():
            merger = tomerge_cli.get_merger(m)
            stats[n] = (
                None
                if merger is None
                else {k: merger.stats[k] for k in ("merged_calls", "skipped_unprofitable")}
            )
        out["families"][family] = {"describe": describe, "rows": rows, "merge_stats": stats}
        del models, patched, model
        if s.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return out


def report(data: dict[str, Any]) -> list[tuple[str, str]]:
    s = data["settings"]
    sections = [
        (
            "How to read",
            "One whole transformer call (a denoising step without scheduler, VAE and text "
            f"encoders) at full depth, {s['device']} {s['dtype']}; seconds are medians over "
            f"{s['repeats']} interleaved rounds, speed-ups the median [min, max] of the paired "
            "per-round ratios unmerged / variant. 'default' is apply_patch's default for DiTs "
            "(the middle half of the blocks, the cost model on), 'every block' merges all with "
            "the cost model off; 'bound' merges at zero cost (the first N - r tokens kept, no "
            "matching), the target of merging every block. 'merged calls' counts the "
            "block calls that merged in all calls of the run (warm-up included), 'skipped' "
            "those the cost model left unmerged."
            + (
                " Every variant, unmerged included, ran under torch.compile (inductor)."
                if s.get("compile")
                else ""
            ),
        )
    ]
    for family, fam in data["families"].items():
        rows = []
        for r in fam["rows"]:
            q = r["speedup_rounds"]
            st = fam["merge_stats"][r["model"]]
            rows.append(
                (
                    r["model"],
                    f"{r['ms_per_batch'] / 1e3:.4f}",
                    f"{q['median']:.3f} [{q['min']:.3f}, {q['max']:.3f}]",
                    "" if st is None else st["merged_calls"],
                    "" if st is None else st["skipped_unprofitable"],
                )
            )
        sections.append(
            (
                f"{family}: {fam['describe']}",
                common.markdown_table(
                    ["variant", "s / step", "speed-up", "merged calls", "skipped"], rows
                ),
            )
        )
    return sections


def parse(argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, blocks.Settings]:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--families", nargs="+", choices=blocks.FAMILIES, default=list(blocks.FAMILIES))
    p.add_argument("--ratios", nargs="+", type=float, default=[0.5])
    p.add_argument("--methods", nargs="+", choices=blocks.METHODS, default=list(blocks.METHODS))
    p.add_argument("--repeats", type=int, default=7, help="interleaved rounds")
    p.add_argument("--size", type=int, default=1024, help="Flux / SD3.5 image side in px")
    p.add_argument("--frames", type=int, default=21, help="Wan latent frames")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=list(blocks.DTYPES), default="bf16")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--name", default=None, help="results file name")
    p.add_argument("--tiny", action="store_true", help="tiny widths, 8 blocks (a smoke run)")
    p.add_argument(
        "--compile", action="store_true", help="torch.compile every variant, unmerged included"
    )
    common.add_common_args(p)
    args = p.parse_args(argv)
    s = blocks.Settings(
        families=tuple(args.families),
        ratios=tuple(args.ratios),
        repeats=args.repeats,
        size=args.size,
        frames=args.frames,
        device=args.device,
        dtype=args.dtype,
        methods=tuple(args.methods),
        threads=args.threads,
        memory=False,
        tiny=args.tiny,
        compile=args.compile,
    )
    return args, s


def main(argv: Sequence[str] | None = None) -> None:
    args, s = parse(argv)
    common.check_tree(args)
    start = time.perf_counter()
    data = measure(s, log=print)
    data["wall_s"] = time.perf_counter() - start
    name = args.name or f"dit_step-{s.device.split(':')[0]}-{s.dtype}" + (
        "-compiled" if s.compile else ""
    )
    path = common.write_results(
        "tomerge",
        name,
        "tomerge speed on whole diffusion-transformer steps at full depth",
        report(data),
        data,
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
