"""tomerge fidelity on a diffusion transformer that has learned something: a small
class-conditional MMDiT (diffusers SD3Transformer2DModel: joint blocks, the class embedding
as a one-token "text" and as the pooled projection, patch 2) trained here on builtin:digits
at 32x32 (256 image tokens), then sampled unmerged and merged from the same seeds.

    python -m benchmarks.tomerge_fidelity_dit [--train-steps 1500] [--per-class 6]

Two settings, each the methods with apply_patch's default blocks (for a DiT of fewer than 8
blocks, as this one, every block; merging forced where the cost model would skip blocks
this small):
- with classifier-free guidance (guidance 3, a CFG batch per step): importance merging from
  the paper's map |eps_cond - eps_uncond| against the random grid (mode="tome"), at ratios
  0.3 / 0.5 / 0.7;
- without it (guidance 1, one conditional call per step, as a guidance-distilled model
  runs): importance="step-delta" (|eps_t - eps_{t-1}|) against the grid, at the same ratios.
With --merge-mlp instead one setting, "mlp": importance merging (CFG) with the feed-forward
input merged as well (merge_mlp=True) against attention only: what merging the MLP, the op
that sets a DiT block's peak memory, costs in fidelity.

Per method: PSNR of each sample to the unmerged sample of the same seed, mean with a 95%
bootstrap interval over samples; the paired difference importance - grid with its 95%
bootstrap interval (the same resampled samples for both) and the verdict it supports
("higher" / "on par" / "lower"); SSIM; the class accuracy of the samples under the digits
classifier (the shipped digits ViT). The training length (1,500 steps) was fixed before
any sample was drawn and not tuned; the sampling seeds (from 100) are used for nothing else.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.common import RESULTS, add_common_args, check_tree, markdown_table, write_results
from benchmarks.tomerge_fidelity import save_grid
from shared.intervals import bootstrap_mean
from tomerge_cli.demo import sample

REPO = Path(__file__).resolve().parent.parent
SIZE = 32
RATIOS = (0.3, 0.5, 0.7)
CONFIG = dict(layers=6, heads=2, head_dim=32, embed=64)  # 0.9 M parameters, width 64
BOOT = 2000


class DigitsMMDiT(nn.Module):
    """SD3Transformer2DModel with a class embedding as its one-token 'text' and its pooled
    projection (class 10 = null, for classifier-free guidance); model(x, t, y) -> eps."""

    def __init__(self, size: int = SIZE, layers: int = 6, heads: int = 2, head_dim: int = 32,
                 embed: int = 64) -> None:  # fmt: skip
        super().__init__()
        from diffusers import SD3Transformer2DModel

        from tomerge_cli.references import CLASSES

        self.size = size
        self.transformer = SD3Transformer2DModel(
            sample_size=size, patch_size=2, in_channels=1, out_channels=1, num_layers=layers,
            attention_head_dim=head_dim, num_attention_heads=heads, joint_attention_dim=embed,
            caption_projection_dim=heads * head_dim, pooled_projection_dim=embed,
            pos_embed_max_size=size // 2,
        )  # fmt: skip
        self.classes = nn.Embedding(CLASSES + 1, embed)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        e = self.classes(y)
        t = t.reshape(-1).expand(len(x))
        return self.transformer(
            x, encoder_hidden_states=e[:, None], pooled_projections=e, timestep=t
        ).sample


def trained_model(steps: int, batch: int) -> tuple[DigitsMMDiT, float, float]:
    """The MMDiT trained with tomerge_cli.references' recipe and trainer (one thread, every
    draw from (seed, step)), cached under $TOOLKIT_CACHE; its final loss and train seconds."""
    from safetensors.torch import load_file, save_file

    from tomerge_cli.references import Recipe, train

    cache = Path(os.environ.get("TOOLKIT_CACHE") or REPO / ".cache") / "tomerge"
    path = cache / f"digits-mmdit-{steps}x{batch}.safetensors"
    model = DigitsMMDiT(**CONFIG)
    if path.exists():
        model.load_state_dict(load_file(path))
        return model.eval(), float("nan"), 0.0
    start = time.perf_counter()
    recipe = Recipe(size=SIZE, steps=steps, batch=batch, lr=1e-3, seed=0)
    model, loss = train(recipe, model=model)
    cache.mkdir(parents=True, exist_ok=True)
    save_file(model.state_dict(), path)
    return model.eval(), loss, time.perf_counter() - start


def blocks_merged(model: nn.Module) -> int:
    """How many blocks apply_patch merges by default on this model (read off a patch)."""
    import tomerge_cli

    tomerge_cli.apply_patch(model, ratio=0.5, skip_unprofitable=False)
    try:
        return len(tomerge_cli.get_merger(model).blocks)
    finally:
        tomerge_cli.remove_patch(model)


def per_sample_psnr(imgs: torch.Tensor, base: torch.Tensor) -> list[float]:
    """PSNR of each image to its unmerged twin (identical images capped at 99 dB)."""
    from tomerge_cli.fidelity import psnr

    return [min(psnr(imgs[i : i + 1], base[i : i + 1]), 99.0) for i in range(len(imgs))]


def run_setting(
    model: nn.Module,
    predict: Any,
    labels: torch.Tensor,
    *,
    guidance: float,
    steps: int,
    ratios: tuple[float, ...],
    methods: dict[str, dict[str, Any]],
    seed: int,
    log: Any = print,
) -> dict[str, Any]:
    """Unmerged samples, then each method at each ratio from the same seeds."""
    import tomerge_cli
    from tomerge_cli.demo import paired_verdict
    from tomerge_cli.fidelity import ssim

    def draw() -> tuple[torch.Tensor, float]:
        start = time.perf_counter()
        chunks = [
            sample(model, c, seed + i, steps, guidance) for i, c in enumerate(labels.split(60))
        ]
        return torch.cat(chunks), time.perf_counter() - start

    def accuracy(imgs: torch.Tensor) -> float:
        return (predict(imgs) == labels).float().mean().item() * 100

    base, base_s = draw()
    out: dict[str, Any] = {"unmerged": {"accuracy": accuracy(base), "seconds": base_s}}
    images = {"unmerged": base}
    for ratio in ratios:
        psnrs = {}
        for name, kwargs in methods.items():
            tomerge_cli.apply_patch(model, ratio=ratio, skip_unprofitable=False, **kwargs)
            merger = tomerge_cli.get_merger(model)
            imgs, secs = draw()
            stats = json.loads(json.dumps(merger.stats))  # a copy: the counts of this run
            tomerge_cli.remove_patch(model)
            psnrs[name] = per_sample_psnr(imgs, base)
            mean, low, high = bootstrap_mean(psnrs[name])
            out[f"{name} {ratio}"] = {
                "psnr": mean, "psnr_low": low, "psnr_high": high, "ssim": ssim(imgs, base),
                "accuracy": accuracy(imgs), "seconds": secs, "psnr_per_sample": psnrs[name],
                "merge_stats": stats,
            }  # fmt: skip
            images[f"{name} {ratio}"] = imgs
            log(f"  guidance {guidance}, {name} {ratio}: {mean:.2f} dB [{low:.2f}, {high:.2f}]")
        first, second = list(methods)
        verdict, low, high = paired_verdict(psnrs[first], psnrs[second])
        diff = statistics.fmean(a - b for a, b in zip(psnrs[first], psnrs[second], strict=True))
        out[f"paired {ratio}"] = {"diff": diff, "low": low, "high": high, "verdict": verdict}
    out["images"] = images
    return out


def table(res: dict[str, Any], methods: list[str], ratios: tuple[float, ...]) -> str:
    rows: list[list[Any]] = [["unmerged", "-", "-", "-", f"{res['unmerged']['accuracy']:.1f}"]]
    for ratio in ratios:
        for name in methods:
            r = res[f"{name} {ratio}"]
            rows.append([
                name, ratio, f"{r['psnr']:.2f} [{r['psnr_low']:.2f}, {r['psnr_high']:.2f}]",
                f"{r['ssim']:.4f}", f"{r['accuracy']:.1f}",
            ])  # fmt: skip
    cols = ["method", "ratio", "PSNR to unmerged, dB [95% CI]", "SSIM", "class accuracy (%)"]
    return markdown_table(cols, rows)


def paired_table(res: dict[str, Any], first: str, second: str, ratios: tuple[float, ...]) -> str:
    rows = []
    for ratio in ratios:
        p = res[f"paired {ratio}"]
        rows.append([ratio, f"{p['diff']:+.2f} [{p['low']:+.2f}, {p['high']:+.2f}]", p["verdict"]])
    return markdown_table(["ratio", f"{first} - {second}, dB [95% CI]", f"{first} is"], rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--per-class", type=int, default=6, help="samples per digit class")
    parser.add_argument("--steps", type=int, default=20, help="DDIM steps")
    parser.add_argument("--guidance", type=float, default=3.0, help="the CFG setting's scale")
    parser.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS))
    parser.add_argument("--seed", type=int, default=100, help="first sampling seed")
    parser.add_argument("--name", default=None, help="results file name")
    parser.add_argument(
        "--merge-mlp",
        action="store_true",
        help="instead: importance merging with the feed-forward input merged too against "
        "attention only, with CFG (what merge_mlp costs in fidelity)",
    )
    add_common_args(parser)
    args = parser.parse_args(argv)
    check_tree(args)
    torch.set_num_threads(1)
    os.environ.setdefault("TOOLKIT_CACHE", str(REPO / ".cache"))

    from tomerge_cli.demo import digits_classifier
    from tomerge_cli.references import CLASSES

    model, loss, train_s = trained_model(args.train_steps, args.batch)
    predict, cls_meta, cls_source = digits_classifier()
    labels = torch.arange(CLASSES).repeat_interleave(args.per_class)
    ratios = tuple(args.ratios)
    importance = dict(mode="importance", importance="cfg")
    settings = {
        "cfg": (args.guidance, {"importance": importance, "grid": dict(mode="tome")}),
        "no-cfg": (1.0, {"step-delta": dict(mode="importance", importance="step-delta"),
                         "grid": dict(mode="tome")}),
    }  # fmt: skip
    if args.merge_mlp:
        mlp = {"importance + MLP": {**importance, "merge_mlp": True}, "importance": importance}
        settings = {"mlp": (args.guidance, mlp)}
    args.name = args.name or "fidelity-mmdit-32px" + ("-mlp" if args.merge_mlp else "")
    data: dict[str, Any] = {
        "model": {**CONFIG, "size": SIZE, "train_steps": args.train_steps, "batch": args.batch,
                  "final_loss": loss, "train_seconds": train_s,
                  "params": sum(p.numel() for p in model.parameters())},
        "classifier": {"source": cls_source, "val_top1": cls_meta.get("val_top1")},
        "samples": len(labels), "ddim_steps": args.steps, "settings": {},
    }  # fmt: skip
    sections = []
    for key, (guidance, methods) in settings.items():
        res = run_setting(model, predict, labels, guidance=guidance, steps=args.steps,
                          ratios=ratios, methods=methods, seed=args.seed)  # fmt: skip
        images = res.pop("images")
        save_grid(images, labels, RESULTS / "tomerge" / f"{args.name}-{key}.png")
        data["settings"][key] = {"guidance": guidance, **res}
        first, second = list(methods)
        head = (
            f"{key}: guidance {guidance:g} ("
            + ("a CFG batch per step" if guidance > 1 else "one conditional call per step")
            + f"), {len(labels)} samples, DDIM {args.steps} steps"
        )
        body = (
            table(res, list(methods), ratios)
            + "\n\nPaired per-sample PSNR difference (95% bootstrap interval over samples):\n\n"
            + paired_table(res, first, second, ratios)
            + f"\n\n![samples]({args.name}-{key}.png) (rows: unmerged, then each method and "
            "ratio in the table's order; columns: the first sample of each digit)"
        )
        sections.append((head, body))
    intro = (
        f"Model: SD3Transformer2DModel, {CONFIG['layers']} joint blocks, width "
        f"{CONFIG['heads'] * CONFIG['head_dim']}, patch 2 ({(SIZE // 2) ** 2} image tokens), "
        f"{data['model']['params'] / 1e6:.2f} M parameters, trained {args.train_steps} steps x "
        f"{args.batch} on builtin:digits at {SIZE} px (final loss {loss:.4f}, "
        f"{train_s / 60:.0f} min on one thread; nan / 0: read from the cache). apply_patch's "
        f"default blocks ({blocks_merged(model)} of {CONFIG['layers']} merged: the middle "
        f"half only from 8 blocks on), merging forced at this size. Classifier: the digits "
        f"ViT ({cls_source})."
    )
    sections.insert(0, ("Setting", intro))
    path = write_results(
        "tomerge", args.name, "tomerge fidelity on a class-conditional MMDiT (digits, 32 px)",
        sections, data,
    )  # fmt: skip
    print(path.read_text())


if __name__ == "__main__":
    main()
