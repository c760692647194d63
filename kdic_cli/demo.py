"""`make demo` job for kdic: compress and decompress a bundled photo with a small codec
(teacher) and its half-width student, printing bpp, PSNR and time for both.

The codecs are trained here on builtin:photos crops the first time (a minute or two on a
2-core CPU: tiny widths and few steps, so the quality is far below a real codec's) and cached
in cache_dir("kdic-demo-v3") of shared.cache ($TOOLKIT_CACHE/kdic-demo-v3).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from pathlib import Path


def _cache() -> Path:
    from shared.cache import cache_dir

    return cache_dir("kdic-demo-v3")


def _train(model, steps: int, loss_fn, params, seed: int = 0, lr: float = 2e-3) -> None:
    """`steps` Adam steps of `loss_fn` on 4 photo crops each (crops 4i..4i+3 at step i+1),
    the aux optimizer on `model`'s quantiles after each, on the shared trainer."""
    import torch

    from kdic_cli.data import PhotoCrops
    from kdic_cli.distill import make_optimizers
    from shared.train import Trainer

    ds = PhotoCrops("train", crop_size=64, n_crops_per_epoch=4 * steps, seed=seed)
    net, _ = make_optimizers([(n, p) for n, p in params], lr, 1e-2)
    _, aux = make_optimizers(list(model.named_parameters()), 2e-3, 1e-2)
    trainer = Trainer(steps, description="demo training").track(model=model, opt=net, aux=aux)

    def step_fn(step: int) -> dict:
        x = torch.stack([ds[4 * (step - 1) + j] for j in range(4)])
        loss = loss_fn(x)
        trainer.optimize(loss, net)
        trainer.optimize(model.aux_loss(), aux)
        return {"loss": loss}

    trainer.fit(step_fn)


def build_codecs(cache: Path, lmbda: float = 0.0483):
    import torch

    from kdic_cli.data import PhotoCrops
    from kdic_cli.distill import make_hybrid, rd_loss
    from kdic_cli.models import load_model, make_spec, new_model, save_model
    from kdic_cli.stages import partition
    from kdic_cli.student import build_student

    t_path, s_path = cache / "teacher.safetensors", cache / "student.safetensors"
    if t_path.exists() and s_path.exists():
        return load_model(t_path)[0], load_model(s_path)[0]
    print(f"training a tiny teacher and student once (cached in {cache}) ...", flush=True)
    torch.manual_seed(0)
    teacher = new_model(make_spec("mbt2018-mean", N=16, M=24)).train()
    _train(
        teacher,
        150,
        lambda x: rd_loss(teacher(x), x, lmbda)["loss"],
        [(n, p) for n, p in teacher.named_parameters() if not n.endswith("quantiles")],
    )
    teacher.eval().update(force=True)
    calib = [torch.stack([PhotoCrops("train", 64, 16)[i] for i in range(16)])]
    student, info = build_student(teacher, calib, width=0.5)
    student.train()
    for k, stage in enumerate(partition(student)):  # stage-wise, implicit supervision
        hybrid = make_hybrid(teacher, student, stage, info).train()
        _train(
            student,
            4,
            lambda x, h=hybrid: rd_loss(h(x), x, lmbda)["loss"],
            [(n, p) for n, p in student.named_parameters() if n in stage.params],
            seed=k,
            lr=1e-3,
        )
    _train(
        student,
        80,
        lambda x: rd_loss(student(x), x, lmbda)["loss"],
        [(n, p) for n, p in student.named_parameters() if not n.endswith("quantiles")],
        99,
    )
    student.eval().update(force=True)
    save_model(t_path, teacher)
    save_model(s_path, student, extra={"kdic_student": info})
    return load_model(t_path)[0], load_model(s_path)[0]


def main() -> int:
    warnings.filterwarnings("ignore", category=FutureWarning)
    import torch

    from kdic_cli.codec_io import compress_image, decompress_bytes, payload_bytes
    from kdic_cli.metrics import bpp, psnr
    from shared.builtin_data import PhotoImages
    from shared.console import get_console
    from shared.profiling import count_macs

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    teacher, student = build_codecs(_cache())
    photos = PhotoImages("val")
    x = photos[0]
    rows = []
    for name, model in (("teacher", teacher), ("student", student)):
        t0 = time.perf_counter()
        data = compress_image(model, x)
        t1 = time.perf_counter()
        x_hat = decompress_bytes(model, data)
        t2 = time.perf_counter()
        kmac = count_macs(model, torch.rand(1, 3, 256, 256)) / 65536 / 1e3
        rows.append((name, len(data), bpp(payload_bytes(data), *x.shape[-2:]),
                     bpp(len(data), *x.shape[-2:]), psnr(x, x_hat), (t1 - t0) * 1e3,
                     (t2 - t1) * 1e3, kmac))  # fmt: skip
    get_console().table(
        f"kdic: {photos.names[0]} ({x.shape[-1]}x{x.shape[-2]}), real bitstreams (payload: "
        "compressai strings; file: the .kdic file)",
        ["codec", "file bytes", "payload bpp", "file bpp", "PSNR dB", "encode ms", "decode ms",
         "kMAC/px"],
        rows,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
