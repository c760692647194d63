"""KDIC evidence: teacher vs distilled student vs the same student without KD, on real photos.

Runs the `kdic` commands (as a user would) on `builtin:photos` crops, then evaluates every
model in one process on the held-out photos with real bitstreams and writes
benchmarks/results/kdic/{results.md,results.json,rd.png}.

(a) teacher: mbt2018-mean trained from scratch at each lambda
(b) student (build-student at half width: mbt2018-mean itself at N/2, M kept) distilled
    stage-wise (implicit RD supervision), then fine-tuned end to end
(c) the same student architecture trained from scratch for the same total steps
(d) as (b) with explicit feature-MSE supervision
At the first lambda every model is trained in full; at each further lambda every model is
fine-tuned from its own previous-lambda model for the same number of steps.

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.kdic_rd [--scale 5]   (~30 min)
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import RESULTS, add_common_args, check_tree, write_report

REPO = Path(__file__).resolve().parent.parent
OUT = RESULTS / "kdic"
KDIC = str(Path(sys.executable).parent / "kdic")


def sh(*args: str) -> None:
    cmd = [KDIC, *args, "--quiet"]
    print("$ kdic " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True)


def step(out: Path, *args: str) -> None:
    """Run one kdic command into `out` unless a finished model is already there (a rerun
    continues an interrupted benchmark; a half-done command resumes from its state)."""
    if (out / "model.safetensors").exists():
        print(f"= {out.name}: done before, reused", flush=True)
        return
    extra = ["--resume"] if (out / "resume.pt").exists() else []
    sh(*args, "--out", str(out), *extra)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--scale", type=float, default=5.0, help="multiply every step count")
    ap.add_argument("--work", default=None, help="default: .cache/kdic_bench_s<scale>")
    ap.add_argument("--lmbdas", default="0.0018,0.0067,0.025")
    ap.add_argument("--N", type=int, default=32)
    ap.add_argument("--M", type=int, default=48)
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="rewrite results.md from results.json (no training, no evaluation)",
    )
    add_common_args(ap)
    args = ap.parse_args()
    check_tree(args)
    if args.report_only:
        result = json.loads((OUT / "results.json").read_text())
        _add_rd_costs(result)
        result["meta"]["report_rewritten_by"] = (
            ".venv/bin/python -m benchmarks.kdic_rd --report-only (same measurements; RD cost "
            "derived from the stored per-image bpp and PSNR, lambda from each run's config.yaml)"
        )
        write_report(OUT / "results", _markdown(result), result)
        print((OUT / "results.md").read_text())
        return 0
    work = Path(args.work or REPO / ".cache" / f"kdic_bench_s{args.scale:g}")
    work.mkdir(parents=True, exist_ok=True)
    lmbdas = [float(v) for v in args.lmbdas.split(",")]
    s = args.scale
    t_steps, next_steps = int(400 * s), int(80 * s)
    d_steps, f_steps = int(220 * s), int(120 * s)
    common = ["--batch-size", "8", "--crop", "64", "--lr", "1e-3", "--device", "cpu"]
    started = time.time()
    labels = ("teacher", "KD implicit", "KD explicit", "no KD")
    curves: dict[str, list[str]] = {k: [] for k in labels}
    # First lambda: every model trained in full. Further lambdas: each model fine-tuned
    # from its own previous-lambda model for the same number of steps (compressai users
    # train neighbouring rates the same way), so (b), (c), (d) keep equal budgets.
    lm = lmbdas[0]
    tag = f"l{lm}"
    t = work / f"teacher_{tag}"
    step(t, "finetune", "--arch", "mbt2018-mean", "--N", str(args.N), "--M", str(args.M),
         "--steps", str(t_steps), "--lmbda", str(lm), *common)  # fmt: skip
    st = work / f"student_{tag}"
    step(st, "build-student", "--teacher", str(t), "--width", "0.5", "--crop", "64",
         "--calib-images", "16")  # fmt: skip
    prev = {"teacher": t}
    for sup, name in (("implicit", "KD implicit"), ("explicit", "KD explicit")):
        d = work / f"distill_{sup}_{tag}"
        step(d, "distill", "--teacher", str(t), "--student", str(st), "--supervision", sup,
             "--steps", str(d_steps), "--lmbda", str(lm), *common)  # fmt: skip
        f = work / f"ft_{sup}_{tag}"
        step(f, "finetune", "--model", str(d), "--steps", str(f_steps), "--lmbda", str(lm),
             *common)  # fmt: skip
        prev[name] = f
    c = work / f"scratch_{tag}"
    step(c, "finetune", "--model", str(st), "--scratch", "--steps", str(d_steps + f_steps),
         "--lmbda", str(lm), *common)  # fmt: skip
    prev["no KD"] = c
    for k in labels:
        curves[k].append(str(prev[k]))
    for lm in lmbdas[1:]:
        for k in labels:
            out = work / f"{k.replace(' ', '_')}_l{lm}"
            step(out, "finetune", "--model", str(prev[k]), "--steps", str(next_steps),
                 "--lmbda", str(lm), *common)  # fmt: skip
            prev[k] = out
            curves[k].append(str(out))
    train_s = time.time() - started

    import torch

    from kdic_cli.data import eval_images
    from kdic_cli.evaluate import evaluate_curves, plot_rd
    from kdic_cli.models import load_model

    torch.set_num_threads(1)  # timings comparable, less noise from the shared machine
    images = eval_images("builtin:photos")
    labels = list(curves)
    models = [[load_model(p)[0] for p in curves[k]] for k in labels]
    result = evaluate_curves(models, labels, [curves[k] for k in labels], images)
    plot_rd(result, OUT / "rd.png")
    versions = {}
    for dist in ("torch", "compressai", "bjontegaard"):
        from importlib.metadata import version

        versions[dist] = version(dist)
    cmd = ".venv/bin/python -m benchmarks.kdic_rd " + " ".join(sys.argv[1:])
    meta = {
        "command": cmd.strip(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": f"{platform.machine()} {platform.processor() or ''} "
                   f"{torch.get_num_threads()} eval thread(s), CPU only, shared 2-core host",
        "python": platform.python_version(), "versions": versions,
        "teacher": f"mbt2018-mean N={args.N} M={args.M}", "lmbdas": lmbdas,
        "steps": {"teacher": t_steps, "distill": d_steps, "finetune_after_distill": f_steps,
                  "scratch": d_steps + f_steps, "each_model_per_further_lambda": next_steps},
        "train_seconds": round(train_s, 1), "crop": 64, "batch": 8, "lr": 1e-3,
    }  # fmt: skip
    result = {"meta": meta, **result}
    _add_rd_costs(result)
    write_report(OUT / "results", _markdown(result), result)
    print((OUT / "results.md").read_text())
    return 0


def _add_rd_costs(result: dict) -> None:
    """Each point's lambda (from the config.yaml its training run wrote) and its RD cost,
    the mean over the held-out photos of R + lambda * 255^2 * MSE."""
    import yaml

    from kdic_cli.metrics import rd_cost

    for c in result["curves"]:
        for p in c["points"]:
            lm = float(yaml.safe_load((Path(p["source"]) / "config.yaml").read_text())["lmbda"])
            p["lmbda"] = lm
            costs = [rd_cost(_payload(i), i["psnr"], lm) for i in p["images"]]
            p["rd_cost"] = sum(costs) / len(costs)


def _payload(point: dict) -> float:
    """The rate of a point or image: payload bpp (compressai's strings); results written
    before payload and file were told apart only have the file's `bpp`."""
    return point.get("payload_bpp", point.get("bpp"))


def _rd_cost_table(r: dict) -> list[str]:
    lmbdas = sorted({p["lmbda"] for c in r["curves"] for p in c["points"]})
    lines = [
        "RD cost at each lambda (the training objective R + lambda * 255^2 * MSE, measured "
        "bits and 8-bit MSE, mean over the held-out photos; lower is better). It ranks the "
        "models at equal lambda even where their rates do not overlap:",
        "",
        "| model | " + " | ".join(f"lambda {lm}" for lm in lmbdas) + " |",
        "| --- |" + " --- |" * len(lmbdas),
    ]
    for c in r["curves"]:
        by = {p["lmbda"]: p["rd_cost"] for p in c["points"]}
        lines.append(f"| {c['label']} | " + " | ".join(f"{by[lm]:.3f}" for lm in lmbdas) + " |")
    return lines


def _markdown(r: dict) -> str:
    m = r["meta"]
    t = r["curves"][0]
    lines = [
        "# kdic: distilled student vs teacher vs no-KD student (real bitstreams)",
        "",
        f"- command: `{m['command']}`",
        f"- date: {m['date']}; machine: {m['machine']}; python {m['python']}; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        *([f"- report: `{m['report_rewritten_by']}`"] if "report_rewritten_by" in m else []),
        f"- teacher: {m['teacher']}, lambdas {m['lmbdas']}, 64 px crops of builtin:photos "
        f"(train split), batch 8, Adam lr 1e-3; steps {m['steps']}",
        f"- evaluation: held-out builtin:photos ({', '.join(r['images'])}), full size, "
        "payload bpp from compressai's strings (as compressai's eval_model and the papers "
        "count it; curves, BD-rates and RD costs use it) and file bpp from the .kdic file "
        "(header included), PSNR/MS-SSIM on 8-bit reconstructions; BD-rate (akima, "
        f"PSNR) against **{r['anchor']}**; times are mean seconds per image in this one run",
        "",
        "| model | BD-rate vs teacher | kMAC/px | kMAC vs teacher | params | params vs teacher "
        "| enc time vs teacher | dec time vs teacher |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    te = sum(p["enc_s"] for p in t["points"])
    td = sum(p["dec_s"] for p in t["points"])
    for c in r["curves"]:
        bd = c["bd_rate_psnr"]
        bd = None if bd is None or bd != bd else bd  # NaN: no overlap
        ce = sum(p["enc_s"] for p in c["points"])
        cd = sum(p["dec_s"] for p in c["points"])
        lines.append(
            f"| {c['label']} | {'n/a' if bd is None else f'{bd:+.2f}%'} | "
            f"{c['kmac_per_px']:.2f} | {c['kmac_per_px'] / t['kmac_per_px']:.0%} | "
            f"{c['params']:,} | {c['params'] / t['params']:.0%} | {ce / te:.2f} | {cd / td:.2f} |"
        )
    lines += ["", "RD points:", "",
              "| model | checkpoint | payload bpp | file bpp | PSNR dB | MS-SSIM | enc s | dec s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for c in r["curves"]:
        for p in c["points"]:
            ms = "n/a" if p["ms_ssim"] is None else f"{p['ms_ssim']:.4f}"
            payload = f"{p['payload_bpp']:.4f}" if "payload_bpp" in p else "n/a"
            lines.append(
                f"| {c['label']} | {Path(p['source']).name} | {payload} | "
                f"{p.get('file_bpp', p.get('bpp')):.4f} | {p['psnr']:.3f} | {ms} | "
                f"{p['enc_s']:.3f} | {p['dec_s']:.3f} |"
            )
    lines += ["", *_rd_cost_table(r)]
    lines += [
        "",
        "![RD curves](rd.png)",
        "",
        "BD-rate is n/a where it is undefined: the curves share no PSNR range, or a curve "
        "is not monotonic (bjontegaard integrates over the common quality range of "
        "monotonic curves). With this CPU budget every model is far from converged, so read "
        "the RD points and the RD cost, not only the BD-rates. Encode/decode times come "
        "from one pass on a shared 2-core machine; models of the same architecture differ "
        "only by noise.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
