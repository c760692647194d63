"""Evaluation over real bitstreams: per image compress -> bytes -> decompress, then RD
points, costs and BD-rate of each curve against the first."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdic_cli.codec_io import compress_image, decompress_bytes
from kdic_cli.metrics import bd_rate, bpp, ms_ssim, psnr
from kdic_cli.models import fingerprint

__all__ = ["evaluate_curves", "evaluate_model", "plot_rd"]


def evaluate_model(model: nn.Module, images: list[tuple[str, Tensor]], console: Any = None,
                   desc: str = "") -> dict[str, Any]:  # fmt: skip
    """Mean bpp (from the bytes), PSNR, MS-SSIM, encode and decode seconds per image."""
    fp = fingerprint(model)
    rows = []
    it = console.progress(images, desc) if console is not None else images
    with torch.inference_mode():
        for name, x in it:
            t0 = time.perf_counter()
            data = compress_image(model, x, fp)
            t1 = time.perf_counter()
            x_hat = decompress_bytes(model, data, fp)
            t2 = time.perf_counter()
            h, w = x.shape[-2:]
            rows.append(
                {
                    "image": name,
                    "bpp": bpp(len(data), h, w),
                    "psnr": psnr(x, x_hat),
                    "ms_ssim": ms_ssim(x, x_hat),
                    "enc_s": t1 - t0,
                    "dec_s": t2 - t1,
                }
            )
    ms = [r["ms_ssim"] for r in rows if r["ms_ssim"] is not None]
    return {
        "bpp": statistics.fmean(r["bpp"] for r in rows),
        "psnr": statistics.fmean(r["psnr"] for r in rows),
        "ms_ssim": statistics.fmean(ms) if ms else None,
        "enc_s": statistics.fmean(r["enc_s"] for r in rows),
        "dec_s": statistics.fmean(r["dec_s"] for r in rows),
        "images": rows,
    }


def evaluate_curves(
    curves: list[list[nn.Module]], labels: list[str], sources: list[list[str]],
    images: list[tuple[str, Tensor]], console: Any = None,
) -> dict[str, Any]:  # fmt: skip
    from shared.profiling import count_macs, count_params

    out = []
    for models, label, srcs in zip(curves, labels, sources, strict=True):
        points = []
        for model, src in zip(models, srcs, strict=True):
            p = evaluate_model(model, images, console, f"{label} {Path(src).parent.name}")
            points.append({"source": src, **p})
        points.sort(key=lambda p: p["bpp"])
        x = torch.rand(1, 3, 256, 256)
        out.append({
            "label": label, "points": points, "params": count_params(models[0]),
            "kmac_per_px": count_macs(models[0], x) / (256 * 256) / 1e3,
        })  # fmt: skip
    anchor = out[0]["points"]
    for c in out:
        c["bd_rate_psnr"] = bd_rate([p["bpp"] for p in anchor], [p["psnr"] for p in anchor],
                                    [p["bpp"] for p in c["points"]],
                                    [p["psnr"] for p in c["points"]])  # fmt: skip
    return {"anchor": out[0]["label"], "images": [n for n, _ in images], "curves": out}


def plot_rd(result: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shared.io import atomic_path

    fig, ax = plt.subplots(figsize=(5, 4))
    for c in result["curves"]:
        bd = c.get("bd_rate_psnr")
        tag = f" ({bd:+.1f}%)" if bd is not None and c is not result["curves"][0] else ""
        ax.plot([p["bpp"] for p in c["points"]], [p["psnr"] for p in c["points"]], "o-",
                label=f"{c['label']}{tag}")  # fmt: skip
    ax.set_xlabel("bpp (real bitstreams)")
    ax.set_ylabel("PSNR (dB, 8-bit)")
    ax.grid(alpha=0.3)
    ax.legend(title=f"BD-rate vs {result['anchor']}", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
