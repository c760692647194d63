"""Does stage-wise KD beat the controls? Three half-width students of one teacher, at the same
total optimiser steps, over several seeds, on the held-out photos with real bitstreams.

Arms (per seed; every command gets --seed SEED):
  KD       kdic build-student --width 0.5 -> kdic distill (implicit) D steps
           -> kdic finetune --model, lr 1e-3, F steps            (the shipped student's recipe)
  control  the same build-student init -> kdic finetune --model, lr 1e-3, D + F steps
           (the teacher-derived initialisation without distillation)
  scratch  kdic finetune --model INIT --scratch, lr 1e-3, D + F steps
           (the same architecture re-initialised)
build-student draws its calibration crops from --seed, so each seed builds its own init.

Each step is a real `kdic` command in a child process on one thread, in --work; a rerun skips
finished steps and resumes half-done ones. Then every model (and the teacher) is evaluated in
this process on one torch thread on the 13 held-out photos (builtin:photos val split): per
photo payload bpp, PSNR, MS-SSIM and the RD cost J = bpp + lambda * 255^2 * MSE. Statistics
come from shared.intervals (verdict rule in VERDICT_RULE). Writes
benchmarks/results/kdic/<name>.{json,md,png}.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.kdic_students [--seeds 0 1 2] [--scale 1]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import common
from shared.intervals import LEVEL, RESAMPLES, paired, resample_index, t_interval, verdict
from shared.references import sha256

ARMS = ("KD", "control", "scratch")
PAIRS = (("KD", "control"), ("KD", "scratch"), ("control", "scratch"))
# measure -> lower is better
MEASURES = {"J": True, "psnr": False}
WIDTH = "0.5"
FINETUNE_LR = "1e-3"
TRAIN = ["--batch-size", "8", "--crop", "128", "--device", "cpu"]  # the shipped recipe's
DEFAULT_LMBDA = 0.013
MODEL = "model.safetensors"
# each arm's final model: the folder of its last step
ARM_STEP = {"KD": "kd", "control": "control", "scratch": "scratch"}
VERDICT_RULE = (
    "For arms A and B and one measure, d = A - B on the same (seed, photo). Two 95% intervals "
    "of the mean d: (a) Student-t over seeds of the per-seed mean d (seeds - 1 degrees of "
    "freedom), (b) percentile bootstrap over photos ({resamples} resamples, the same "
    "resampled photos for every comparison) of the seed-averaged per-photo d. A **beats** B "
    "only when BOTH intervals exclude 0 on A's side (J: below 0, a lower RD cost is better; "
    "PSNR: above 0), A is **worse** when both exclude 0 on B's side, and otherwise the two "
    "are **on par**. With one seed (a) is undefined and the verdict is on par."
)


def kdic_executable() -> list[str]:
    """The `kdic` console script of this interpreter's environment."""
    script = Path(sys.executable).parent / "kdic"
    found = str(script) if script.exists() else shutil.which("kdic")
    if found is None:
        raise SystemExit("error: the `kdic` command is not installed (pip install -e .)")
    return [found]


def step(out: Path, args: list[str], log: Any = print) -> float | None:
    """Run `kdic ARGS --out OUT` on one thread unless OUT holds a finished model (a rerun
    continues an interrupted benchmark; a half-done command resumes from its resume.pt,
    one stopped before its first checkpoint starts again). Seconds taken, None if reused."""
    if (out / MODEL).exists():
        log(f"= {out.parent.name}/{out.name}: done before, reused")
        return None
    if (out / "resume.pt").exists():
        extra = ["--resume"]
    elif out.exists() and any(out.iterdir()):
        extra = ["--overwrite"]
    else:
        extra = []
    log("$ kdic " + shlex.join([*args, "--out", str(out), *extra]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    subprocess.run([*kdic_executable(), *args, "--out", str(out), *extra, "--quiet"],
                   check=True, env=env)  # fmt: skip
    return time.perf_counter() - t0


def plan(
    teacher: Path, lmbda: float, seed: int, distill: int, finetune: int, folder: Path
) -> list[tuple[str, list[str]]]:
    """The ordered (step name, kdic arguments) of one seed; step names are folder names."""
    opts = ["--lmbda", f"{lmbda:g}", *TRAIN, "--seed", str(seed)]
    init = str(folder / "init")
    total = str(distill + finetune)
    return [
        ("init", ["build-student", "--teacher", str(teacher), "--width", WIDTH,
                  "--seed", str(seed)]),
        ("kd-distill", ["distill", "--teacher", str(teacher), "--student", init,
                        "--supervision", "implicit", "--steps", str(distill), *opts]),
        ("kd", ["finetune", "--model", str(folder / "kd-distill"), "--steps", str(finetune),
                "--lr", FINETUNE_LR, *opts]),
        ("control", ["finetune", "--model", init, "--steps", total, "--lr", FINETUNE_LR,
                     *opts]),
        ("scratch", ["finetune", "--model", init, "--scratch", "--steps", total,
                     "--lr", FINETUNE_LR, *opts]),
    ]  # fmt: skip


def teacher_file(arg: str | None) -> Path:
    """--teacher (a file or a run folder), else the shipped references/kdic/teacher."""
    if arg is None:
        from shared.references import find

        found = find("kdic/teacher")
        if found is None:
            raise SystemExit(
                "error: the shipped references/kdic/teacher.safetensors is missing or altered "
                "(`make references` restores it); or pass --teacher"
            )
        return found
    path = Path(arg)
    path = path / MODEL if path.is_dir() else path
    if not path.is_file():
        raise SystemExit(f"error: --teacher {arg}: no such checkpoint")
    return path.resolve()


def teacher_lmbda(path: Path, given: float | None) -> tuple[float, str]:
    """lambda and where it came from: --lmbda, else the teacher's training record."""
    if given is not None:
        return given, "--lmbda"
    from kdic_cli.models import load_model

    trained = load_model(path)[1].get("trained") or {}
    if "lmbda" in trained:
        return float(trained["lmbda"]), "the teacher's checkpoint (trained.lmbda)"
    return DEFAULT_LMBDA, "default (the teacher records none)"


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(common.REPO))
    except ValueError:
        return str(path)


# -- training ------------------------------------------------------------------------------
def _run_record(out: Path) -> dict[str, Any]:
    """What a finished kdic run says of itself: its lr (config.yaml), its own seconds and
    final training losses (metrics.json)."""
    import yaml

    cfg = yaml.safe_load((out / "config.yaml").read_text()) or {}
    metrics = json.loads((out / "metrics.json").read_text())
    keep = {k: v for k, v in metrics.items() if k == "seconds" or k.startswith("final_")}
    return {**({"lr": cfg["lr"]} if "lr" in cfg else {}), **keep}


def _shown(root: Path, args: list[str]) -> str:
    """A command line as the report shows it: WORK for the work folder, repository paths
    relative (both stored in the json)."""
    line = "kdic " + shlex.join(args)
    return line.replace(str(root), "WORK").replace(str(common.REPO) + os.sep, "")


def train(args: argparse.Namespace, teacher: Path, t_sha: str, lmbda: float) -> dict[str, Any]:
    d_steps = max(1, round(args.distill_steps * args.scale))
    f_steps = max(1, round(args.finetune_steps * args.scale))
    root = Path(args.work) / f"{t_sha[:12]}-l{lmbda:g}-d{d_steps}-f{f_steps}"
    seeds: dict[str, Any] = {}
    started = time.perf_counter()
    for seed in args.seeds:
        folder = root / f"seed{seed}"
        steps = plan(teacher, lmbda, seed, d_steps, f_steps, folder)
        seconds = {name: step(folder / name, a) for name, a in steps}
        seeds[str(seed)] = {
            "folder": _rel(folder),
            "commands": [_shown(root, [*a, "--out", str(folder / n)]) for n, a in steps],
            "seconds": seconds,
            "runs": {name: _run_record(folder / name) for name, _ in steps},
            "init_sha256": sha256(folder / "init" / MODEL),
        }
    return {
        "work": _rel(root),
        "steps": {"distill": d_steps, "finetune": f_steps, "total": d_steps + f_steps},
        "seeds": seeds,
        "train_seconds_this_run": round(time.perf_counter() - started, 1),
    }


# -- evaluation ------------------------------------------------------------------------------
def _measure(model: Any, images: list, lmbda: float) -> dict[str, Any]:
    from kdic_cli.evaluate import evaluate_model
    from kdic_cli.metrics import rd_cost

    p = evaluate_model(model, images)
    rows = [{**r, "J": rd_cost(r["payload_bpp"], r["psnr"], lmbda)} for r in p["images"]]
    return {"images": rows, **_means(rows)}


def _means(rows: list[dict[str, Any]]) -> dict[str, float | None]:
    ms = [r["ms_ssim"] for r in rows if r["ms_ssim"] is not None]
    out: dict[str, float | None] = {
        k: statistics.fmean(r[k] for r in rows) for k in ("payload_bpp", "psnr", "J")
    }
    out["ms_ssim"] = statistics.fmean(ms) if ms else None
    return out


def evaluate(
    teacher: Path, lmbda: float, trained: dict[str, Any], log: Any = print
) -> dict[str, Any]:
    from kdic_cli.data import eval_images
    from kdic_cli.demo import QUALITIES, pillow_curve
    from kdic_cli.metrics import codec_cost
    from kdic_cli.models import load_model

    torch.set_num_threads(1)  # the entropy coder's small ops: one thread is fastest and quiet
    images = eval_images("builtin:photos")
    started = time.perf_counter()
    t_model = load_model(teacher)[0]
    log(f"evaluating the teacher on {len(images)} photos")
    measured: dict[str, Any] = {
        "teacher": {**codec_cost(t_model), **_measure(t_model, images, lmbda)}
    }
    arms: dict[str, Any] = {}
    for arm in ARMS:
        arms[arm] = {"seeds": {}}
        for seed, info in trained["seeds"].items():
            src = common.REPO / info["folder"] / ARM_STEP[arm]
            model = load_model(src / MODEL)[0]
            if not arms[arm].get("kmac_per_px"):
                arms[arm].update(codec_cost(model))
            log(f"evaluating {arm} seed {seed}")
            arms[arm]["seeds"][seed] = {"source": _rel(src), **_measure(model, images, lmbda)}
    measured["arms"] = arms
    measured["pillow"] = {fmt: pillow_curve(fmt, images) for fmt in QUALITIES}
    measured["photos"] = [n for n, _ in images]
    measured["eval_seconds"] = round(time.perf_counter() - started, 1)
    return measured


# -- statistics ------------------------------------------------------------------------------
def _clean(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else x


def per_photo(data: dict[str, Any], arm: str, measure: str) -> torch.Tensor:
    """(seeds, photos) values of one measure of one arm, photos in the protocol's order."""
    photos = data["protocol"]["photos"]
    rows = []
    for seed in data["protocol"]["seeds"]:
        by = {r["image"]: r[measure] for r in data["arms"][arm]["seeds"][str(seed)]["images"]}
        rows.append([by[p] for p in photos])
    return torch.tensor(rows, dtype=torch.float64)


def summarise(values: torch.Tensor, index: torch.Tensor | None = None) -> dict[str, Any]:
    """Mean of (seeds, photos) values, (a) t interval over the per-seed means, (b) bootstrap
    interval over the seed-averaged per-photo values."""
    from shared.intervals import bootstrap_mean

    mean, t_low, t_high = t_interval(values.mean(1).tolist())
    _, b_low, b_high = bootstrap_mean(values.mean(0), index=index)
    return {"mean": mean, "t": [_clean(t_low), _clean(t_high)], "bootstrap": [b_low, b_high]}


def compare(
    a: torch.Tensor, b: torch.Tensor, lower_is_better: bool, index: torch.Tensor | None = None
) -> dict[str, Any]:
    """A vs B on (seeds, photos) values of one measure, paired on (seed, photo): mean of
    A - B, its t interval over seeds and bootstrap interval over photos, each interval's
    verdict for A and the combined one (see VERDICT_RULE)."""
    sides = {"above": "worse", "below": "beats"} if lower_is_better else {}
    t = paired(a.mean(1), b.mean(1), "t")
    boot = paired(a.mean(0), b.mean(0), "bootstrap", index=index)
    out: dict[str, Any] = {"diff": boot["diff"]}
    for key, p in (("t", t), ("bootstrap", boot)):
        out[key] = {"low": _clean(p["low"]), "high": _clean(p["high"]), "n": p["n"],
                    "verdict": verdict(p["low"], p["high"], **sides)}  # fmt: skip
    both = {out["t"]["verdict"], out["bootstrap"]["verdict"]}
    out["verdict"] = both.pop() if len(both) == 1 else "on par"
    return out


def analyse(data: dict[str, Any]) -> dict[str, Any]:
    """Every interval and verdict, from the stored per-photo measurements alone."""
    from kdic_cli.demo import psnr_at

    index = resample_index(len(data["protocol"]["photos"]), RESAMPLES, seed=0)
    arms = {}
    for arm in ARMS:
        arms[arm] = {m: summarise(per_photo(data, arm, m), index)
                     for m in ("payload_bpp", "psnr", "J")}  # fmt: skip
        ms = [s["ms_ssim"] for s in data["arms"][arm]["seeds"].values() if s["ms_ssim"]]
        arms[arm]["ms_ssim"] = statistics.fmean(ms) if ms else None
        rate = arms[arm]["payload_bpp"]["mean"]
        arms[arm]["psnr_at_same_bpp"] = {f: psnr_at(c, rate) for f, c in data["pillow"].items()}
    pairs = []
    for a, b in PAIRS:
        for m, lower in MEASURES.items():
            res = compare(per_photo(data, a, m), per_photo(data, b, m), lower, index)
            pairs.append({"a": a, "b": b, "measure": m, **res})
    t = data["teacher"]
    teacher = {f: psnr_at(c, t["payload_bpp"]) for f, c in data["pillow"].items()}
    return {"arms": arms, "pairs": pairs, "teacher_psnr_at_same_bpp": teacher,
            "level": LEVEL, "resamples": RESAMPLES, "bootstrap_seed": 0}  # fmt: skip


# -- report --------------------------------------------------------------------------------
NAMES = {"payload_bpp": "bpp", "psnr": "PSNR dB", "J": "J"}


def _f(v: float | None, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _iv(pair: list | tuple, digits: int = 3) -> str:
    low, high = pair
    return "n/a" if low is None else f"[{low:.{digits}f}, {high:.{digits}f}]"


def _lr(protocol: dict[str, Any]) -> str:
    return f"{protocol['distill_lr']:g}" if "distill_lr" in protocol else "(not recorded)"


def markdown(data: dict[str, Any]) -> list[tuple[str, str]]:
    p, st = data["protocol"], data["stats"]
    t = data["teacher"]
    steps = p["steps"]
    seed0 = p["commands"][str(p["seeds"][0])]
    protocol = (
        f"Teacher `{p['teacher']['file']}` (sha256 `{p['teacher']['sha256']}`, "
        f"{p['teacher']['architecture']}), lambda {p['lmbda']:g} (from "
        f"{p['lmbda_source']}). Three students per seed, each {steps['total']} optimiser "
        f"steps (batch 8, 128 px crops of the builtin:photos train split, one CPU thread "
        f"per command): **KD** = `kdic build-student --width {WIDTH}`, `kdic distill` "
        f"(implicit, {steps['distill']} steps at its default lr {_lr(p)}), `kdic finetune "
        f"--model` ({steps['finetune']} steps, lr {FINETUNE_LR}); **control** = the same "
        f"build-student init fine-tuned with the RD loss only ({steps['total']} steps, lr "
        f"{FINETUNE_LR}); **scratch** = the same architecture re-initialised (`kdic finetune "
        f"--scratch`, {steps['total']} steps, lr {FINETUNE_LR}). Seeds {p['seeds']} go to "
        "every command's --seed; build-student draws its calibration crops from the seed, "
        f"so each seed has its own init ({p['distinct_inits']} distinct init files for "
        f"{len(p['seeds'])} seeds). Evaluation on the {len(p['photos'])} held-out photos "
        f"(builtin:photos val split: {', '.join(p['photos'])}), full size, real bitstreams, "
        "one torch thread: payload bpp (compressai's strings), PSNR and MS-SSIM on 8-bit "
        "reconstructions, RD cost J = bpp + lambda * 255^2 * MSE per photo (lower is "
        "better). JPEG/WebP: Pillow at several qualities on the same photos, PSNR "
        "interpolated at the codec's mean bpp (n/a outside the measured range).\n\n"
        f"Commands of seed {p['seeds'][0]} (WORK = `{p.get('work', 'the work folder')}`):\n\n"
        + "\n".join(f"    {c}" for c in seed0)
        + "\n\nVerdict rule: " + VERDICT_RULE.format(resamples=st["resamples"])
    )  # fmt: skip
    rows = [("teacher", f"{t['kmac_per_px']:.2f}", f"{t['params']:,}", _f(t["payload_bpp"]),
             _f(t["psnr"], 2), _f(t["ms_ssim"], 4), _f(t["J"]),
             *(_f(v, 2) for v in st["teacher_psnr_at_same_bpp"].values()))]  # fmt: skip
    for arm in ARMS:
        a, s = data["arms"][arm], st["arms"][arm]
        rows.append((arm, f"{a['kmac_per_px']:.2f}", f"{a['params']:,}",
                     _f(s["payload_bpp"]["mean"]), _f(s["psnr"]["mean"], 2),
                     _f(s["ms_ssim"], 4), _f(s["J"]["mean"]),
                     *(_f(v, 2) for v in s["psnr_at_same_bpp"].values())))  # fmt: skip
    fmts = list(data["pillow"])
    table = common.markdown_table(
        ["codec", "kMAC/px", "params", "bpp", "PSNR dB", "MS-SSIM", "J",
         *(f"{f} PSNR at its bpp" for f in fmts)], rows)  # fmt: skip
    iv_rows = []
    for arm in ARMS:
        for m, name in NAMES.items():
            s = st["arms"][arm][m]
            d = 2 if m == "psnr" else 4
            iv_rows.append((arm, name, _f(s["mean"], d), _iv(s["t"], d), _iv(s["bootstrap"], d)))
    intervals = common.markdown_table(
        ["arm", "measure", "mean", f"{LEVEL:.0%} t over seeds",
         f"{LEVEL:.0%} bootstrap over photos"], iv_rows)  # fmt: skip
    pair_rows = []
    for c in st["pairs"]:
        d = 2 if c["measure"] == "psnr" else 4
        pair_rows.append((f"{c['a']} vs {c['b']}", NAMES[c["measure"]], f"{c['diff']:+.{d}f}",
                          f"{_iv((c['t']['low'], c['t']['high']), d)} {c['t']['verdict']}",
                          f"{_iv((c['bootstrap']['low'], c['bootstrap']['high']), d)} "
                          f"{c['bootstrap']['verdict']}", f"**{c['verdict']}**"))  # fmt: skip
    verdicts = common.markdown_table(
        ["A vs B", "measure", "mean A - B", "t over seeds", "bootstrap over photos",
         "verdict for A"], pair_rows)  # fmt: skip
    seed_rows = []
    for arm in ARMS:
        for seed, s in data["arms"][arm]["seeds"].items():
            seed_rows.append((arm, seed, _f(s["payload_bpp"], 4), _f(s["psnr"], 2),
                              _f(s["ms_ssim"], 4), _f(s["J"], 4),
                              "/".join(Path(s["source"]).parts[-2:])))  # fmt: skip
    per_seed = common.markdown_table(
        ["arm", "seed", "bpp", "PSNR dB", "MS-SSIM", "J", "model (in WORK)"], seed_rows
    )
    return [
        ("Protocol", protocol),
        ("Per arm (means over seeds and photos)", table + "\n\n" + intervals),
        ("Paired comparisons", verdicts),
        ("Per seed (means over the photos)", per_seed),
        ("Plot", f"![PSNR vs bpp]({data['name']}.png)"),
    ]


def plot(data: dict[str, Any], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    for (fmt, curve), style in zip(data["pillow"].items(), ("s-", "^-"), strict=True):
        ax.plot([q["payload_bpp"] for q in curve], [q["psnr"] for q in curve], style, ms=4,
                color="0.6" if fmt == "JPEG" else "0.3", label=f"Pillow {fmt}")  # fmt: skip
    t = data["teacher"]
    ax.plot(t["payload_bpp"], t["psnr"], "*", color="C3", ms=15,
            label=f"teacher ({t['kmac_per_px']:.1f} kMAC/px)")  # fmt: skip
    for k, arm in enumerate(ARMS):
        seeds = data["arms"][arm]["seeds"].values()
        color = f"C{k}"
        ax.plot([s["payload_bpp"] for s in seeds], [s["psnr"] for s in seeds], "o", ms=5,
                color=color, alpha=0.45)  # fmt: skip
        s = data["stats"]["arms"][arm]
        x, y = s["payload_bpp"], s["psnr"]

        def err(v: dict[str, Any]) -> list[list[float]] | None:
            low, high = v["t"]
            return None if low is None else [[v["mean"] - low], [high - v["mean"]]]

        ax.errorbar(x["mean"], y["mean"], xerr=err(x), yerr=err(y), fmt="D", ms=9,
                    color=color, capsize=3, label=f"{arm}: seeds (dots), mean "
                    f"({data['arms'][arm]['kmac_per_px']:.1f} kMAC/px)")  # fmt: skip
    rates = [t["payload_bpp"], *(s["payload_bpp"] for a in ARMS
                                  for s in data["arms"][a]["seeds"].values())]  # fmt: skip
    ax.set_xlim(0, max(1.0, 1.6 * max(rates)))
    ax.set_xlabel("bits per pixel (payload of real bitstreams; JPEG/WebP: whole file)")
    ax.set_ylabel("PSNR (dB, 8-bit RGB)")
    ax.set_title(f"kdic students, {len(data['protocol']['seeds'])} seeds, mean over "
                 f"{len(data['protocol']['photos'])} held-out photos; bars: "
                 f"{LEVEL:.0%} t over seeds", fontsize=9)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    out = common.save_figure(fig, path)
    plt.close(fig)
    return out


def report(data: dict[str, Any], log: Any = print) -> Path:
    data["stats"] = analyse(data)
    title = "kdic: does stage-wise KD beat the controls? (equal steps, seeds, intervals)"
    md = common.write_results("kdic", data["name"], title, markdown(data), data)
    plot(data, common.RESULTS / "kdic" / f"{data['name']}.png")
    log(md.read_text())
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--teacher", help="default: the shipped references/kdic/teacher")
    ap.add_argument(
        "--lmbda", type=float, help=f"default: the teacher's training lambda, else {DEFAULT_LMBDA}"
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--distill-steps", type=int, default=2400)
    ap.add_argument("--finetune-steps", type=int, default=1200)
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies both step counts")
    ap.add_argument("--work", default=str(common.REPO / ".cache" / "kdic_students"))
    ap.add_argument("--name", default="students", help="results name (<name>.json/.md/.png)")
    ap.add_argument(
        "--report-only", action="store_true", help="rewrite md, png and statistics from the json"
    )
    common.add_common_args(ap)
    args = ap.parse_args(argv)
    common.check_tree(args)
    if args.report_only:
        data = json.loads((common.RESULTS / "kdic" / f"{args.name}.json").read_text())
        prov = data.pop("provenance")
        data["provenance"] = prov.get("measured", prov)  # the measuring run's
        data["name"] = args.name
        report(data)
        return 0
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit("error: --seeds: each seed once")
    teacher = teacher_file(args.teacher)
    t_sha = sha256(teacher)
    lmbda, source = teacher_lmbda(teacher, args.lmbda)
    trained = train(args, teacher, t_sha, lmbda)
    from kdic_cli.models import load_model

    spec = load_model(teacher)[1].get("architecture", {})
    measured = evaluate(teacher, lmbda, trained)
    inits = {s["init_sha256"] for s in trained["seeds"].values()}
    data = {
        "name": args.name,
        "protocol": {
            "teacher": {"file": _rel(teacher), "sha256": t_sha,
                        "architecture": " ".join(f"{k}={v}" if k != "name" else str(v)
                                                 for k, v in spec.items())},
            "lmbda": lmbda, "lmbda_source": source, "seeds": args.seeds,
            "steps": trained["steps"], "scale": args.scale, "width": float(WIDTH),
            "finetune_lr": float(FINETUNE_LR), "train_options": TRAIN,
            "distill_lr": next(iter(trained["seeds"].values()))["runs"]["kd-distill"]["lr"],
            "photos": measured.pop("photos"), "distinct_inits": len(inits),
            "work": trained["work"],
            "commands": {k: v["commands"] for k, v in trained["seeds"].items()},
            "verdict_rule": VERDICT_RULE.format(resamples=RESAMPLES),
        },
        "training": {k: {"folder": v["folder"], "seconds": v["seconds"], "runs": v["runs"],
                         "init_sha256": v["init_sha256"]}
                     for k, v in trained["seeds"].items()},
        "train_seconds_this_run": trained["train_seconds_this_run"],
        **measured,
    }  # fmt: skip
    report(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
