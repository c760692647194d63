"""`make demo` job for kdic: the shipped teacher codec and its distilled half-width student
(references/kdic/, trained on the builtin:photos training split) on the held-out photos
(the "val" split: chelsea, coffee, grace_hopper, flower; never seen in training or in the
choice of the recipe), with real bitstreams (compress -> bytes -> decompress): payload bpp,
PSNR, MS-SSIM, kMAC/px, encode/decode seconds; beside them Pillow's JPEG and WebP at
several qualities on the same photos, the outside reference curve. The picture: the RD plot
and crops of one photo as each codec decodes it.

    python -m kdic_cli.demo --out runs/demo/kdic [--json]
"""

from __future__ import annotations

import io
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from torch import Tensor

QUALITIES = {"JPEG": (5, 10, 20, 30, 50, 75), "WebP": (5, 10, 20, 35, 50, 75)}
CODECS = ("teacher", "student")
CROP_PHOTO, CROP = "coffee", (150, 230, 160)  # the photo, (top, left, size) of its crop


def shipped_codecs(log: Any = print) -> dict[str, Path]:
    """The shipped teacher and student (hash checked), else built once with the same recipe
    into $TOOLKIT_CACHE/kdic/references (about 50 minutes of one CPU thread)."""
    from kdic_cli.references import build
    from shared.cache import cache_dir
    from shared.references import find

    cache = cache_dir("kdic") / "references"
    paths = {name: find(f"kdic/{name}") or cache / f"{name}.safetensors" for name in CODECS}
    for name in [n for n, path in paths.items() if not path.exists()]:
        log(
            f"kdic: the shipped {name} (references/kdic/{name}.safetensors) is missing or "
            f"altered; training it with the recipe of `python -m kdic_cli.references {name}` "
            f"into {cache} (once; `make references` restores the shipped files)"
        )
        build(name, cache, cache / "work", log)
    return paths


def _pillow(x: Tensor, fmt: str, quality: int) -> tuple[bytes, Tensor, float, float]:
    """One image through Pillow's encoder: the file, its decoding, encode and decode seconds."""
    import numpy as np
    import torch
    from PIL import Image

    img = Image.fromarray((x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
    buf = io.BytesIO()
    t0 = time.perf_counter()
    img.save(buf, format=fmt.upper(), quality=quality)
    t1 = time.perf_counter()
    with Image.open(io.BytesIO(buf.getvalue())) as dec:
        arr = np.asarray(dec.convert("RGB")).copy()
    t2 = time.perf_counter()
    return buf.getvalue(), torch.from_numpy(arr).permute(2, 0, 1).float() / 255, t1 - t0, t2 - t1


def pillow_curve(fmt: str, images: list[tuple[str, Tensor]]) -> list[dict[str, Any]]:
    """Per quality, the means over the images of bpp, PSNR, MS-SSIM and seconds."""
    from kdic_cli.metrics import bpp, ms_ssim, psnr

    points = []
    for q in QUALITIES[fmt]:
        rows = []
        for _, x in images:
            data, x_hat, enc, dec = _pillow(x, fmt, q)
            rows.append({"payload_bpp": bpp(len(data), *x.shape[-2:]), "psnr": psnr(x, x_hat),
                         "ms_ssim": ms_ssim(x, x_hat), "enc_s": enc, "dec_s": dec})  # fmt: skip
        points.append({"quality": q, **{k: statistics.fmean(r[k] for r in rows) for k in rows[0]}})
    return sorted(points, key=lambda p: p["payload_bpp"])


def psnr_at(curve: list[dict[str, Any]], rate: float) -> float | None:
    """The curve's PSNR at `rate` bpp (linear between its points); None outside its range."""
    import numpy as np

    rates = [p["payload_bpp"] for p in curve]
    if not rates[0] <= rate <= rates[-1]:
        return None
    return float(np.interp(rate, rates, [p["psnr"] for p in curve]))


def _decoded(models: dict[str, Any], x: Tensor, rate: float) -> list[tuple[str, Tensor]]:
    """The photo as each codec decodes it (JPEG and WebP at the quality nearest `rate`)."""
    from kdic_cli.codec_io import compress_image, decompress_bytes, payload_bytes
    from kdic_cli.metrics import bpp, psnr

    def title(name: str, n_bytes: int, x_hat: Tensor) -> str:
        return f"{name}: {bpp(n_bytes, *x.shape[-2:]):.2f} bpp, {psnr(x, x_hat):.1f} dB"

    panels = [("original", x)]
    for fmt in QUALITIES:
        tries = [(q, *_pillow(x, fmt, q)[:2]) for q in QUALITIES[fmt]]
        q, data, x_hat = min(tries, key=lambda t: abs(bpp(len(t[1]), *x.shape[-2:]) - rate))
        panels.append((title(f"{fmt} q{q}", len(data), x_hat), x_hat))
    for name, model in models.items():
        data = compress_image(model, x)
        x_hat = decompress_bytes(model, data)
        panels.append((title(name, payload_bytes(data), x_hat), x_hat))
    return panels


def plot(path: Path, curves: dict[str, list[dict]], points: dict[str, dict], crops: list) -> None:
    """Left: PSNR against bpp (JPEG, WebP curves; teacher and student points); right: crops."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from shared.io import atomic_write

    fig = plt.figure(figsize=(13, 5.2))
    grid = fig.add_gridspec(2, 5, width_ratios=(2.2, 1, 1, 1, 0.05), wspace=0.08)
    ax = fig.add_subplot(grid[:, 0])
    for (fmt, curve), style in zip(curves.items(), ("s-", "^-"), strict=True):
        ax.plot([p["payload_bpp"] for p in curve], [p["psnr"] for p in curve], style,
                color="0.55" if fmt == "JPEG" else "0.25", label=f"Pillow {fmt} (quality "
                f"{curve[0]['quality']}-{curve[-1]['quality']})", ms=4)  # fmt: skip
    for (name, p), (color, marker) in zip(points.items(), (("C3", "*"), ("C0", "o")), strict=True):
        ax.plot(p["payload_bpp"], p["psnr"], marker, color=color, ms=14 if marker == "*" else 9,
                label=f"{name}: {p['kmac_per_px']:.1f} kMAC/px")  # fmt: skip
    top = max(p["payload_bpp"] for p in points.values())
    ax.set_xlim(0, max(1.0, 2 * top))
    ax.set_xlabel("bits per pixel (payload of real bitstreams; JPEG/WebP: whole file)")
    ax.set_ylabel("PSNR (dB, 8-bit RGB)")
    ax.set_title(f"mean over {len(points['teacher']['photos'])} held-out photos "
                 "(builtin:photos val split)", fontsize=9)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    top_, left, size = CROP
    for k, (title, img) in enumerate(crops):
        sub = fig.add_subplot(grid[k // 3, 1 + k % 3])
        sub.imshow(img[:, top_ : top_ + size, left : left + size].clamp(0, 1).permute(1, 2, 0))
        sub.set_title(title, fontsize=8)
        sub.axis("off")
    fig.suptitle(
        "kdic: shipped teacher and distilled student vs JPEG and WebP "
        f"(crops of {CROP_PHOTO}; bpp and PSNR of the whole photo)",
        fontsize=11,
    )
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight"))
    plt.close(fig)


def _versus(psnr_db: float, other: float | None, name: str) -> str:
    if other is None:
        return f"outside {name}'s measured range"
    gap = psnr_db - other
    if abs(gap) < 0.1:
        return f"level with {name} ({other:.2f} dB)"
    return f"{abs(gap):.2f} dB {'above' if gap > 0 else 'below'} {name}"


def claim(f: dict[str, Any]) -> str:
    """One sentence saying what the run's figures show, including where the codecs lose."""
    t = f"{f['teacher_psnr']:.2f} dB at {f['teacher_bpp']:.3f} bpp"
    s = f"{f['student_psnr']:.2f} dB at {f['student_bpp']:.3f} bpp"
    return (
        f"On {f['photos']} held-out photos the shipped teacher reaches {t}, "
        f"{_versus(f['teacher_psnr'], f['jpeg_psnr_at_teacher_bpp'], 'JPEG')} and "
        f"{_versus(f['teacher_psnr'], f['webp_psnr_at_teacher_bpp'], 'WebP')} at the same "
        f"bpp; its distilled student costs {f['student_kmac_per_px']:.1f} kMAC/px "
        f"({100 * f['student_kmac_ratio']:.0f}% of the teacher's "
        f"{f['teacher_kmac_per_px']:.1f}) and reaches {s}, "
        f"{abs(f['student_psnr_gap_db']):.2f} dB "
        f"{'below' if f['student_psnr_gap_db'] < 0 else 'above'} the teacher at "
        f"{100 * abs(f['student_bpp_change']):.0f}% "
        f"{'more' if f['student_bpp_change'] >= 0 else 'less'} rate "
        f"({_versus(f['student_psnr'], f['jpeg_psnr_at_student_bpp'], 'JPEG')}, "
        f"{_versus(f['student_psnr'], f['webp_psnr_at_student_bpp'], 'WebP')})."
    )


def main(argv: list[str] | None = None) -> int:
    from shared.demo import demo_parser

    args = demo_parser("kdic_cli.demo", __doc__, "runs/demo/kdic").parse_args(argv)

    from shared.console import configure, to_json

    console = configure(json_mode=args.json)
    warnings.filterwarnings("ignore", category=FutureWarning)  # third-party noise
    warnings.filterwarnings("ignore", category=UserWarning)
    import torch

    from kdic_cli.evaluate import evaluate_model
    from kdic_cli.metrics import codec_cost
    from kdic_cli.models import load_model
    from shared.builtin_data import PhotoImages

    # one thread: the entropy coder's many small tensor ops lose more to thread hand-offs than
    # they gain on a shared 2-core machine (measured: 10x the CPU time with two threads)
    torch.set_num_threads(1)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    models = {name: load_model(path)[0] for name, path in shipped_codecs(console.info).items()}
    photos = PhotoImages("val")
    images = [(n, photos[i]) for i, n in enumerate(photos.names)]
    console.info(f"kdic: {len(images)} held-out photos: {', '.join(photos.names)}")
    points: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        p = evaluate_model(model, images)
        macs = codec_cost(model)["kmac_per_px"]
        points[name] = {**p, "kmac_per_px": macs, "photos": photos.names}
    curves = {fmt: pillow_curve(fmt, images) for fmt in QUALITIES}

    f: dict[str, Any] = {"photos": len(images), "test_photos": photos.names}
    for name, p in points.items():
        f |= {f"{name}_bpp": p["payload_bpp"], f"{name}_file_bpp": p["file_bpp"],
              f"{name}_psnr": p["psnr"], f"{name}_ms_ssim": p["ms_ssim"],
              f"{name}_kmac_per_px": p["kmac_per_px"], f"{name}_encode_s": p["enc_s"],
              f"{name}_decode_s": p["dec_s"]}  # fmt: skip
        for fmt, curve in curves.items():
            f[f"{fmt.lower()}_psnr_at_{name}_bpp"] = psnr_at(curve, p["payload_bpp"])
    f["student_kmac_ratio"] = f["student_kmac_per_px"] / f["teacher_kmac_per_px"]
    f["student_psnr_gap_db"] = f["student_psnr"] - f["teacher_psnr"]
    f["student_bpp_change"] = f["student_bpp"] / f["teacher_bpp"] - 1
    for fmt, curve in curves.items():
        f[f"{fmt.lower()}_curve"] = [
            {k: round(v, 4) for k, v in p.items() if k in ("quality", "payload_bpp", "psnr")}
            for p in curve
        ]
    f = {k: round(v, 4) if isinstance(v, float) else v for k, v in f.items()}

    rows = [(name, f"{p['payload_bpp']:.3f}", f"{p['psnr']:.2f}", f"{p['ms_ssim']:.4f}",
             f"{p['kmac_per_px']:.1f}", f"{p['enc_s']:.3f}", f"{p['dec_s']:.3f}")
            for name, p in points.items()]  # fmt: skip
    for fmt, curve in curves.items():
        rows += [(f"{fmt} q{p['quality']}", f"{p['payload_bpp']:.3f}", f"{p['psnr']:.2f}",
                  f"{p['ms_ssim']:.4f}", "-", f"{p['enc_s']:.3f}", f"{p['dec_s']:.3f}")
                 for p in curve]  # fmt: skip
    console.table(
        f"kdic on {len(images)} held-out photos ({', '.join(photos.names)}), means per photo; "
        "teacher/student: real bitstreams, bpp of the payload (compressai's strings); "
        "JPEG/WebP: Pillow, bpp of the whole file",
        ["codec", "bpp", "PSNR dB", "MS-SSIM", "kMAC/px", "encode s", "decode s"],
        rows,
    )
    picture = out / "kdic_rd.png"
    with torch.inference_mode():
        crops = _decoded(models, photos[photos.names.index(CROP_PHOTO)], f["teacher_bpp"])
    plot(picture, curves, points, crops)
    console.info(f"picture: {picture}")
    text = claim(f)
    console.info(text)
    if args.json:
        sys.stdout.write(to_json({"figures": f, "picture": str(picture), "claim": text}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
