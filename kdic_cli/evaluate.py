"""Evaluation over real bitstreams: per image compress -> bytes -> decompress, then RD
points, costs and BD-rate of each curve against the first. The rate is the payload bpp
(compressai's strings, as compressai's eval_model and the papers count it); the file bpp
(the .kdic container, header included) is reported beside it."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from kdic_cli.codec_io import compress_image, decompress_bytes, payload_bytes
from kdic_cli.metrics import bd_rate, bpp, codec_cost, ms_ssim, psnr
from kdic_cli.models import fingerprint

__all__ = ["evaluate_curves", "evaluate_model", "plot_rd"]
_MEANS = ("payload_bpp", "file_bpp", "psnr", "enc_s", "dec_s")  # averaged over the images


def evaluate_model(model: nn.Module, images: list[tuple[str, Tensor]], console: Any = None,
                   desc: str = "") -> dict[str, Any]:  # fmt: skip
    """Means per image of the payload bpp (compressai's strings, the RD axis), the file bpp
    (the whole .kdic file), PSNR, MS-SSIM, encode and decode seconds."""
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
                    "payload_bpp": bpp(payload_bytes(data), h, w),
                    "file_bpp": bpp(len(data), h, w),
                    "psnr": psnr(x, x_hat),
                    "ms_ssim": ms_ssim(x, x_hat),
                    "enc_s": t1 - t0,
                    "dec_s": t2 - t1,
                }
            )
    ms = [r["ms_ssim"] for r in rows if r["ms_ssim"] is not None]
    means = {k: statistics.fmean(r[k] for r in rows) for k in _MEANS}
    return {**means, "ms_ssim": statistics.fmean(ms) if ms else None, "images": rows}


def evaluate_curves(
    curves: list[list[nn.Module]], labels: list[str], sources: list[list[str]],
    images: list[tuple[str, Tensor]], console: Any = None,
) -> dict[str, Any]:  # fmt: skip

    out = []
    for models, label, srcs in zip(curves, labels, sources, strict=True):
        points = []
        for model, src in zip(models, srcs, strict=True):
            p = evaluate_model(model, images, console, f"{label} {Path(src).parent.name}")
            points.append({"source": src, **p})
        points.sort(key=lambda p: p["payload_bpp"])
        out.append({"label": label, "points": points, **codec_cost(models[0])})
    anchor = out[0]["points"]
    for c in out:
        c["bd_rate_psnr"] = bd_rate(*_curve(anchor), *_curve(c["points"]))
    return {"anchor": out[0]["label"], "images": [n for n, _ in images], "curves": out}


def _curve(points: list[dict[str, Any]]) -> tuple[list[float], list[float]]:
    """(payload bpp, PSNR) of a curve: the rate as compressai and the papers count it."""
    return [p["payload_bpp"] for p in points], [p["psnr"] for p in points]


def plot_rd(result: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shared.io import atomic_path

    fig, ax = plt.subplots(figsize=(5, 4))
    for c in result["curves"]:
        bd = c.get("bd_rate_psnr")
        tag = f" ({bd:+.1f}%)" if bd is not None and c is not result["curves"][0] else ""
        ax.plot(*_curve(c["points"]), "o-", label=f"{c['label']}{tag}")
    ax.set_xlabel("payload bpp (compressai strings of real bitstreams)")
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
