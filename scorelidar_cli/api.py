"""What the commands do, as functions on paths and options (the CLI only parses and prints)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared.errors import InputError

SOLVERS = {"sde": "sde-dpmsolver++", "ode": "dpmsolver++"}


def scene_seed(seed: int, scene: int) -> int:
    return seed * 10007 + scene


def simulate_scenes(
    out: Path, scenes: int, frames: int, azimuths: int, seed: int, progress=None
) -> dict[str, Any]:
    from scorelidar_cli.simulate import simulate_sequence, write_sequence

    counts = []
    it = range(scenes) if progress is None else progress(range(scenes), "simulate")
    for i in it:
        scans, labels, poses = simulate_sequence(scene_seed(seed, i), frames, azimuths=azimuths)
        write_sequence(out, f"{i:02d}", scans, labels, poses)
        counts += [len(s) for s in scans]
    return {"scenes": scenes, "frames": scenes * frames, "points_per_scan": float(np.mean(counts))}


def resolve_config(preset: str, overrides: dict[str, Any] | None = None):
    from dataclasses import replace

    from scorelidar_cli.model import PRESETS

    if preset not in PRESETS:
        raise InputError(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
    try:
        return replace(PRESETS[preset], **(overrides or {}))
    except (TypeError, ValueError) as exc:
        raise InputError(f"--model-config: {exc}") from None


def frame_pool(data: Path, sequences: str, radius: float, every: int = 1):
    from scorelidar_cli.dataset import frames, open_dataset, parse_sequences
    from scorelidar_cli.pipeline import FramePool

    seqs = open_dataset(data, parse_sequences(sequences))
    return FramePool(frames(seqs, every), radius)


def solver_name(solver: str) -> str:
    if solver not in SOLVERS:
        raise InputError(f"--solver {solver!r}: choose sde or ode")
    return SOLVERS[solver]


def complete_files(
    scans: list[Path],
    model: Path,
    out: Path,
    steps: int,
    guidance: float,
    solver: str,
    seed: int,
    device: torch.device,
    refine: Path | None = None,
) -> list[dict[str, Any]]:
    """Complete every scan; writes <out>/<stem>.ply. Per file: time, points, kept share."""
    from scorelidar_cli.io import read_scan, write_ply
    from scorelidar_cli.metrics import kept_share
    from scorelidar_cli.pipeline import complete_scan, load_model, load_refiner
    from shared.io import atomic_path

    net, meta = load_model(model)
    net.to(device)
    refiner = load_refiner(refine).to(device) if refine is not None else None
    algorithm = solver_name(solver)
    points = [(path, read_scan(path)) for path in scans]  # all bad input before any work
    warm_up(net, points[0][1], device, str(points[0][0]))
    rows = []
    for path, pts in points:
        pred, seconds = complete_scan(
            net, pts, steps, guidance, seed, algorithm, device, name=str(path), refiner=refiner
        )
        target = out / f"{path.stem}.ply"
        with atomic_path(target) as tmp:
            write_ply(tmp, pred)
        in_range = pts[np.linalg.norm(pts[:, :2], axis=1) <= net.config.radius]
        rows.append(
            {
                "scan": str(path),
                "output": str(target),
                "input_points": len(pts),
                "output_points": len(pred),
                "seconds": round(seconds, 3),
                "kept_within_5cm": kept_share(in_range, pred),
            }
        )
    return rows


def warm_up(net, scan: np.ndarray, device: torch.device, name: str) -> None:
    """One untimed step first: spconv and the allocator set themselves up on the first call."""
    from scorelidar_cli.pipeline import complete_scan

    complete_scan(net, scan, 1, device=device, name=name)


def evaluate_models(
    models: list[Path],
    data: Path,
    sequences: str,
    steps: list[int],
    guidance: float,
    solver: str,
    seed: int,
    max_frames: int,
    device: torch.device,
    progress=None,
    refine: Path | None = None,
) -> list[dict[str, Any]]:
    """Every metric of every (model, steps) over the same frames, averaged per frame; with
    `refine`, each model's output is also scored after the refinement net."""
    from scorelidar_cli.dataset import frames, open_dataset, parse_sequences
    from scorelidar_cli.metrics import completion_metrics
    from scorelidar_cli.pipeline import complete_scan, load_model, load_refiner

    algorithm = solver_name(solver)
    refiner = load_refiner(refine).to(device) if refine is not None else None
    loaded = [(path, *load_model(path)) for path in models]
    radius = loaded[0][1].config.radius
    todo = frames(open_dataset(data, parse_sequences(sequences)))
    if max_frames > 0 and len(todo) > max_frames:
        pick = np.linspace(0, len(todo) - 1, max_frames).round().astype(int)
        todo = [todo[i] for i in pick]
    gts = {}
    rows = []
    variants = [None] if refiner is None else [None, refiner]
    jobs = [(m, k, r) for m in loaded for k in steps for r in variants]
    total = len(jobs) * len(todo)
    bar = None if progress is None else progress(range(total), "evaluate")
    ticks = iter(bar) if bar is not None else None
    for (path, net, meta), k, ref in jobs:
        net.to(device)
        seq, i = todo[0]
        warm_up(net, seq.scan(i), device, str(seq.scans[i]))
        per_frame = []
        for seq, i in todo:
            key = (str(seq.path), i)
            if key not in gts:
                gts[key] = (seq.scan(i), seq.ground_truth(i, radius))
            scan, gt = gts[key]
            pred, seconds = complete_scan(
                net, scan, k, guidance, seed, algorithm, device, str(seq.scans[i]), ref
            )
            per_frame.append(completion_metrics(pred, gt) | {"s_per_frame": seconds})
            if ticks is not None:
                next(ticks, None)
        avg = {name: float(np.mean([m[name] for m in per_frame])) for name in per_frame[0]}
        rows.append(
            {
                "model": str(path),
                "role": meta.get("role", "?") + ("+refine" if ref else ""),
                "steps": k,
                **avg,
            }
            | {"frames": len(todo)}
        )
    if ticks is not None:
        for _ in ticks:
            pass
    return rows


def train_refine_run(
    run: Any,
    model: Path,
    data: Path,
    sequences: str,
    steps: int,
    completion_steps: int,
    lr: float,
    up: int,
    seed: int,
    device: torch.device,
) -> dict[str, Any]:
    """Complete every training frame once with `model`, then Chamfer-train the refiner."""
    from scorelidar_cli.pipeline import REFINE_FILE, complete_scan, load_model, save_refiner
    from scorelidar_cli.refine import RefineConfig, RefineNet
    from scorelidar_cli.training import RefineTrainConfig, train_refiner
    from shared import distributed

    net, _ = load_model(model)
    net.to(device)
    pool = frame_pool(data, sequences, net.config.radius)
    cache: dict[int, np.ndarray] = {}

    def coarse(i: int) -> np.ndarray:
        if i not in cache:
            seq, f = pool.frames[i]
            cache[i] = complete_scan(net, pool.get(i)[0], completion_steps, seed=seed + i,
                                     device=device, name=str(seq.scans[f]))[0]  # fmt: skip
        return cache[i]

    refiner = RefineNet(RefineConfig(voxel=net.config.voxel, up=up, radius=net.config.radius))
    with run.console.progress_bar("train-refine", steps) as bar:
        info = train_refiner(
            refiner, pool, coarse, RefineTrainConfig(steps, 1, lr, seed), device,
            state=run.load_state(), on_step=lambda s, logs: bar.advance(**logs),
            save_state=run.step_done,
        )  # fmt: skip
    if distributed.is_main():
        save_refiner(run.path(REFINE_FILE), refiner, {"model": str(model), "steps": steps})
    return info | {"frames": len(pool), "model": str(run.path(REFINE_FILE))}


def input_metrics(data: Path, sequences: str, max_frames: int, radius: float = 50.0):
    """The partial scans themselves scored against ground truth (what completion must beat)."""
    from scorelidar_cli.dataset import crop, frames, open_dataset, parse_sequences
    from scorelidar_cli.metrics import completion_metrics

    todo = frames(open_dataset(data, parse_sequences(sequences)))
    if max_frames > 0 and len(todo) > max_frames:
        pick = np.linspace(0, len(todo) - 1, max_frames).round().astype(int)
        todo = [todo[i] for i in pick]
    per = [completion_metrics(crop(s.scan(i), radius), s.ground_truth(i, radius)) for s, i in todo]
    return {name: float(np.mean([m[name] for m in per])) for name in per[0]}
