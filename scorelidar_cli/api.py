"""What the commands do, as functions on config dataclasses (the CLI only parses and prints).

Each command's options are a dataclass declared once here (`opt(...)`: help, flag, bounds);
the command line is built from them, and a notebook user fills the same dataclass:

    from scorelidar_cli.api import TrainTeacherOptions, train_teacher_model
    net, metrics = train_teacher_model(TrainTeacherOptions(data="sim", steps=100))

Training functions take an optional `run` (a shared.runs.Run: checkpoints, resume, signals,
and the model file in its folder); without one nothing is written. torch and numpy are
imported inside the functions so that `scorelidar --help` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.errors import InputError
from shared.options import opt

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping

    import numpy as np
    import torch

    from scorelidar_cli.dataset import Sequence
    from scorelidar_cli.model import CompletionUNet, ModelConfig
    from scorelidar_cli.pipeline import FramePool
    from scorelidar_cli.timing import Timing

    Progress = Callable[[Iterable[Any], str], Iterable[Any]]

TOOL = "scorelidar"
SOLVERS = {"sde": "sde-dpmsolver++", "ode": "dpmsolver++"}
PRESET_NAMES = ("small", "tiny", "lidiff")  # scorelidar_cli.model.PRESETS (checked by a test)

_SEQUENCES = (
    "SemanticKITTI's official train split (00-07, 09, 10; those present), val (08), all (every "
    "labelled sequence; the unlabelled test sequences 11-21 are skipped) or a list such as "
    "'00-07,09'."
)
_DATA = (
    "SemanticKITTI root: the folder holding sequences/ (the download's dataset/) or sequences/ "
    "itself (sequences/XX/velodyne/*.bin, labels/*.label, poses.txt, calib.txt)."
)
_SEED = "Random seed."
_SOLVER = "sde (DPM-Solver++ SDE, LiDiff's) or ode (DPM-Solver++)."
_GUIDANCE = "Classifier-free guidance weight (1: no guidance, one pass per step)."
_CHECKPOINT = "Save resume state every N steps (0: only on SIGTERM/SIGUSR1/Ctrl-C)."


# -- the options of each command ---------------------------------------------------------------
@dataclass
class SimulateOptions:
    scenes: int = opt(4, "Sequences to write.", min=1)
    frames: int = opt(10, "Scans per sequence.", min=1)
    azimuths: int = opt(512, "Rays per beam per revolution (64 beams).", min=16)
    seed: int = opt(0, _SEED, min=0)


@dataclass
class TrainTeacherOptions:
    data: Path = opt(help=_DATA, short="-d")
    sequences: str = opt("train", _SEQUENCES)
    preset: str = opt("small", "small (trains on a CPU) | tiny | lidiff (25 M).",
                      choices=PRESET_NAMES)  # fmt: skip
    # a JSON object on the command line; a dict from Python
    model_config: str | None = opt(
        None, 'JSON overrides of the preset, e.g. \'{"channels": [16, 32], "decoder": [16]}\'.'
    )
    steps: int = opt(2000, "Optimizer steps.", min=0)
    batch_size: int = opt(2, "Scenes.", short="-b", min=1)
    lr: float = opt(2e-3, "AdamW learning rate (cosine).", min=0, min_open=True)
    cfg_dropout: float = opt(0.1, "Share of scenes trained unconditionally.", min=0, max=1)
    seed: int = opt(0, _SEED, min=0)
    checkpoint_every: int = opt(200, _CHECKPOINT, min=0)


@dataclass
class DistillOptions:
    teacher: Path = opt(help="Output dir of train-teacher.")
    data: Path = opt(help=_DATA, short="-d")
    sequences: str = opt("train", _SEQUENCES)
    steps: int = opt(500, "Student updates.", min=0)
    batch_size: int = opt(1, "Scenes.", short="-b", min=1)
    lr: float = opt(2e-4, "Student learning rate.", min=0, min_open=True)
    fake_lr: float = opt(2e-4, "Fake-score learning rate.", min=0, min_open=True)
    vsd_weight: float = opt(1.0, "Weight of the score-distillation term.", min=0)
    scene_weight: float = opt(0.5, "Scene-wise Chamfer weight.", min=0)
    point_weight: float = opt(0.01, "Point-wise distance-matrix weight.", min=0)
    key_fraction: float = opt(1 / 30, "Share of GT points used as key points.",
                              min=0, min_open=True, max=1)  # fmt: skip
    structural: bool = opt(True, "The structural loss (ablation: off).")
    real_guidance: float = opt(1.0, "CFG weight of the teacher's score.", min=0)
    sampler_steps: int = opt(
        1,
        "1: train the one-step sample from x_T (the paper). K > 1 (ours): run the student's "
        "K-step sampler without gradient to a random one of its steps and train the sample "
        "from there, so every step of a K-step completion is trained.",
        min=1,
    )
    seed: int = opt(0, _SEED, min=0)
    checkpoint_every: int = opt(100, _CHECKPOINT, min=0)


@dataclass
class TrainRefineOptions:
    model: Path = opt(help="Teacher or student dir.", short="-m")
    data: Path = opt(help=_DATA, short="-d")
    sequences: str = opt("train", _SEQUENCES)
    steps: int = opt(300, "Optimizer steps.", min=0)
    completion_steps: int = opt(4, "Solver steps of the coarse pass.", min=1)
    up: int = opt(6, "Points made from each point.", min=1)
    lr: float = opt(2e-3, "AdamW learning rate.", min=0, min_open=True)
    seed: int = opt(0, _SEED, min=0)
    checkpoint_every: int = opt(100, _CHECKPOINT, min=0)


@dataclass
class CompleteOptions:
    scans: list[Path] = opt(help="Scans to complete: .bin (KITTI), .ply, .npy, .pcd.",
                            argument=True)  # fmt: skip
    model: Path = opt(help="A teacher or student dir.", short="-m")
    steps: int = opt(8, "DPM-Solver++ steps.", short="-k", min=1)
    guidance: float = opt(1.0, _GUIDANCE, min=0)
    solver: str = opt("sde", _SOLVER, choices=tuple(SOLVERS))
    refine: Path | None = opt(
        None, "A refinement net from train-refine: x its --up points per output (6 by default)."
    )
    seed: int = opt(0, _SEED, min=0)


@dataclass
class EvaluateOptions:
    model: list[Path] = opt(help="Model dir; repeat to compare several.", short="-m")
    data: Path = opt(help=_DATA, short="-d")
    steps: list[int] = opt(help="Solver steps; repeat for several.", short="-k", min=1)
    sequences: str = opt("train", _SEQUENCES)
    guidance: float = opt(1.0, _GUIDANCE, min=0)
    solver: str = opt("sde", _SOLVER, choices=tuple(SOLVERS))
    refine: Path | None = opt(None, "Also score every model after this refinement net.")
    max_frames: int = opt(0, "Evaluate at most N frames (0: all).", min=0)
    rounds: int = opt(
        1,
        "Timing rounds: every model and step count completes every frame this many times, "
        "the order rotated (scorelidar_cli/timing.py); metrics come from the first round.",
        min=1,
    )
    seed: int = opt(0, _SEED, min=0)


# -- helpers -----------------------------------------------------------------------------------
def require() -> None:
    """The optional dependencies of every command (one clear line when one is missing)."""
    from shared.deps import require as _require

    _require(TOOL, "spconv", "diffusers", "scipy")


def scene_seed(seed: int, scene: int) -> int:
    return seed * 10007 + scene


def model_overrides(value: str | dict[str, Any] | None) -> dict[str, Any]:
    """--model-config: a JSON object from the command line, or a dict from Python."""
    if isinstance(value, dict):
        return dict(value)
    from shared.config import parse_json_object

    return parse_json_object(value, "--model-config")


def resolve_config(preset: str, overrides: dict[str, Any] | None = None) -> ModelConfig:
    from dataclasses import replace

    from scorelidar_cli.model import PRESETS

    if preset not in PRESETS:
        raise InputError(f"--preset {preset!r}: choose one of {', '.join(PRESETS)}")
    try:
        return replace(PRESETS[preset], **(overrides or {}))
    except (TypeError, ValueError) as exc:
        raise InputError(f"--model-config: {exc}") from None


def frame_pool(data: Path, sequences: str, radius: float, every: int = 1) -> FramePool:
    from scorelidar_cli.dataset import frames, open_dataset
    from scorelidar_cli.pipeline import FramePool

    seqs = open_dataset(Path(data), sequences)
    return FramePool(frames(seqs, every), radius)


def solver_name(solver: str) -> str:
    if solver not in SOLVERS:
        raise InputError(f"--solver {solver!r}: choose sde or ode")
    return SOLVERS[solver]


def _written(run: Any | None, name: str) -> dict[str, str]:
    return {"model": str(run.path(name))} if run is not None else {}


# -- the commands --------------------------------------------------------------------------------
def simulate_scenes(
    cfg: SimulateOptions, out: Path, progress: Progress | None = None
) -> dict[str, Any]:
    """Write cfg.scenes simulated sequences under `out` (SemanticKITTI layout)."""
    import numpy as np

    from scorelidar_cli.simulate import simulate_sequence, write_sequence

    require()
    counts = []
    scenes = range(cfg.scenes)
    for i in scenes if progress is None else progress(scenes, "simulate"):
        scans, labels, poses = simulate_sequence(
            scene_seed(cfg.seed, i), cfg.frames, azimuths=cfg.azimuths
        )
        write_sequence(Path(out), f"{i:02d}", scans, labels, poses)
        counts += [len(s) for s in scans]
    return {
        "scenes": cfg.scenes,
        "frames": cfg.scenes * cfg.frames,
        "points_per_scan": float(np.mean(counts)),
        "data": str(out),
    }


def train_teacher_model(
    cfg: TrainTeacherOptions, run: Any | None = None, device: torch.device | str = "cpu"
) -> tuple[CompletionUNet, dict[str, Any]]:
    """Train the LiDiff teacher; with a run, also write its model.safetensors."""
    import torch

    from scorelidar_cli.model import build_model
    from scorelidar_cli.pipeline import MODEL_FILE, save_model
    from scorelidar_cli.training import TeacherConfig, train_teacher
    from shared import distributed
    from shared.profiling import count_params

    require()
    device = torch.device(device)
    overrides = model_overrides(cfg.model_config)
    torch.manual_seed(cfg.seed)
    arch = resolve_config(cfg.preset, overrides)
    pool = frame_pool(cfg.data, cfg.sequences, arch.radius)
    net = build_model(arch)
    train_cfg = TeacherConfig(cfg.steps, cfg.batch_size, cfg.lr, cfg.cfg_dropout, seed=cfg.seed)
    info = train_teacher(net, pool, train_cfg, device, run=run)
    if run is not None and distributed.is_main():
        extra = {"steps": cfg.steps, "data": str(cfg.data), "sequences": cfg.sequences}
        save_model(run.path(MODEL_FILE), net, "teacher", extra)
    metrics = info | {
        "frames": len(pool),
        "params": count_params(net),
        "world_size": distributed.world_size(),
    }
    return net, metrics | _written(run, MODEL_FILE)


def distill_model(
    cfg: DistillOptions, run: Any | None = None, device: torch.device | str = "cpu"
) -> tuple[CompletionUNet, dict[str, Any]]:
    """Distil the teacher in cfg.teacher into a few-step student; with a run, also write its
    model.safetensors."""
    import torch

    from scorelidar_cli.pipeline import MODEL_FILE, load_model, save_model
    from scorelidar_cli.training import DistillConfig, distill_student
    from shared import distributed

    require()
    device = torch.device(device)
    teacher, _ = load_model(cfg.teacher)
    torch.manual_seed(cfg.seed)
    pool = frame_pool(cfg.data, cfg.sequences, teacher.config.radius)
    train_cfg = DistillConfig(
        steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, fake_lr=cfg.fake_lr,
        vsd_weight=cfg.vsd_weight, scene_weight=cfg.scene_weight,
        point_weight=cfg.point_weight, key_fraction=cfg.key_fraction,
        structural=cfg.structural, real_guidance=cfg.real_guidance,
        sampler_steps=cfg.sampler_steps, seed=cfg.seed,
    )  # fmt: skip
    student, info = distill_student(teacher, pool, train_cfg, device, run=run)
    if run is not None and distributed.is_main():
        role = "student" if cfg.structural else "student-no-structural"
        extra = {
            "teacher": str(cfg.teacher),
            "steps": cfg.steps,
            "structural": cfg.structural,
            "sampler_steps": cfg.sampler_steps,
        }
        save_model(run.path(MODEL_FILE), student, role, extra)
    metrics = info | {"frames": len(pool), "world_size": distributed.world_size()}
    return student, metrics | _written(run, MODEL_FILE)


def train_refine_model(
    cfg: TrainRefineOptions, run: Any | None = None, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Complete every training frame once with cfg.model, then Chamfer-train the refiner;
    with a run, also write its refine.safetensors."""
    import torch

    from scorelidar_cli.pipeline import REFINE_FILE, complete_scan, load_model, save_refiner
    from scorelidar_cli.refine import RefineConfig, RefineNet
    from scorelidar_cli.training import RefineTrainConfig, train_refiner
    from shared import distributed

    require()
    device = torch.device(device)
    net, _ = load_model(cfg.model)
    net.to(device)
    pool = frame_pool(cfg.data, cfg.sequences, net.config.radius)
    cache: dict[int, np.ndarray] = {}

    def coarse(i: int) -> np.ndarray:
        if i not in cache:
            seq, f = pool.frames[i]
            cache[i] = complete_scan(net, pool.get(i)[0], cfg.completion_steps,
                                     seed=cfg.seed + i, device=device,
                                     name=str(seq.scans[f]))[0]  # fmt: skip
        return cache[i]

    refiner = RefineNet(RefineConfig(voxel=net.config.voxel, up=cfg.up, radius=net.config.radius))
    train_cfg = RefineTrainConfig(cfg.steps, 1, cfg.lr, cfg.seed)
    info = train_refiner(refiner, pool, coarse, train_cfg, device, run=run)
    if run is not None and distributed.is_main():
        extra = {"model": str(cfg.model), "steps": cfg.steps}
        save_refiner(run.path(REFINE_FILE), refiner, extra)
    metrics = info | {"frames": len(pool), "world_size": distributed.world_size()}
    return refiner, metrics | _written(run, REFINE_FILE)


def complete_files(
    cfg: CompleteOptions, out: Path, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Complete every scan into <out>/<its path from the scans' common folder>.ply (a single
    folder of scans: <out>/<stem>.ply); per scan: time, points, kept share."""
    import numpy as np
    import torch

    from scorelidar_cli.io import read_scan, write_ply
    from scorelidar_cli.metrics import kept_share
    from scorelidar_cli.pipeline import complete_scan, load_model, load_refiner

    require()
    device = torch.device(device)
    net, _ = load_model(cfg.model)
    net.to(device)
    refiner = load_refiner(cfg.refine).to(device) if cfg.refine is not None else None
    algorithm = solver_name(cfg.solver)
    targets = output_names(cfg.scans)  # colliding outputs refused before any work
    points = [(Path(path), read_scan(path)) for path in cfg.scans]  # all bad input first
    warm_up(net, points[0][1], device, str(points[0][0]))
    rows = []
    for (path, pts), name in zip(points, targets, strict=True):
        pred, seconds = complete_scan(
            net, pts, cfg.steps, cfg.guidance, cfg.seed, algorithm, device, name=str(path),
            refiner=refiner,
        )  # fmt: skip
        target = Path(out) / name
        write_ply(target, pred)  # atomic: never a half-written file
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
    s_per_frame = sum(r["seconds"] for r in rows) / len(rows)
    return {"steps": cfg.steps, "s_per_frame": s_per_frame, "scans": rows}


def output_names(scans: list[Path]) -> list[Path]:
    """Where each scan's completion goes under the output folder: its path relative to the
    scans' common folder, as .ply (so seq/00/000000.bin and seq/01/000000.bin both keep
    theirs); scans that would still share an output are bad input."""
    import os

    full = [Path(os.path.abspath(p)) for p in scans]
    common = Path(os.path.commonpath([p.parent for p in full])) if full else Path()
    names = [p.relative_to(common).with_suffix(".ply") for p in full]
    seen: dict[Path, Path] = {}
    for scan, name in zip(scans, names, strict=True):
        if name in seen:
            raise InputError(
                f"{scan}: its completion would overwrite that of {seen[name]} ({name}); "
                "give each scan once, with distinct names"
            )
        seen[name] = Path(scan)
    return names


def warm_up(net: CompletionUNet, scan: np.ndarray, device: torch.device | str, name: str) -> None:
    """One untimed step first: spconv and the allocator set themselves up on the first call."""
    from scorelidar_cli.pipeline import complete_scan

    complete_scan(net, scan, 1, device=device, name=name)


def pick_frames(data: Path, sequences: str, max_frames: int = 0) -> list[tuple[Sequence, int]]:
    """The (sequence, frame index) pairs `evaluate` scores: every frame of the sequences, or
    `max_frames` of them spread evenly (0: all)."""
    import numpy as np

    from scorelidar_cli.dataset import frames, open_dataset

    todo = frames(open_dataset(Path(data), sequences))
    if max_frames > 0 and len(todo) > max_frames:
        pick = np.linspace(0, len(todo) - 1, max_frames).round().astype(int)
        todo = [todo[i] for i in pick]
    return todo


def read_frame(frame: tuple[Sequence, int]) -> tuple[np.ndarray, str]:
    """A dataset frame as (scan, its file name)."""
    seq, i = frame
    return seq.scan(i), str(seq.scans[i])


def time_completions(
    runs: Mapping[str, tuple[CompletionUNet, int, torch.nn.Module | None]],
    frames: list[Any],
    rounds: int,
    guidance: float = 1.0,
    seed: int = 0,
    solver: str = "sde",
    device: torch.device | str = "cpu",
    read: Callable[[Any], tuple[np.ndarray, str]] | None = None,
    on_output: Callable[[str, int, np.ndarray], None] | None = None,
) -> Timing:
    """Complete every frame with every run ({label: (network, solver steps, refiner or
    None)}) under scorelidar_cli.timing's protocol, after one untimed warm-up step of each
    network on the first frame. Frames are (scan, name) pairs, or whatever `read` turns into
    one (outside the timed calls); `on_output` gets the first round's completions."""
    from scorelidar_cli.pipeline import complete_scan
    from scorelidar_cli.timing import time_runs

    algorithm = solver_name(solver)
    read = read or (lambda frame: frame)
    scan, name = read(frames[0])
    for net in {id(net): net for net, _, _ in runs.values()}.values():
        warm_up(net, scan, device, name)

    def runner(net: CompletionUNet, steps: int, refiner: Any) -> Callable[[Any], np.ndarray]:
        def run(item: tuple[np.ndarray, str]) -> np.ndarray:
            scan, name = item
            return complete_scan(
                net, scan, steps, guidance, seed, algorithm, device, name, refiner
            )[0]

        return run

    timed = {label: runner(*run) for label, run in runs.items()}
    return time_runs(timed, frames, rounds, prepare=read, on_output=on_output)


def evaluate_models(
    cfg: EvaluateOptions, device: torch.device | str = "cpu", progress: Progress | None = None
) -> list[dict[str, Any]]:
    """Every metric of every (model, steps) over the same frames, averaged per frame; with
    cfg.refine, each model's output is also scored after the refinement net. Seconds per
    frame and the speed-up over the first row come from scorelidar_cli.timing's protocol
    (cfg.rounds rounds; see time_completions)."""
    import numpy as np
    import torch

    from scorelidar_cli.metrics import completion_metrics
    from scorelidar_cli.pipeline import load_model, load_refiner
    from scorelidar_cli.timing import summarize

    require()
    device = torch.device(device)
    solver_name(cfg.solver)  # a bad --solver before any work
    refiner = load_refiner(cfg.refine).to(device) if cfg.refine is not None else None
    loaded = [(path, *load_model(path)) for path in cfg.model]
    for _, net, _ in loaded:
        net.to(device)
    radius = loaded[0][1].config.radius
    todo = pick_frames(cfg.data, cfg.sequences, cfg.max_frames)
    variants = [None] if refiner is None else [None, refiner]
    jobs = [(m, k, r) for m in loaded for k in cfg.steps for r in variants]
    # a tick per frame read: the warm-up's, then every frame of every round
    ticks_total = 1 + cfg.rounds * len(todo)
    bar = None if progress is None else progress(range(ticks_total), "evaluate")
    ticks = iter(bar) if bar is not None else None

    def load(frame: tuple[Sequence, int]) -> tuple[np.ndarray, str]:
        if ticks is not None:
            next(ticks, None)
        return read_frame(frame)

    per_frame: dict[str, list[dict[str, float]]] = {str(j): [] for j in range(len(jobs))}
    truth: dict[int, np.ndarray] = {}  # the current frame's only

    def score(job: str, f: int, pred: np.ndarray) -> None:
        if f not in truth:
            seq, i = todo[f]
            truth.clear()
            truth[f] = seq.ground_truth(i, radius)
        per_frame[job].append(completion_metrics(pred, truth[f]))

    runs = {str(j): (net, k, ref) for j, ((_, net, _), k, ref) in enumerate(jobs)}
    timing = time_completions(
        runs, todo, cfg.rounds, cfg.guidance, cfg.seed, cfg.solver, device, load, score
    )
    if ticks is not None:
        for _ in ticks:
            pass
    speed = summarize(timing)
    rows = []
    for j, ((path, _, meta), k, ref) in enumerate(jobs):
        per = per_frame[str(j)]
        avg = {name: float(np.mean([m[name] for m in per])) for name in per[0]}
        role = meta.get("role", "?") + ("+refine" if ref else "")
        rows.append({"model": str(path), "role": role, "steps": k, **avg, **speed[str(j)]})
    return rows


def input_metrics(
    data: Path, sequences: str, max_frames: int, radius: float = 50.0
) -> dict[str, float]:
    """The partial scans themselves scored against ground truth (what completion must beat)."""
    import numpy as np

    from scorelidar_cli.dataset import crop
    from scorelidar_cli.metrics import completion_metrics

    todo = pick_frames(data, sequences, max_frames)
    per = [completion_metrics(crop(s.scan(i), radius), s.ground_truth(i, radius)) for s, i in todo]
    return {name: float(np.mean([m[name] for m in per])) for name in per[0]}
